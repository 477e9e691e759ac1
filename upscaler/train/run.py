"""One `upscale train` run, in one process or as one rank of a torchrun job: only rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from upscaler.train.distributed import join, leave
from upscaler.train.gan import GanTrainer
from upscaler.train.trainer import CHECKPOINT, Log, TrainConfig, Trainer


def metrics_logger(run_dir: Path) -> Log:
    """Append JSON lines to RUN_DIR/metrics.jsonl, flushed per line so a crash loses nothing."""
    path = run_dir / "metrics.jsonl"

    def log(record: dict[str, Any]) -> None:
        with path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    return log


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
        val = trainer.run(metrics_logger(run_dir) if world.is_main else lambda _: None)
        if not world.is_main:
            return None
        scores = {"val": {Path(config.val).name: val}} if config.val and val else {}
        return trainer.export("last", scores)
    finally:
        leave(world)
