"""Choosing and opening the backend that runs a loaded model; the CLI never names a backend class."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .devices import resolve_device, resolve_precision
from .engine import DEFAULT_BATCH, DEFAULT_OVERLAP, DEFAULT_TILE, Backend, PictureUpscaler, TiledUpscaler, TorchBackend
from .weights import LoadedModel, load_model


@dataclass
class RunSettings:
    model: str
    scale: int | None = None  # output scale; None = the model's own
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    batch: int = DEFAULT_BATCH
    device: str = "auto"
    precision: str = "auto"


def open_backend(loaded: LoadedModel, settings: RunSettings) -> Backend:
    device = resolve_device(settings.device)
    dtype = resolve_precision(settings.precision, device)
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("--precision fp16 needs a CUDA device; on CPU use fp32 or bf16")
    return TorchBackend(loaded.module, loaded.card.scale, device, dtype, settings.tile, settings.batch)


def open_upscaler(settings: RunSettings) -> tuple[PictureUpscaler, LoadedModel, Backend]:
    loaded = load_model(settings.model)
    backend = open_backend(loaded, settings)
    tiled = TiledUpscaler(backend, settings.overlap)
    return PictureUpscaler(tiled, settings.scale or loaded.card.scale), loaded, backend
