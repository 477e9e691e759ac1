"""Which registered architecture a foreign state dict is, read off its keys and shapes (spandrel's idea)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from upscaler.models import ARCHITECTURES, Architecture
from upscaler.models.errors import ModelError
from upscaler.models.registry import StateDict


@dataclass(frozen=True)
class Detected:
    arch: Architecture
    params: dict[str, Any]
    state: StateDict  # under the module's own key names


def state_mismatch(module: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """What differs between a module's (meta) state dict and the file's tensors, in a few words; None if nothing."""
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        parts = [f"missing {_few(missing)}"] if missing else []
        parts += [f"unexpected {_few(unexpected)}"] if unexpected else []
        return "; ".join(parts)
    for key, want in expected.items():
        got = tuple(state[key].shape)
        if got != want:
            return f"{key} is {list(got)}, the layers need {list(want)}"
    return None


def _few(keys: list[str], limit: int = 3) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _pattern(key: str) -> str:
    return re.sub(r"\d+", "N", key)


def detect_architecture(state: Mapping[str, torch.Tensor], source: Path) -> Detected:
    """The first detector whose reading builds (on meta) exactly the file's keys and shapes.

    Otherwise one line naming the closest architecture and what differs.
    """
    near: list[tuple[str, str]] = []
    for arch in ARCHITECTURES.detectors():
        assert arch.detect is not None
        try:
            found = arch.detect(state)
            if found is None:
                continue
            module = arch.build_on_meta(found.params)
        except (ValueError, IndexError, KeyError, ZeroDivisionError) as exc:
            near.append((arch.name, str(exc)))
            continue
        problem = state_mismatch(module, found.state)
        if problem is None:
            return Detected(arch, arch.checked_params(found.params), found.state)
        near.append((arch.name, problem))
    if near:
        name, problem = near[0]
    else:
        name, problem = _closest_by_keys(state)
    if not name:
        known = ", ".join(a.name for a in ARCHITECTURES.detectors())
        raise ModelError(f"{source}: not a known generator: its keys ({_few(sorted(state))}) match none of {known}")
    raise ModelError(f"{source}: architecture not recognised; closest: {name} ({problem})")


def _closest_by_keys(state: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """The detectable architecture sharing the most key patterns (digits ignored) with the file; "" if none shares any."""
    given = {_pattern(key) for key in state}
    best: tuple[float, str, str] = (0.0, "", "")
    for arch in ARCHITECTURES.detectors():
        wanted = {_pattern(key) for key in arch.build_on_meta({}).state_dict()}
        overlap = len(given & wanted) / len(given | wanted)
        if overlap > best[0]:
            missing = sorted(wanted - given)
            unexpected = sorted(given - wanted)
            detail = "; ".join(
                [f"missing {_few(missing)}"] * bool(missing) + [f"unexpected {_few(unexpected)}"] * bool(unexpected)
            )
            best = (overlap, arch.name, f"{overlap:.0%} of key patterns shared; {detail}")
    return best[1], best[2]
