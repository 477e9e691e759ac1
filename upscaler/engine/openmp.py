"""How the CPU model's idle OpenMP threads wait; torch-free, because it must run before torch loads."""

from __future__ import annotations

import os

BESIDE_THE_MODEL = frozenset({"dir", "image", "video", "pipe"})  # commands that decode and encode while the model runs


def wait_passively(command: str | None) -> None:
    """For commands that decode and encode beside the model: its idle OpenMP threads sleep instead of spinning.

    An OpenMP thread that spins while it waits for its partners at the end of a parallel region
    holds a core that a decoder or encoder could use; asleep, it hands the core over. Over Set14
    through `upscale dir` on 2 cores this took the path from 0.86-0.89 to 0.90-0.92 of the bare
    model, which itself moved by about 1 % (benchmarks/RESULTS.md). Other commands keep libgomp's
    default, and so does anyone who sets OMP_WAIT_POLICY. libgomp reads it once, when torch loads it.
    """
    if command in BESIDE_THE_MODEL:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
