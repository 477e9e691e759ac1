"""The frame engine on a real GPU (skipped where there is none, as in CI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from upscaler.engine.engine import open_engine
from upscaler.engine.settings import RunSettings
from upscaler.io.images import Picture
from upscaler.quality.evaluate import dataset_pairs
from upscaler.quality.metrics import psnr

from .conftest import dataset, photo_array

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CPU_FP32 = RunSettings(model="default", device="cpu", precision="fp32")


def _rgb(lr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.stack([lr] * 3, axis=-1) if lr.ndim == 2 else lr)


@pytest.mark.parametrize(("streams", "graphs", "tile"), [(1, False, None), (4, False, 128), (2, True, None)])
def test_fp16_streamed_frames_match_cpu_fp32_on_set14(streams: int, graphs: bool, tile: int | None) -> None:
    gpu = open_engine(RunSettings(model="default", tile=tile, batch=2, device="cuda", precision="fp16", backend="torch",
                                  streams=streams, cuda_graphs=graphs))
    cpu = open_engine(CPU_FP32)
    pairs = list(dataset_pairs(dataset("Set14"), 4))
    by_size: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    for name, lr, _ in pairs:
        by_size.setdefault(_rgb(lr).shape, []).append((name, _rgb(lr)))
    for frames in by_size.values():  # stream() takes frames of one size
        outs = list(gpu.stream([lr for _, lr in frames] * 2))
        for (name, lr), out in zip(frames * 2, outs):
            reference = cpu.upscale(Picture(lr, None, "PNG")).color
            assert psnr(out, reference) >= 40, name


def test_pictures_with_alpha_and_16_bit_on_cuda() -> None:
    gpu = open_engine(RunSettings(model="default", device="cuda", precision="fp16"))
    cpu = open_engine(CPU_FP32)
    color = photo_array("coffee.png").astype(np.uint16) * 257
    alpha = np.full(color.shape[:2], 40000, np.uint16)
    out, ref = gpu.upscale(Picture(color, alpha, "PNG")), cpu.upscale(Picture(color, alpha, "PNG"))
    assert out.color.dtype == np.uint16 and out.alpha is not None and ref.alpha is not None
    assert psnr(out.color >> 8, ref.color >> 8) >= 40 and np.abs(out.alpha.astype(int) - ref.alpha).max() <= 257
