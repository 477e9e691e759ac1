"""Architectures by name, in the manner of timm/spandrel: one registry, typed hyper-parameters."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn


@dataclass(frozen=True)
class Architecture:
    """A registered generator: its class, default hyper-parameters and a one-line summary."""

    name: str
    factory: type[nn.Module]
    defaults: dict[str, Any]
    summary: str

    def build(self, **params: Any) -> nn.Module:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name}: unknown hyper-parameters {sorted(unknown)}")
        return self.factory(**{**self.defaults, **params})


ARCHITECTURES: dict[str, Architecture] = {}
M = TypeVar("M", bound=type[nn.Module])


def register(name: str, summary: str) -> Callable[[M], M]:
    """Class decorator: the constructor's keyword defaults become the recorded hyper-parameters."""

    def wrap(cls: M) -> M:
        signature = inspect.signature(cls.__init__)
        defaults = {
            key: p.default
            for key, p in signature.parameters.items()
            if key != "self" and p.default is not inspect.Parameter.empty
        }
        ARCHITECTURES[name] = Architecture(name, cls, defaults, summary)
        return cls

    return wrap


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown architecture {name!r} (known: {known})") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_input_pixel(model: nn.Module, probe: int = 32) -> float:
    """Multiply-accumulates of every convolution per input pixel, measured with hooks on a probe."""
    total = 0

    def count(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += output.numel() * k

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles = [m.register_forward_hook(count) for m in convs]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            param = next(model.parameters())
            model(torch.zeros(1, 3, probe, probe, dtype=param.dtype, device=param.device))
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return total / (probe * probe)
