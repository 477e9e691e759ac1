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
from upscaler.train.run import train as run_training
from upscaler.train.trainer import CHECKPOINT, DEFAULT_STEPS, TrainConfig


class Loss(str, Enum):
    mse = "mse"
    l1 = "l1"


class Schedule(str, Enum):
    constant = "constant"
    step = "step"
    drop = "drop"
    cosine = "cosine"


class Degradation(str, Enum):
    bicubic = "bicubic"
    realworld = "realworld"


class Stage(str, Enum):
    pixel = "pixel"
    gan = "gan"


class Content(str, Enum):
    vgg54 = "vgg54"
    vgg22 = "vgg22"
    mse = "mse"


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="Folder of high-resolution training images (searched recursively).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder: checkpoint, metrics.jsonl, last/best.safetensors.")],
    stage: Annotated[Stage, typer.Option(help="pixel: a generator on a pixel loss; gan: SRGAN's adversarial stage from --init.")] = Stage.pixel,
    arch: Annotated[str, typer.Option(help="Architecture: srresnet, edsr or compact (gan: taken from --init).")] = "srresnet",
    loss: Annotated[Loss | None, typer.Option(help="Pixel loss \\[default: the architecture's paper recipe].")] = None,
    init: Annotated[Path | None, typer.Option(help="The generator to start from, e.g. PIXEL_RUN/last.safetensors (gan: required; pixel: fine-tunes it, its architecture and scale replace --arch, --scale, --param).")] = None,
    vgg: Annotated[Path | None, typer.Option(help="gan: torchvision's VGG19 ImageNet weights, vgg19-dcbb9e9d.pth (or a .safetensors of it).")] = None,
    content: Annotated[Content, typer.Option(help="gan: content loss on VGG19 features phi5,4 or phi2,2, or pixel MSE.")] = Content.vgg54,
    adv_weight: Annotated[float, typer.Option(help="gan: weight of the adversarial loss -log D(G(LR)).")] = 1e-3,
    scale: Annotated[int, typer.Option(help="Upscaling factor (gan: taken from --init).")] = 4,
    patch: Annotated[int, typer.Option(help="HR crop size in pixels (the paper's 96).")] = 96,
    batch: Annotated[int, typer.Option(help="Crops per step and process (the global batch is this times the processes).")] = 16,
    steps: Annotated[int | None, typer.Option(help="Total optimizer steps; a resumed run continues to this total \\[default: pixel 1e5, gan 2e5].")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate \\[default: the recipe's, 1e-4 for srresnet/edsr and gan].")] = None,
    schedule: Annotated[Schedule | None, typer.Option(help="Learning-rate schedule \\[default: the recipe's; gan: drop, tenfold at half the steps].")] = None,
    val: Annotated[Path | None, typer.Option(help="Validation set with HR/ and LR_bicubic/X4/; keeps best.safetensors.")] = None,
    val_every: Annotated[int, typer.Option(help="Validate every N steps.")] = 1000,
    checkpoint_every: Annotated[int, typer.Option(help="Write a resumable checkpoint every N steps.")] = 1000,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from RUN_DIR/checkpoint.pt exactly where it stopped.")] = False,
    device: DeviceOption = "auto",
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="Mixed precision \\[default: on for CUDA, off on CPU].")] = None,
    seed: Annotated[int, typer.Option(help="Seed for weights and data sampling.")] = 0,
    param: Annotated[list[str] | None, typer.Option(help="Architecture hyper-parameter KEY=VALUE, repeatable (e.g. channels=32).")] = None,
    degradation: Annotated[Degradation, typer.Option(help="How LR patches are made: bicubic (MATLAB, the benchmarks' LR) or realworld (Real-ESRGAN's two rounds of blur, resize, noise and JPEG).")] = Degradation.bicubic,
    degradation_param: Annotated[list[str] | None, typer.Option(help="realworld setting KEY=VALUE in JSON, repeatable; defaults are Real-ESRGAN x4plus's (e.g. noise_range=[1,10], jpeg_range=[50,95], usm_target=true).")] = None,
) -> None:
    """Train a generator: a pixel loss (SRResNet on MSE, EDSR on L1), then SRGAN's adversarial stage.

    Under torchrun (`torchrun --nproc-per-node N -m upscaler train ...`) each process trains a replica with DistributedDataParallel; rank 0 alone writes the run folder.
    """
    try:
        torch_device = resolve_device(device)
        config = TrainConfig(
            data=str(data_dir), arch=arch, scale=scale, patch=patch, batch=batch,
            steps=DEFAULT_STEPS[stage.value] if steps is None else steps,
            loss=loss.value if loss else "", lr=lr or 0.0, schedule=schedule.value if schedule else "",
            seed=seed, val=str(val) if val else None, val_every=val_every,
            checkpoint_every=checkpoint_every, amp=torch_device.type == "cuda" if amp is None else amp,
            arch_params=parse_params(param or []), stage=stage.value, init=str(init) if init else None,
            vgg=str(vgg) if vgg else None, content=content.value, adv_weight=adv_weight,
            degradation=degradation.value, degradation_params=parse_params(degradation_param or [], "--degradation-param"),
        )
        path = run_training(config, out, torch_device, resume)
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        if (out / CHECKPOINT).is_file():
            raise fail(f"interrupted; `upscale train ... -o {out} --resume` continues from the last checkpoint", EXIT_INTERRUPTED) from None
        raise fail("interrupted before the first checkpoint; nothing to resume", EXIT_INTERRUPTED) from None
    if path is not None:
        console.print(f"[green]saved[/] {path}")


def parse_params(pairs: list[str], option: str = "--param") -> dict[str, object]:
    """KEY=VALUE pairs of `option`, VALUE in JSON (numbers, true/false, lists, strings in quotes)."""
    params: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            if not sep or not key:
                raise ValueError("not KEY=VALUE")
            params[key] = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{option} {pair!r}: {exc}") from None
    return params
