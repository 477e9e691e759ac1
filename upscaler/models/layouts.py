"""Helpers shared by the detectors: reading hyper-parameters off tensor shapes and renaming keys."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from upscaler.models.registry import StateDict


def indices(state: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    """Sorted distinct integers captured by the first group of `pattern` over all keys."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in state if (m := regex.fullmatch(key))})


def count_from_zero(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    """How many consecutive indices 0, 1, 2... the keys have: gaps mean a layout we do not know."""
    found = indices(state, pattern)
    return len(found) if found == list(range(len(found))) else -1


def renamed(state: Mapping[str, torch.Tensor], rules: list[tuple[str, str]]) -> StateDict:
    """Every key through the first matching (regex, replacement); keys no rule matches are kept."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    out: StateDict = {}
    for key, value in state.items():
        for regex, replacement in compiled:
            if regex.fullmatch(key):
                key = regex.sub(replacement, key)
                break
        out[key] = value
    return out


def shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return tuple(state[key].shape)
