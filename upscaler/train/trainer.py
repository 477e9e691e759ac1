"""The pixel-loss training stage (SRResNet on MSE, EDSR on L1), resumable to the exact step."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from upscaler.engine.devices import channels_last, cpu_name
from upscaler.engine.engine import open_engine
from upscaler.engine.settings import RunSettings
from upscaler.models import get_architecture
from upscaler.models.weights import LoadedModel, ModelCard, save_model
from upscaler.quality.evaluate import picture_upscaler, score_dataset
from upscaler.train.data import PatchSampler

# Paper defaults per architecture: (loss, learning rate, schedule).
RECIPES: dict[str, tuple[str, float, str]] = {
    "srresnet": ("mse", 1e-4, "constant"),  # Ledig et al.: MSE, Adam(0.9), 1e-4
    "edsr": ("l1", 1e-4, "step"),  # Lim et al.: L1, 1e-4 halved on a step schedule
    "compact": ("l1", 5e-4, "cosine"),
}
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"mse": F.mse_loss, "l1": F.l1_loss}
CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    data: str
    arch: str
    scale: int = 4
    patch: int = 96
    batch: int = 16
    steps: int = 1000
    loss: str = ""
    lr: float = 0.0
    schedule: str = ""
    seed: int = 0
    val: str | None = None
    val_every: int = 1000
    checkpoint_every: int = 1000
    log_every: int = 50
    amp: bool = False
    arch_params: dict[str, Any] = field(default_factory=dict)

    def command_line(self, run_dir: Path) -> str:
        """The `upscale train` command that reproduces this run, every setting spelled out."""
        words = ["upscale", "train", self.data, "-o", str(run_dir), "--arch", self.arch, "--loss", self.loss,
                 "--scale", str(self.scale), "--patch", str(self.patch), "--batch", str(self.batch),
                 "--steps", str(self.steps), "--lr", f"{self.lr:g}", "--schedule", self.schedule,
                 "--seed", str(self.seed), "--amp" if self.amp else "--no-amp"]
        if self.val:
            words += ["--val", self.val, "--val-every", str(self.val_every)]
        words += [f"--param {k}={json.dumps(v)}" for k, v in self.arch_params.items()]
        return " ".join(words)

    def with_recipe_defaults(self) -> TrainConfig:
        """Fill loss, lr and schedule that were not given from the architecture's paper recipe."""
        loss, lr, schedule = RECIPES.get(self.arch, ("l1", 1e-4, "step"))
        self.loss = self.loss or loss
        self.lr = self.lr or lr
        self.schedule = self.schedule or schedule
        if self.loss not in LOSSES:
            raise ValueError(f"--loss must be one of {sorted(LOSSES)}")
        return self


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Learning-rate multiplier as a pure function of the step, so resuming needs no hidden state."""
    if schedule == "constant":
        return 1.0
    if schedule == "step":  # halve at 50% and again at 75% of training
        return 0.5 ** (int(step >= total // 2) + int(step >= 3 * total // 4))
    if schedule == "cosine":
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    raise ValueError(f"unknown schedule {schedule!r} (constant, step, cosine)")


class Trainer:
    def __init__(self, config: TrainConfig, run_dir: Path, device: torch.device) -> None:
        self.config = config.with_recipe_defaults()
        self.run_dir, self.device = run_dir, device
        torch.manual_seed(config.seed)
        self.sampler = PatchSampler(Path(config.data), config.patch, config.scale, config.seed)
        self.model = get_architecture(config.arch).build(scale=config.scale, **config.arch_params).to(device)
        self.model = channels_last(self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=(0.9, 0.999))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(config.schedule, step, config.steps)
        )
        self.amp_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
        self.step = 0
        self.best_psnr = -math.inf
        self.train_time = 0.0  # seconds spent training, summed over resumed legs

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        state = {
            "config": asdict(self.config),
            "step": self.step,
            "best_psnr": self.best_psnr,
            "train_time": self.train_time,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler_rng": self.sampler.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        tmp = self.run_dir / f".{CHECKPOINT}.tmp"
        torch.save(state, tmp)
        tmp.replace(self.run_dir / CHECKPOINT)

    def resume(self) -> None:
        path = self.run_dir / CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        state = torch.load(path, map_location=self.device, weights_only=True)  # no arbitrary unpickling
        saved = {k: v for k, v in state["config"].items() if k != "steps"}  # a resumed run may train longer
        mine = {k: v for k, v in asdict(self.config).items() if k != "steps"}
        if saved != mine:
            changed = sorted(k for k in mine if saved.get(k) != mine[k])
            raise ValueError(f"{path}: was trained with different settings ({', '.join(changed)})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.generator.set_state(state["sampler_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.best_psnr, self.train_time = state["step"], state["best_psnr"], state["train_time"]

    def export(self, name: str, scores: dict[str, Any]) -> Path:
        c = self.config
        card = ModelCard(
            arch=c.arch,
            arch_params={"scale": c.scale, **c.arch_params},
            scale=c.scale,
            name=name,
            recipe={
                "stage": "pixel",
                "loss": c.loss,
                "optimizer": "adam(0.9, 0.999)",
                "lr": c.lr,
                "schedule": c.schedule,
                "steps": self.step,
                "batch": c.batch,
                "patch": c.patch,
                "data": Path(c.data).name,
                "degradation": "matlab-bicubic",
                "seed": c.seed,
                "wall_time_s": round(self.train_time, 1),
                "device": str(self.device),
                "hardware": hardware_description(self.device),
                "command": c.command_line(self.run_dir),
            },
            scores=scores,
        )
        path = self.run_dir / f"{name}.safetensors"
        self.model.eval()
        save_model(self.model, card, path)
        self.model.train()
        return path

    # -- the loop ------------------------------------------------------------------------------
    def train_step(self) -> float:
        lr, hr = self.sampler.batch(self.config.batch)
        lr = lr.to(self.device, memory_format=torch.channels_last)
        hr = hr.to(self.device, memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.config.amp):
            loss = LOSSES[self.config.loss](self.model(lr).float(), hr)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return float(loss.detach())

    def validate(self) -> dict[str, float]:
        c = self.config
        assert c.val is not None
        loaded = LoadedModel(ModelCard(c.arch, c.arch_params, c.scale), self.model, "training")
        engine = open_engine(RunSettings(model="training", device=str(self.device), precision="fp32"), loaded)
        score = score_dataset(picture_upscaler(engine.upscale), Path(c.val), c.scale)  # on a private eval copy
        return {"val_psnr": score.psnr, "val_ssim": score.ssim}

    def run(self, log: Callable[[dict[str, Any]], None]) -> dict[str, float]:
        """Train to `config.steps`; returns the last validation scores (empty without --val)."""
        c = self.config
        self.model.train()
        started = tick = window_start = time.perf_counter()
        window_step = self.step
        last_val: dict[str, float] = {}
        losses: list[float] = []
        with Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("loss {task.fields[loss]:.5f}"),
            TextColumn("{task.fields[rate]:.1f} steps/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ) as progress:
            task = progress.add_task("train", total=c.steps, completed=self.step, loss=0.0, rate=0.0)
            while self.step < c.steps:
                losses.append(self.train_step())
                now = time.perf_counter()
                self.train_time += now - tick
                tick = now
                if self.step % c.log_every == 0 or self.step == c.steps:
                    rate = (self.step - window_step) / max(now - window_start, 1e-9)
                    mean_loss = sum(losses) / len(losses)
                    log({"step": self.step, "loss": mean_loss, "lr": self.scheduler.get_last_lr()[0],
                         "steps_per_s": rate, "elapsed_s": now - started})
                    progress.update(task, completed=self.step, loss=mean_loss, rate=rate)
                    losses, window_start, window_step = [], now, self.step
                if c.val and (self.step % c.val_every == 0 or self.step == c.steps):
                    last_val = self.validate()
                    log({"step": self.step, **last_val})
                    if last_val["val_psnr"] > self.best_psnr:
                        self.best_psnr = last_val["val_psnr"]
                        self.export("best", {"val": {Path(c.val).name: last_val}})
                if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                    self.save_checkpoint()
        return last_val


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"



def metrics_logger(run_dir: Path) -> Callable[[dict[str, Any]], None]:
    """Append JSON lines to RUN_DIR/metrics.jsonl, flushed per line so a crash loses nothing."""
    path = run_dir / "metrics.jsonl"

    def log(record: dict[str, Any]) -> None:
        with path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    return log


def train(config: TrainConfig, run_dir: Path, device: torch.device, resume: bool) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, run_dir, device)
    if resume:
        trainer.resume()
    val = trainer.run(metrics_logger(run_dir))
    scores = {"val": {Path(config.val).name: val}} if config.val and val else {}
    return trainer.export("last", scores)

