"""Training step time with and without the realworld degradation, side by side in one run.

`python benchmarks/train_degradation.py DATA [--steps N] [--rounds R]`: the compact model at
patch 128, batch 16, on this machine's cores; rounds alternate so drift hits both alike. The
realworld batches are made ahead on a thread (train/data.py Prefetcher), as `upscale train` does.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from upscaler.train.trainer import TrainConfig, Trainer


def seconds_per_step(data: str, degradation: str, steps: int) -> float:
    config = TrainConfig(data=data, arch="compact", patch=128, batch=16, steps=10**6, degradation=degradation)
    with tempfile.TemporaryDirectory() as run:
        trainer = Trainer(config, Path(run), torch.device("cpu"))
        try:
            trainer.train_step()
            trainer.train_step()  # warm: allocator, prefetch queue filled
            start = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            return (time.perf_counter() - start) / steps
        finally:
            trainer.batches.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"bicubic": [], "realworld": []}
    for _ in range(args.rounds):
        for degradation, values in times.items():
            values.append(seconds_per_step(args.data, degradation, args.steps))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name:9s} s/step {medians[name]:.3f}  (rounds: {', '.join(f'{v:.3f}' for v in values)})")
    print(f"realworld / bicubic step time: {medians['realworld'] / medians['bicubic']:.2f}x")


if __name__ == "__main__":
    main()
