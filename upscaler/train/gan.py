"""The SRGAN adversarial stage (Ledig et al. 2017, eq. 3): l_SR = l_X + 1e-3 * l_Gen.

The generator starts from a pixel-stage model; l_X is the MSE of rescaled VGG19 feature maps
(SRGAN-VGG54 by default, VGG22) or of pixels (SRGAN-MSE); l_Gen = -log D(G(LR)). The
discriminator is trained on real HR crops against this step's generator output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from upscaler.engine.devices import channels_last
from upscaler.train.discriminator import Discriminator
from upscaler.train.distributed import World
from upscaler.train.trainer import NEEDS_INIT, TrainConfig, Trainer
from upscaler.train.vgg import HOW_TO_GET, ContentLoss, load_vgg19


def content_criterion(config: TrainConfig) -> nn.Module:
    """l_X of the configured --content: VGG feature MSE from the --vgg file, or pixel MSE."""
    if config.content == "mse":
        return nn.MSELoss()
    if not config.vgg:
        raise ValueError(f"--content {config.content} needs --vgg; {HOW_TO_GET}")
    return ContentLoss(load_vgg19(Path(config.vgg)), config.content)


class GanTrainer(Trainer):
    def __init__(self, config: TrainConfig, run_dir: Path, device: torch.device, world: World | None = None) -> None:
        if not config.init:
            raise ValueError(NEEDS_INIT)
        self.content_loss = content_criterion(config)  # a wrong --vgg fails before the data is read
        super().__init__(config, run_dir, device, world)
        self.content_loss.to(self.device)
        self.discriminator = channels_last(Discriminator(config.patch).to(self.device))
        self.ddp_discriminator = self.world.wrap(self.discriminator, self.device)
        self.d_optimizer, self.d_scheduler = self.optimize(self.discriminator)
        self.d_scaler = self.grad_scaler()

    def replicas(self) -> dict[str, nn.Module]:
        return {**super().replicas(), "discriminator": self.discriminator}

    def state(self) -> dict[str, Any]:
        return {
            **super().state(),
            "discriminator": self.discriminator.state_dict(),
            "d_optimizer": self.d_optimizer.state_dict(),
            "d_scheduler": self.d_scheduler.state_dict(),
            "d_scaler": self.d_scaler.state_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.discriminator.load_state_dict(state["discriminator"])
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.d_scheduler.load_state_dict(state["d_scheduler"])
        self.d_scaler.load_state_dict(state["d_scaler"])

    def recipe(self) -> dict[str, Any]:
        c = self.config
        content = {"vgg54": "vgg19 phi5,4 / 12.75", "vgg22": "vgg19 phi2,2 / 12.75", "mse": "pixel mse"}[c.content]
        return {
            **super().recipe(),
            "stage": "gan",
            "loss": f"{content} + {c.adv_weight:g} * -log D(G(LR))",
            "content": c.content,
            "adv_weight": c.adv_weight,
            "discriminator": "ledig2017-fig4",
            "vgg": Path(c.vgg).name if c.vgg and c.content != "mse" else None,
        }

    def train_step(self) -> dict[str, float]:
        c = self.config
        lr, hr = self.next_batch()
        real = torch.ones(hr.shape[0], device=self.device)
        fake = torch.zeros_like(real)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=c.amp)

        # Generator: content loss plus -log D(G(LR)); D is frozen and called without DDP (no gradient sync).
        self.discriminator.requires_grad_(False)
        with autocast:
            sr = self.ddp_model(lr)
            content = self.content_loss(sr.float(), hr)
            adversarial = F.binary_cross_entropy_with_logits(self.discriminator(sr).float(), real)
            loss = content + c.adv_weight * adversarial
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

        # Discriminator: real HR against this step's SR; one backward per forward, as DDP expects.
        self.discriminator.requires_grad_(True)
        self.d_optimizer.zero_grad(set_to_none=True)
        with autocast:
            real_logits = self.ddp_discriminator(hr).float()
        d_real = F.binary_cross_entropy_with_logits(real_logits, real)
        self.d_scaler.scale(d_real).backward()
        with autocast:
            fake_logits = self.ddp_discriminator(sr.detach()).float()
        d_fake = F.binary_cross_entropy_with_logits(fake_logits, fake)
        self.d_scaler.scale(d_fake).backward()
        self.d_scaler.step(self.d_optimizer)
        self.d_scaler.update()

        self.scheduler.step()
        self.d_scheduler.step()
        return {
            "loss": float(loss.detach()),
            "content": float(content.detach()),
            "adversarial": float(adversarial.detach()),
            "d_loss": float((d_real + d_fake).detach()),
            "d_real": float(torch.sigmoid(real_logits.detach()).mean()),
            "d_fake": float(torch.sigmoid(fake_logits.detach()).mean()),
        }
