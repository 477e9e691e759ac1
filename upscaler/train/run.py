"""One `upscale train` run, in one process or as one rank of a torchrun job: only rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from upscaler.io.files import write_bytes_atomically
from upscaler.train.distributed import join, leave
from upscaler.train.gan import GanTrainer
from upscaler.train.trainer import CHECKPOINT, Log, TrainConfig, Trainer


def metrics_logger(run_dir: Path, resumed_at: int | None = None) -> Log:
    """Append JSON lines to RUN_DIR/metrics.jsonl, flushed per line so a crash loses nothing.

    A resumed run first drops the records after its checkpoint's step: those steps run again, and
    the file keeps one history, not two overlapping ones.
    """
    path = run_dir / "metrics.jsonl"
    if resumed_at is not None and path.is_file():
        kept = [line for line in path.read_text().splitlines(keepends=True) if _step(line) <= resumed_at]
        write_bytes_atomically(path, "".join(kept).encode())

    def log(record: dict[str, Any]) -> None:
        with path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    return log


def _step(line: str) -> float:
    """A record's step; a line a crash cut short counts as after every checkpoint."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A run folder is a folder; a fresh run never mixes into an earlier one's checkpoint and metrics."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir}: exists and is not a folder (-o names the run folder)")
    if not resume and (run_dir / CHECKPOINT).exists():
        raise ValueError(f"{run_dir}: holds an earlier run; add --resume to continue it, or choose another -o")


def train(config: TrainConfig, run_dir: Path, device: torch.device, resume: bool) -> Path | None:
    """Returns the exported last.safetensors (None on ranks other than 0, which write nothing)."""
    check_run_dir(run_dir, resume)
    world, device = join(device)
    try:
        trainer_class = GanTrainer if config.stage == "gan" else Trainer
        trainer = trainer_class(config, run_dir, device, world)
        if resume:
            trainer.resume()
        if world.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        log = metrics_logger(run_dir, trainer.step if resume else None) if world.is_main else lambda _: None
        val = trainer.run(log)
        if not world.is_main:
            return None
        scores = {"val": {Path(config.val).name: val}} if config.val and val else {}
        return trainer.export("last", scores)
    finally:
        leave(world)
