"""Training across processes started by torchrun: DistributedDataParallel, gloo on CPU, NCCL on CUDA.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous) in each process's environment;
without them the trainer runs as one process and none of this is used.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics and exports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """DDP averages gradients over ranks and keeps batch-norm statistics those of rank 0."""
        if not self.distributed:
            return module
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def join(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun set up; on CUDA each process takes the GPU of its LOCAL_RANK."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return World(), device
    world = World(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def parameters_digest(module: nn.Module) -> str:
    """sha256 of every parameter's bytes, in order: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, parameter in module.named_parameters():
        digest.update(name.encode())
        digest.update(parameter.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
