"""The pixel-loss training stage (SRResNet on MSE, EDSR on L1), resumable to the exact step.

`GanTrainer` (train/gan.py) extends it with the adversarial stage; both run as one process or as
one of several started by torchrun (train/distributed.py).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from upscaler.engine.devices import channels_last, cpu_name
from upscaler.engine.engine import open_engine
from upscaler.engine.settings import RunSettings
from upscaler.models import get_architecture
from upscaler.models.weights import LoadedModel, ModelCard, load_model, save_model
from upscaler.quality.evaluate import picture_upscaler, score_dataset
from upscaler.train.data import DEGRADATIONS, PatchSampler, Prefetcher
from upscaler.train.degradations import RealWorldSettings
from upscaler.train.distributed import World, parameters_digest
from upscaler.train.vgg import file_sha256

# Paper defaults per architecture: (loss, learning rate, schedule).
RECIPES: dict[str, tuple[str, float, str]] = {
    "srresnet": ("mse", 1e-4, "constant"),  # Ledig et al.: MSE, Adam(0.9), 1e-4
    "edsr": ("l1", 1e-4, "step"),  # Lim et al.: L1, 1e-4 halved on a step schedule
    "compact": ("l1", 5e-4, "cosine"),
}
# Ledig et al.'s adversarial stage: 1e-4 for the first half of the updates, 1e-5 for the second.
GAN_RECIPE: tuple[float, str] = (1e-4, "drop")
DEFAULT_STEPS = {"pixel": 100_000, "gan": 200_000}
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"mse": F.mse_loss, "l1": F.l1_loss}
CONTENTS = ("vgg54", "vgg22", "mse")
CHECKPOINT = "checkpoint.pt"
NEEDS_INIT = "--stage gan needs --init: the pixel-stage generator it starts from (PIXEL_RUN/last.safetensors)"
# A resumed run may train longer, and checkpoint, log or validate at other intervals: none changes the updates.
FREE_ON_RESUME = {"steps", "checkpoint_every", "log_every", "val_every"}
Log = Callable[[dict[str, Any]], None]


@dataclass
class TrainConfig:
    data: str
    arch: str
    scale: int = 4
    patch: int = 96
    batch: int = 16  # per process: the global batch is batch x world size
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
    stage: str = "pixel"
    init: str | None = None  # the generator to start from (gan: required; pixel: fine-tune it)
    vgg: str | None = None  # gan: torchvision's VGG19 weights for the content loss
    content: str = "vgg54"
    adv_weight: float = 1e-3
    degradation: str = "bicubic"  # or "realworld": Real-ESRGAN's high-order model (train/degradations.py)
    degradation_params: dict[str, Any] = field(default_factory=dict)

    def realworld(self) -> RealWorldSettings | None:
        return RealWorldSettings.from_params(self.degradation_params) if self.degradation == "realworld" else None

    def command_line(self, run_dir: Path, world: World) -> str:
        """The command that reproduces this run, every setting spelled out."""
        launcher = ["upscale"]
        if world.distributed:
            per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world.world_size))
            launcher = ["torchrun", "--nnodes", str(world.world_size // per_node), "--nproc-per-node", str(per_node),
                        "-m", "upscaler"]
        words = [*launcher, "train", self.data, "-o", str(run_dir)]
        if self.stage == "gan":
            assert self.init is not None
            words += ["--stage", "gan", "--init", self.init, "--content", self.content, "--adv-weight", f"{self.adv_weight:g}"]
            words += ["--vgg", self.vgg] if self.vgg else []
        elif self.init:
            words += ["--init", self.init, "--loss", self.loss]
        else:
            words += ["--arch", self.arch, "--loss", self.loss, "--scale", str(self.scale)]
        words += ["--patch", str(self.patch), "--batch", str(self.batch), "--steps", str(self.steps),
                  "--lr", f"{self.lr:g}", "--schedule", self.schedule, "--seed", str(self.seed),
                  "--amp" if self.amp else "--no-amp"]
        if self.val:
            words += ["--val", self.val, "--val-every", str(self.val_every)]
        if self.degradation != "bicubic":
            words += ["--degradation", self.degradation]
            words += [f"--degradation-param {k}={json.dumps(v)}" for k, v in self.degradation_params.items()]
        if self.stage == "pixel" and not self.init:
            words += [f"--param {k}={json.dumps(v)}" for k, v in self.arch_params.items()]
        return " ".join(words)

    def with_recipe_defaults(self) -> TrainConfig:
        """Fill what was not given from the paper recipe of the stage (and architecture); check the rest."""
        if self.stage == "gan":
            lr, schedule = GAN_RECIPE
        else:
            self.loss = self.loss or RECIPES.get(self.arch, ("l1", 1e-4, "step"))[0]
            lr, schedule = RECIPES.get(self.arch, ("l1", 1e-4, "step"))[1:]
        self.lr = self.lr or lr
        self.schedule = self.schedule or schedule
        self.validate()
        return self

    def validate(self) -> None:
        """Every setting a run cannot start with, as one clear sentence naming the option."""
        for option, value in (("--scale", self.scale), ("--batch", self.batch), ("--steps", self.steps),
                              ("--val-every", self.val_every), ("--checkpoint-every", self.checkpoint_every),
                              ("--log-every", self.log_every)):
            if value < 1:
                raise ValueError(f"{option} {value}: must be at least 1")
        if self.patch < 1 or self.patch % self.scale:
            raise ValueError(f"--patch {self.patch}: must be a positive multiple of --scale {self.scale}")
        if not self.lr > 0:
            raise ValueError(f"--lr {self.lr:g}: must be positive")
        lr_factor(self.schedule, 0, 1)
        if self.degradation not in DEGRADATIONS:
            raise ValueError(f"--degradation {self.degradation!r}: must be one of {', '.join(DEGRADATIONS)}")
        if self.degradation != "realworld" and self.degradation_params:
            raise ValueError("--degradation-param applies to --degradation realworld only")
        self.realworld()  # names a bad --degradation-param before any data is read
        if self.stage not in DEFAULT_STEPS:
            raise ValueError(f"--stage {self.stage!r}: must be one of {sorted(DEFAULT_STEPS)}")
        if self.stage == "pixel" and self.loss not in LOSSES:
            raise ValueError(f"--loss must be one of {sorted(LOSSES)}")
        if self.stage == "gan":
            if not self.init:
                raise ValueError(NEEDS_INIT)
            if self.content not in CONTENTS:
                raise ValueError(f"--content {self.content!r}: must be one of {', '.join(CONTENTS)}")
            if self.adv_weight < 0:
                raise ValueError(f"--adv-weight {self.adv_weight:g}: must not be negative")


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Learning-rate multiplier as a pure function of the step, so resuming needs no hidden state."""
    if schedule == "constant":
        return 1.0
    if schedule == "step":  # halve at 50% and again at 75% of training
        return 0.5 ** (int(step >= total // 2) + int(step >= 3 * total // 4))
    if schedule == "drop":  # tenfold at 50%: SRGAN's 1e-4 then 1e-5
        return 0.1 if step >= total // 2 else 1.0
    if schedule == "cosine":
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    raise ValueError(f"unknown schedule {schedule!r} (constant, step, drop, cosine)")


def sampler_seed(seed: int, rank: int) -> int:
    """Each rank draws its own crops; rank 0 draws what a single process would.

    Derived, not offset: torch's CPU generator keeps only the low 32 bits of a seed.
    """
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


class Trainer:
    def __init__(self, config: TrainConfig, run_dir: Path, device: torch.device, world: World | None = None) -> None:
        self.init = load_model(config.init) if config.init else None
        if self.init is not None:  # the generator is the init model: its architecture, hyper-parameters and scale
            card = self.init.card
            config = replace(config, arch=card.arch, scale=card.scale,
                             arch_params={k: v for k, v in card.arch_params.items() if k != "scale"})
        self.config = config.with_recipe_defaults()
        self.run_dir, self.device = run_dir, device
        self.world = world or World()
        torch.manual_seed(config.seed)
        self.sampler = PatchSampler(Path(config.data), config.patch, config.scale, sampler_seed(config.seed, self.world.rank),
                                    config.realworld())
        # The high-order degradation costs about as much as a step on 2 cores: made ahead on a thread.
        self.batches = Prefetcher(self.sampler, config.batch, depth=2 if config.degradation == "realworld" else 0)
        self.model = channels_last(self.build_generator().to(device))
        self.ddp_model = self.world.wrap(self.model, device)
        self.optimizer, self.scheduler = self.optimize(self.model)
        self.amp_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
        self.scaler = self.grad_scaler()
        self.step = 0
        self.best_psnr = -math.inf
        self.train_time = 0.0  # seconds spent training, summed over resumed legs

    def build_generator(self) -> nn.Module:
        if self.init is not None:
            return self.init.module
        c = self.config
        return get_architecture(c.arch).build(scale=c.scale, **c.arch_params)

    def optimize(self, module: nn.Module) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
        """Adam(0.9, 0.999) with the schedule of the recipe, as in both papers."""
        c = self.config
        optimizer = torch.optim.Adam(module.parameters(), lr=c.lr, betas=(0.9, 0.999))
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(c.schedule, step, c.steps))

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.config.amp and self.device.type == "cuda")

    def replicas(self) -> dict[str, nn.Module]:
        """The trained networks, which every rank must hold bit-identical."""
        return {"generator": self.model}

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly; random states of every rank (a collective call)."""
        return {
            "config": asdict(self.config),
            "world_size": self.world.world_size,
            "step": self.step,
            "best_psnr": self.best_psnr,
            "train_time": self.train_time,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler_rng": self.world.gather(self.batches.rng_state()),
            "torch_rng": self.world.gather(torch.get_rng_state()),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.batches.restore(_rank_entry(state["sampler_rng"], self.world.rank))
        torch.set_rng_state(_rank_entry(state["torch_rng"], self.world.rank))
        self.step, self.best_psnr, self.train_time = state["step"], state["best_psnr"], state["train_time"]

    def save_checkpoint(self) -> None:
        state = self.state()
        if not self.world.is_main:
            return
        from upscaler.io.files import write_atomically

        write_atomically(self.run_dir / CHECKPOINT, lambda stream: torch.save(state, stream))

    def resume(self) -> None:
        path = self.run_dir / CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)  # never runs a pickle's code
        except Exception as exc:  # noqa: BLE001 (the weights-only unpickler and torch.load raise many kinds)
            cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"{path}: not a checkpoint this tool can load ({cause})") from None
        if not isinstance(state, dict) or not {"config", "step", "model"} <= set(state):
            raise ValueError(f"{path}: not a checkpoint written by upscale train")
        # Settings added since a checkpoint was written take their defaults, which are what it trained with.
        saved = {k: v for k, v in {**asdict(TrainConfig("", "")), **state["config"]}.items() if k not in FREE_ON_RESUME}
        mine = {k: v for k, v in asdict(self.config).items() if k not in FREE_ON_RESUME}
        for settings in (saved, mine):  # the same folder named relative to another directory, or through a link
            settings["data"] = os.path.realpath(settings["data"])
        if saved != mine:
            changed = sorted(k for k in mine if saved.get(k) != mine[k])
            raise ValueError(f"{path}: was trained with different settings ({', '.join(changed)})")
        if state.get("world_size", 1) != self.world.world_size:
            raise ValueError(f"{path}: was written by {state.get('world_size', 1)} process(es); resume it with as many "
                             f"(torchrun --nproc-per-node), not {self.world.world_size}")
        self.load_state(state)

    # -- export ----------------------------------------------------------------------------------
    def recipe(self) -> dict[str, Any]:
        c = self.config
        return {
            "stage": "pixel",
            "loss": c.loss,
            "optimizer": "adam(0.9, 0.999)",
            "lr": c.lr,
            "schedule": c.schedule,
            "steps": self.step,
            "batch": c.batch,
            "world_size": self.world.world_size,
            "global_batch": c.batch * self.world.world_size,
            "patch": c.patch,
            "data": Path(c.data).name,
            "degradation": "matlab-bicubic" if c.degradation == "bicubic" else
                           {"realworld": asdict(RealWorldSettings.from_params(c.degradation_params))},
            "seed": c.seed,
            "init": c.init,
            "init_sha256": file_sha256(Path(self.init.source)) if self.init is not None else None,
            "wall_time_s": round(self.train_time, 1),
            "device": str(self.device),
            "hardware": hardware_description(self.device),
            "command": c.command_line(self.run_dir, self.world),
        }

    def export(self, name: str, scores: dict[str, Any]) -> Path:
        c = self.config
        card = ModelCard(arch=c.arch, arch_params={"scale": c.scale, **c.arch_params}, scale=c.scale, name=name,
                         recipe=self.recipe(), scores=scores)
        path = self.run_dir / f"{name}.safetensors"
        self.model.eval()
        save_model(self.model, card, path)
        self.model.train()
        return path

    # -- the loop ------------------------------------------------------------------------------
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        lr, hr = self.batches.next()
        return (lr.to(self.device, memory_format=torch.channels_last),
                hr.to(self.device, memory_format=torch.channels_last))

    def train_step(self) -> dict[str, float]:
        """One update; returns the losses to log."""
        lr, hr = self.next_batch()
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.config.amp):
            loss = LOSSES[self.config.loss](self.ddp_model(lr).float(), hr)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {"loss": float(loss.detach())}

    def validate(self) -> dict[str, float]:
        c = self.config
        assert c.val is not None
        loaded = LoadedModel(ModelCard(c.arch, c.arch_params, c.scale), self.model, "training")
        engine = open_engine(RunSettings(model="training", device=str(self.device), precision="fp32"), loaded)
        score = score_dataset(picture_upscaler(engine.upscale), Path(c.val), c.scale)  # on a private eval copy
        return {"val_psnr": score.psnr, "val_ssim": score.ssim}

    def check_replicas(self, log: Log) -> None:
        """Across processes: every rank's weights must be bit-identical; logged, and fatal if not."""
        digests = {name: self.world.gather(parameters_digest(module)) for name, module in self.replicas().items()}
        log({"step": self.step, "replica_digests": digests})
        diverged = sorted(name for name, values in digests.items() if len(set(values)) > 1)
        if diverged:
            raise RuntimeError(f"step {self.step}: the ranks' {', '.join(diverged)} weights diverged")

    def run(self, log: Log) -> dict[str, float]:
        """Train to `config.steps`; returns the last validation scores (empty without --val, and off rank 0)."""
        try:
            return self._run(log)
        finally:
            self.batches.close()  # no thread degrades batches nobody will take

    def _run(self, log: Log) -> dict[str, float]:
        c = self.config
        self.ddp_model.train()
        started = tick = window_start = time.perf_counter()
        window_step = self.step
        last_val: dict[str, float] = {}
        window: dict[str, list[float]] = {}
        with Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("loss {task.fields[loss]:.5f}"),
            TextColumn("{task.fields[rate]:.1f} steps/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not self.world.is_main,
        ) as progress:
            task = progress.add_task("train", total=c.steps, completed=self.step, loss=0.0, rate=0.0)
            while self.step < c.steps:
                step_lr = self.optimizer.param_groups[0]["lr"]
                for key, value in self.train_step().items():
                    window.setdefault(key, []).append(value)
                self.step += 1
                now = time.perf_counter()
                self.train_time += now - tick
                tick = now
                if self.step % c.log_every == 0 or self.step == c.steps:
                    rate = (self.step - window_step) / max(now - window_start, 1e-9)
                    means = {key: sum(values) / len(values) for key, values in window.items()}
                    log({"step": self.step, **means, "lr": step_lr, "steps_per_s": rate, "elapsed_s": now - started})
                    progress.update(task, completed=self.step, loss=means["loss"], rate=rate)
                    window, window_start, window_step = {}, now, self.step
                if c.val and self.world.is_main and (self.step % c.val_every == 0 or self.step == c.steps):
                    last_val = self.validate()
                    log({"step": self.step, **last_val})
                    if last_val["val_psnr"] > self.best_psnr:
                        self.best_psnr = last_val["val_psnr"]
                        self.export("best", {"val": {Path(c.val).name: last_val}})
                if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                    self.save_checkpoint()
                    if self.world.distributed:
                        self.check_replicas(log)
        return last_val


def _rank_entry(states: torch.Tensor | list[torch.Tensor], rank: int) -> torch.Tensor:
    """This rank's random state (checkpoints from before torchrun support hold one tensor, not a list)."""
    return states if isinstance(states, torch.Tensor) else states[rank].cpu()
