"""The image formats `dir` and `image` read and write, by name and suffix: plain tables, so parsing a command
line (and `--help`) loads no codec and no numpy."""

from __future__ import annotations

# Output format names (as --format spells them) to Pillow's names and file suffixes.
FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "tiff": "TIFF", "bmp": "BMP"}
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
SUFFIX_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
TIFF_COMPRESSIONS = {"none": 1, "deflate": 8, "lzw": 5, "zstd": 50000}  # `--tiff-compression` -> TIFF's Compression tag
DEFAULT_TIFF_COMPRESSION = "deflate"
