"""Held-out photos: bicubic, `clean` and `photo` on photos no model was trained on, each damaged as
`upscale eval --degrade` damages (MATLAB-bicubic x4 down, then the SPEC), whole-image Y-PSNR.

    python benchmarks/heldout_photos.py FOLDER [--spec jpeg:50 --spec jpeg:75 --spec noise:5]

Each photo goes through `upscale compare --degrade SPEC --json` (the tool's own path: the same
engine, fp32 here so the scores are exact); the table prints each photo and the mean gains.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODELS = ("clean", "photo")


def scores(photo: Path, spec: str, seed: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run([sys.executable, "-m", "upscaler", "compare", str(photo), "--degrade", spec, "--seed", str(seed),
                               *[a for m in MODELS for a in ("-m", m)], "--precision", "fp32", "--json",
                               "-o", str(Path(scratch) / "sheet.png")], capture_output=True, text=True, check=True)
    return {p["label"]: p["psnr"] for p in json.loads(done.stdout)["panels"] if p["psnr"] is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--spec", action="append", help="damage (default: jpeg:50, jpeg:75, noise:5)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    photos = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    for spec in args.spec or ["jpeg:50", "jpeg:75", "noise:5"]:
        rows = {photo.name: scores(photo, spec, args.seed) for photo in photos}
        print(f"\n{spec}: PSNR dB (bicubic / clean / photo)")
        for name, row in rows.items():
            print(f"  {name:28s} {row['bicubic']:6.2f} {row['clean']:6.2f} {row['photo']:6.2f}")
        gain = [row["photo"] - row["bicubic"] for row in rows.values()]
        over_clean = [row["photo"] - row["clean"] for row in rows.values()]
        clean_gain = [row["clean"] - row["bicubic"] for row in rows.values()]
        print(f"  mean photo - bicubic {statistics.mean(gain):+.2f} dB (lowest {min(gain):+.2f}), photo - clean "
              f"{statistics.mean(over_clean):+.2f} dB, clean - bicubic {statistics.mean(clean_gain):+.2f} dB")


if __name__ == "__main__":
    main()
