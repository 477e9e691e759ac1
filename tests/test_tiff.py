"""TIFF through tifffile: every depth, layout and compression reads back exactly with its ICC and EXIF;
memory is one strip; BigTIFF past classic TIFF's limit; ffmpeg reads what we write; a pipe still gets it."""

from __future__ import annotations

import io
import subprocess
import tracemalloc
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from upscaler.cli import app
from upscaler.io import tiff
from upscaler.io.formats import TIFF_COMPRESSIONS as COMPRESSIONS
from upscaler.io.images import Picture, encode_picture, read_picture, read_picture_bytes
from upscaler.io.tiff import write_tiff

ICC = bytes(range(256)) * 2


def _exif(make: str) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = make
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"
    return exif.tobytes()


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 40), height=st.integers(1, 40), bits=st.sampled_from([8, 16]), gray=st.booleans(),
       with_alpha=st.booleans(), compression=st.sampled_from(sorted(COMPRESSIONS)), icc=st.binary(max_size=300),
       make=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
       strip_bytes=st.sampled_from([1, 100, 1 << 18]), seed=st.integers(0, 2**32 - 1))
def test_pixels_and_metadata_read_back_exactly(width: int, height: int, bits: int, gray: bool, with_alpha: bool,
                                               compression: str, icc: bytes, make: str, strip_bytes: int,
                                               seed: int) -> None:
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if bits == 8 else np.uint16
    color = rng.integers(0, 1 << bits, (height, width) if gray else (height, width, 3), dtype=dtype)
    alpha = rng.integers(0, 1 << bits, (height, width), dtype=dtype) if with_alpha else None
    out = io.BytesIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiff, "_STRIP_BYTES", strip_bytes)  # one row per strip, a few rows, one strip
        write_tiff(out, color, alpha, icc or None, _exif(make), compression)
    back = read_picture_bytes(out.getvalue())
    widened = gray and alpha is not None and bits == 16  # stored as RGB + alpha: no reader opens 16-bit gray-alpha
    assert np.array_equal(back.color, np.dstack([color] * 3) if widened else color) and back.bits == bits
    assert (back.alpha is None) if alpha is None else (back.alpha is not None and np.array_equal(back.alpha, alpha))
    assert back.icc == (icc or None)
    with Image.open(io.BytesIO(out.getvalue())) as img:
        tags = img.getexif()
        assert tags.get(0x010F) == make and tags.get_ifd(0x8769) == {0x9003: "2024:05:06 07:08:09"}
        assert img.size == (width, height)
    with tifffile.TiffFile(io.BytesIO(out.getvalue())) as tif:
        page = tif.pages.first
        assert page.compression == COMPRESSIONS[compression] and page.predictor == (1 if compression == "none" else 2)
        assert not page.is_tiled and page.rowsperstrip == max(1, min(height, strip_bytes // (width * page.samplesperpixel * bits // 8)))


def test_the_files_own_layout_wins_over_the_exif(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0100], exif[0x0101], exif[0x0103] = 1, 1, 7  # ImageWidth, ImageLength, Compression from some other file
    color = np.full((5, 7, 3), 4242, np.uint16)
    write_tiff(tmp_path / "t.tif", color, exif=exif.tobytes())
    assert np.array_equal(read_picture(tmp_path / "t.tif").color, color)


def test_compression_shrinks_a_photo_and_deflate_is_the_default(tmp_path: Path) -> None:
    photo = np.asarray(Image.open(Path(__file__).parent.parent / "examples" / "astronaut.png").convert("RGB"))
    deep = photo.astype(np.uint16) * 257
    sizes = {}
    for name in COMPRESSIONS:
        write_tiff(tmp_path / f"{name}.tif", deep, compression=name)
        sizes[name] = (tmp_path / f"{name}.tif").stat().st_size
    assert sizes["none"] > deep.nbytes and max(sizes["deflate"], sizes["zstd"]) < 0.7 * sizes["none"]
    encode_picture(Picture(deep, None, "PNG"), "TIFF", tmp_path / "default.tif")
    assert (tmp_path / "default.tif").stat().st_size == sizes["deflate"]


def test_memory_is_one_strip_whatever_the_picture(tmp_path: Path) -> None:
    """48 MB of 16-bit RGBA pixels (one value broadcast, none of it in memory) cost a few strips to write."""
    color = np.broadcast_to(np.uint16(1000), (3000, 2000, 3))
    alpha = np.broadcast_to(np.uint16(65535), (3000, 2000))
    for compression in ("deflate", "none"):
        tracemalloc.start()
        try:
            write_tiff(tmp_path / "big.tif", color, alpha, ICC, _exif("big"), compression)  # type: ignore[arg-type]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 * tiff._STRIP_BYTES + (1 << 20), (compression, peak)
    back = read_picture(tmp_path / "big.tif")
    assert back.size == (3000, 2000) and back.color[-1, -1, 2] == 1000 and back.alpha is not None and back.icc == ICC


def test_past_the_classic_limit_the_file_is_bigtiff(tmp_path: Path) -> None:
    """The decision, taken at a small limit: a real 4 GiB file would not fit a test."""
    color = np.arange(6 * 9 * 3, dtype=np.uint16).reshape(6, 9, 3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiff, "_CLASSIC_LIMIT", color.nbytes - 1)
        write_tiff(tmp_path / "big.tif", color, None, ICC, _exif("dropped"))
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert tif.is_bigtiff and tif.pages.first.compression == COMPRESSIONS["deflate"]
    back = read_picture(tmp_path / "big.tif")
    assert np.array_equal(back.color, color) and back.icc == ICC
    tags = Image.Exif()
    tags.load(back.exif or b"")
    assert 0x010F not in tags  # BigTIFF keeps no EXIF, as io/tiff.py documents
    write_tiff(tmp_path / "small.tif", color)
    with tifffile.TiffFile(tmp_path / "small.tif") as tif:
        assert not tif.is_bigtiff


@pytest.mark.parametrize("compression", ["none", "deflate", "lzw"])
def test_ffmpeg_reads_what_we_write(compression: str) -> None:
    """An independent decoder: ffmpeg's TIFF reader (it knows no zstd) gets the same 16-bit RGBA samples."""
    rng = np.random.default_rng(5)
    color = rng.integers(0, 65536, (37, 53, 3), dtype=np.uint16)
    alpha = rng.integers(0, 65536, (37, 53), dtype=np.uint16)
    out = io.BytesIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiff, "_STRIP_BYTES", 3000)  # several strips
        write_tiff(out, color, alpha, ICC, _exif("ffmpeg"), compression)
    data = out.getvalue()
    decoded = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "image2pipe", "-frame_size",
                              str(len(data)), "-c:v", "tiff", "-i", "-", "-frames:v", "1", "-f", "rawvideo",
                              "-pix_fmt", "rgba64le", "-"], input=data, capture_output=True, check=True).stdout
    assert decoded == np.dstack([color, alpha]).astype("<u2").tobytes()


