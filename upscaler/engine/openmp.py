"""How the CPU model's idle OpenMP threads wait; torch-free, because it must run before torch loads."""

from __future__ import annotations

import os


def wait_passively() -> None:
    """Let the model's OpenMP threads sleep when they run out of work instead of spinning (unless the user said otherwise).

    Decoders and encoders share the cores with the model. An OpenMP thread that spins while it
    waits for its partners at the end of a parallel region holds a core that an encoder could
    use; asleep, it hands the core over. Over Set14 through `upscale dir` on 2 cores this took
    the path from 0.86-0.89 to 0.90-0.92 of the bare model, which itself moved by about 1 %
    (benchmarks/RESULTS.md). libgomp reads OMP_WAIT_POLICY once, when torch loads it.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
