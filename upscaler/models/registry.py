"""Architectures by name, in the manner of timm/spandrel: one registry, typed hyper-parameters.

Foreign checkpoints carry no hyper-parameters, so an architecture may also register a
`detect` function that reads them off the tensor shapes and renames the keys of any layout
it knows into the module's own. Hyper-parameters from any file are checked against bounds
and the network is first built on the `meta` device, so a crafted file can never make us
allocate more than a real generator needs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from upscaler.models.errors import ModelError

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Detection:
    """What a detector read off a foreign state dict: hyper-parameters and the tensors under our key names."""

    params: dict[str, Any]
    state: StateDict


Detector = Callable[[Mapping[str, torch.Tensor]], Detection | None]

# Bounds on any hyper-parameter of any architecture, generous for real generators (RRDBNet x4plus:
# 64 channels, 23 blocks; EDSR large: 256 channels, 32 blocks) and far below what hurts.
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "scale": (1, 8), "channels": (1, 512), "blocks": (0, 128), "growth": (1, 256),
    "upsamples": (0, 3), "unshuffle": (1, 4),
}
FLOAT_BOUNDS: dict[str, tuple[float, float]] = {"res_scale": (0.0, 10.0), "value_range": (1.0, 65535.0)}
MAX_PARAMETERS = 100_000_000  # 2.3x the largest common SR generator (EDSR large, 43 M)


@dataclass(frozen=True)
class Architecture:
    """A registered generator: its class, default hyper-parameters and a one-line summary."""

    name: str
    factory: type[nn.Module]
    defaults: dict[str, Any]
    summary: str
    detect: Detector | None = None
    size_multiple: Callable[[dict[str, Any]], int] = field(default=lambda _params: 1)
    supports_fp16: bool = True
    supports_bf16: bool = True

    def checked_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with `params`, each of the default's type and within bounds; else ModelError."""
        if not isinstance(params, Mapping):
            raise ModelError(f"{self.name}: hyper-parameters must be a mapping, got {type(params).__name__}")
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ModelError(f"{self.name}: unknown hyper-parameters {sorted(unknown)}")
        merged = {**self.defaults, **params}
        for key, value in merged.items():
            merged[key] = _checked_value(self.name, key, value, self.defaults[key])
        return merged

    def build(self, **params: Any) -> nn.Module:
        return self.factory(**self.checked_params(params))

    def build_on_meta(self, params: Mapping[str, Any]) -> nn.Module:
        """The network with no storage: its size and its real scale are known before any allocation."""
        checked = self.checked_params(params)
        with torch.device("meta"):
            module = self.factory(**checked)
        count = count_parameters(module)
        if count > MAX_PARAMETERS:
            raise ModelError(f"{self.name}: {count:,} parameters is more than any supported generator ({MAX_PARAMETERS:,} at most)")
        return module


def _checked_value(arch: str, key: str, value: Any, default: Any) -> Any:
    low: float
    high: float
    if isinstance(default, (bool, str)):
        if type(value) is not type(default):
            raise ModelError(f"{arch}: {key} must be a {type(default).__name__}, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelError(f"{arch}: {key} must be an integer, got {value!r}")
        low, high = INT_BOUNDS.get(key, (0, 1024))
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ModelError(f"{arch}: {key} must be a number, got {value!r}")
        value = float(value)
        low, high = FLOAT_BOUNDS.get(key, (0.0, 1e6))
    else:
        raise ModelError(f"{arch}: {key} has an unsupported type")
    if not low <= value <= high:
        raise ModelError(f"{arch}: {key}={value} is out of bounds [{low}, {high}]")
    return value


# Which detector reads a foreign state dict first: the most specific layouts before the general ones,
# written down rather than left to the order in which modules happen to be imported.
DETECTION_ORDER = ("edsr_reference", "msrresnet", "rrdbnet", "srvggnet_compact")


class ArchRegistry:
    """Architectures by name, kept apart from the modules that define them (as timm and spandrel do).

    A name registered twice is an error, never a silent replacement; `detectors` runs in
    DETECTION_ORDER, and an architecture with a detector must have its place there.
    """

    def __init__(self, detection_order: tuple[str, ...] = DETECTION_ORDER) -> None:
        self._architectures: dict[str, Architecture] = {}
        self.detection_order = detection_order

    def add(self, arch: Architecture) -> None:
        if arch.name in self._architectures:
            raise ValueError(f"architecture {arch.name!r} is registered twice ({self._architectures[arch.name].factory.__qualname__} "
                             f"and {arch.factory.__qualname__})")
        if arch.detect is not None and arch.name not in self.detection_order:
            raise ValueError(f"architecture {arch.name!r} has a detector but no place in the detection order")
        self._architectures[arch.name] = arch

    def get(self, name: str) -> Architecture:
        try:
            return self._architectures[name]
        except (KeyError, TypeError):
            raise ModelError(f"unknown architecture {name!r} (known: {', '.join(sorted(self._architectures))})") from None

    def detectors(self) -> list[Architecture]:
        """The architectures that can read a foreign state dict, in the order they are tried."""
        return [self._architectures[name] for name in self.detection_order if name in self._architectures]

    def values(self) -> list[Architecture]:
        return list(self._architectures.values())

    def copy(self) -> ArchRegistry:
        twin = ArchRegistry(self.detection_order)
        twin._architectures = dict(self._architectures)
        return twin

    def __contains__(self, name: object) -> bool:
        return name in self._architectures

    def __iter__(self) -> Iterator[str]:
        return iter(self._architectures)

    def __len__(self) -> int:
        return len(self._architectures)


ARCHITECTURES = ArchRegistry()
M = TypeVar("M", bound=type[nn.Module])


def register(
    name: str, summary: str, detect: Detector | None = None,
    size_multiple: Callable[[dict[str, Any]], int] | None = None, supports_fp16: bool = True,
) -> Callable[[M], M]:
    """Class decorator: the constructor's keyword defaults become the recorded hyper-parameters."""

    def wrap(cls: M) -> M:
        signature = inspect.signature(cls.__init__)
        defaults = {
            key: p.default
            for key, p in signature.parameters.items()
            if key != "self" and p.default is not inspect.Parameter.empty
        }
        ARCHITECTURES.add(Architecture(name, cls, defaults, summary, detect, size_multiple or (lambda _params: 1), supports_fp16))
        return cls

    return wrap


def get_architecture(name: str) -> Architecture:
    return ARCHITECTURES.get(name)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def output_shape(model: nn.Module, height: int, width: int) -> tuple[int, ...]:
    """The output shape for one RGB input of this size, computed without data when the model is on meta."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        return tuple(model(torch.zeros(1, 3, height, width, device=device)).shape)


def macs_per_input_pixel(model: nn.Module, probe: int = 32) -> float:
    """Multiply-accumulates of every convolution per input pixel, measured with hooks on a probe.

    Costs nothing on a model built on the meta device.
    """
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
        output_shape(model, probe, probe)
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return total / (probe * probe)