def test_a_pipe_target_receives_the_compression_asked_for(tiny_model: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    source = tmp_path / "in.tif"
    color = rng.integers(0, 65536, (12, 10, 3), dtype=np.uint16)
    write_tiff(source, color, rng.integers(0, 65536, (12, 10), dtype=np.uint16), ICC, _exif("piped"))
    result = CliRunner().invoke(app, ["image", str(source), "-o", "-", "--tiff-compression", "zstd", "--model",
                                      str(tiny_model), "--device", "cpu", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    with tifffile.TiffFile(io.BytesIO(result.stdout_bytes)) as tif:
        assert tif.pages.first.compression == COMPRESSIONS["zstd"]
    back = read_picture_bytes(result.stdout_bytes)
    assert back.size == (48, 40) and back.bits == 16 and back.alpha is not None and back.icc == ICC
    tags = Image.Exif()
    tags.load(back.exif or b"")
    assert tags.get(0x010F) == "piped"
    refused = CliRunner().invoke(app, ["image", str(source), "-o", str(tmp_path / "o.tif"), "--tiff-compression", "lz4"])
    assert refused.exit_code == 2 and "lz4" in refused.output and not (tmp_path / "o.tif").exists()


def test_dir_writes_each_compression_through_the_atomic_writer(tiny_model: Path, tmp_path: Path) -> None:
    """The real path: a temporary file from os.fdopen (whose name is an int), fsync, rename."""
    photos = tmp_path / "in"
    photos.mkdir()
    rng = np.random.default_rng(3)
    write_tiff(photos / "deep.tif", rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16), None, ICC, _exif("deep"))
    Image.fromarray(rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)).save(photos / "shallow.png")
    for compression in ("zstd", "none"):
        out = tmp_path / compression
        result = CliRunner().invoke(app, ["dir", str(photos), "-o", str(out), "--format", "tiff", "--tiff-compression",
                                          compression, "--model", str(tiny_model), "--device", "cpu", "--precision", "fp32"])
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in out.iterdir()) == ["deep.tif", "shallow.tif"]
        for name, size, bits in (("deep.tif", (36, 44), 16), ("shallow.tif", (32, 24), 8)):
            with tifffile.TiffFile(out / name) as tif:
                assert tif.pages.first.compression == COMPRESSIONS[compression]
            back = read_picture(out / name)
            assert back.size == size and back.bits == bits and back.icc == (ICC if bits == 16 else None)
