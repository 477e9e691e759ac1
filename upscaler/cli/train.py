"""`upscale train`: generators trained by this tool, resumable."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from upscaler.cli.app import EXIT_INTERRUPTED, app, console, fail
from upscaler.cli.options import DeviceOption
from upscaler.engine.devices import resolve_device


class Loss(str, Enum):
    mse = "mse"
    l1 = "l1"


class Schedule(str, Enum):
    constant = "constant"
    step = "step"
    cosine = "cosine"


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="Folder of high-resolution training images (searched recursively).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder: checkpoint, metrics.jsonl, last/best.safetensors.")],
    arch: Annotated[str, typer.Option(help="Architecture: srresnet, edsr or compact.")] = "srresnet",
    loss: Annotated[Loss | None, typer.Option(help="Pixel loss [default: the architecture's paper recipe].")] = None,
    scale: Annotated[int, typer.Option(help="Upscaling factor.")] = 4,
    patch: Annotated[int, typer.Option(help="HR crop size in pixels (the paper's 96).")] = 96,
    batch: Annotated[int, typer.Option(help="Crops per step.")] = 16,
    steps: Annotated[int, typer.Option(help="Total optimizer steps (a resumed run continues to this total).")] = 100_000,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate [default: the recipe's, 1e-4 for srresnet/edsr].")] = None,
    schedule: Annotated[Schedule | None, typer.Option(help="Learning-rate schedule [default: the recipe's].")] = None,
    val: Annotated[Path | None, typer.Option(help="Validation set with HR/ and LR_bicubic/X4/; keeps best.safetensors.")] = None,
    val_every: Annotated[int, typer.Option(help="Validate every N steps.")] = 1000,
    checkpoint_every: Annotated[int, typer.Option(help="Write a resumable checkpoint every N steps.")] = 1000,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from RUN_DIR/checkpoint.pt exactly where it stopped.")] = False,
    device: DeviceOption = "auto",
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="Mixed precision [default: on for CUDA, off on CPU].")] = None,
    seed: Annotated[int, typer.Option(help="Seed for weights and data sampling.")] = 0,
    param: Annotated[list[str] | None, typer.Option(help="Architecture hyper-parameter KEY=VALUE, repeatable (e.g. channels=32).")] = None,
) -> None:
    """Train a generator with a pixel loss (SRResNet on MSE, EDSR on L1) on a folder of photos."""
    from upscaler.train.trainer import TrainConfig
    from upscaler.train.trainer import train as run_training

    try:
        torch_device = resolve_device(device)
        config = TrainConfig(
            data=str(data_dir), arch=arch, scale=scale, patch=patch, batch=batch, steps=steps,
            loss=loss.value if loss else "", lr=lr or 0.0, schedule=schedule.value if schedule else "",
            seed=seed, val=str(val) if val else None, val_every=val_every,
            checkpoint_every=checkpoint_every, amp=torch_device.type == "cuda" if amp is None else amp,
            arch_params={k: json.loads(v) for k, v in (p.split("=", 1) for p in param or [])},
        )
        path = run_training(config, out, torch_device, resume)
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted; `upscale train ... -o {out} --resume` continues from the last checkpoint", EXIT_INTERRUPTED) from None
    console.print(f"[green]saved[/] {path}")
