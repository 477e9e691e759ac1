"""Start-up, side by side in one run (issue: start-up): where a fresh process's time goes, and the ratios.

    python benchmarks/startup.py [--rounds 5]

Each figure is the median of `--rounds` fresh processes, taken in alternation so a drifting
machine weighs on all of them alike:
- the split of one `upscale image` of a 128x128 PNG, measured inside a fresh process at the same
  calls the command makes: interpreter (a bare `python -c pass`), imports (the CLI, then torch),
  model file (the built-in `default`), plan (device, tiles, backend), first inference, first write;
- whole processes: `python -c "import torch"`, `upscale image` (start to file written) and their
  ratio (goal <= 1.6x), and the commands that run no model (`--help`, `dir --help`, `models`;
  goal < 0.4 s each, and no torch imported, which tests/test_startup.py checks).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_SPLIT = r"""
import json, sys, time
t0 = time.perf_counter()
import upscaler.cli.upscale  # the command's own imports, torch-free
t1 = time.perf_counter()
import torch  # what opening a model costs first
t2 = time.perf_counter()
from pathlib import Path
from upscaler.engine.engine import open_engine
from upscaler.engine.settings import RunSettings
from upscaler.io.files import write_atomically
from upscaler.io.images import encode_picture, read_picture
from upscaler.models.weights import load_model
t3 = time.perf_counter()
model = load_model("default")
t4 = time.perf_counter()
engine = open_engine(RunSettings("default"), model)
t5 = time.perf_counter()
picture = read_picture(Path(sys.argv[1]))
result = engine.upscale(picture, "PNG")
t6 = time.perf_counter()
write_atomically(Path(sys.argv[2]), lambda stream: encode_picture(result, "PNG", stream))
t7 = time.perf_counter()
print(json.dumps({"imports (CLI)": t1 - t0, "imports (torch)": t2 - t1, "imports (engine)": t3 - t2, "model file": t4 - t3,
                  "plan": t5 - t4, "first inference": t6 - t5, "first write": t7 - t6}))
"""


def wall(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "in.png"
        with Image.open(ROOT / "examples" / "astronaut.png") as photo:
            photo.convert("RGB").resize((128, 128), Image.Resampling.BICUBIC).save(source)
        env = {**os.environ, "UPSCALER_MODELS": str(work / "models"), "UPSCALER_CACHE": str(work / "cache")}
        python, upscale = [sys.executable], [sys.executable, "-m", "upscaler"]
        commands = {
            "python -c pass": [*python, "-c", "pass"],
            'python -c "import torch"': [*python, "-c", "import torch"],
            "upscale image 128x128.png": [*upscale, "image", str(source), "-o", str(work / "out.png")],
            "upscale --help": [*upscale, "--help"],
            "upscale dir --help": [*upscale, "dir", "--help"],
            "upscale models": [*upscale, "models"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        splits: list[dict[str, float]] = []
        for _ in range(args.rounds):
            for name, command in commands.items():
                (work / "out.png").unlink(missing_ok=True)
                times[name].append(wall(command, env))
            (work / "split.png").unlink(missing_ok=True)
            done = subprocess.run([*python, "-c", _SPLIT, str(source), str(work / "split.png")], check=True,
                                  capture_output=True, text=True, env=env, cwd=ROOT)
            splits.append(json.loads(done.stdout))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"start-up of `upscale image` on a 128x128 PNG, median of {args.rounds} fresh processes each ({_cpu()})\n")
    print("| stage | s |\n|---|---|")
    print(f"| interpreter (`python -c pass`) | {median['python -c pass']:.3f} |")
    for stage in splits[0]:
        print(f"| {stage} | {statistics.median(s[stage] for s in splits):.3f} |")
    print("\n| whole process | s | ratio |\n|---|---|---|")
    torch_s = median['python -c "import torch"']
    for name, seconds in median.items():
        print(f"| `{name}` | {seconds:.3f} | {seconds / torch_s:.2f}x `import torch` |")
    image_ratio = median["upscale image 128x128.png"] / torch_s
    print(f"\nupscale image / import torch = {image_ratio:.2f}x (goal <= 1.6x)")
    slowest = max(median[c] for c in ("upscale --help", "upscale dir --help", "upscale models"))
    print(f"slowest command that runs no model: {slowest:.3f} s (goal < 0.4 s)")


def _cpu() -> str:
    from upscaler.engine.devices import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
