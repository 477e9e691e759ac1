"""The CUDA stream pipeline on a real GPU (skipped where there is none, as in CI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from upscaler.engine.backends import RunSettings, open_upscaler
from upscaler.quality.evaluate import dataset_pairs
from upscaler.io.images import Picture
from upscaler.quality.metrics import psnr

from .conftest import dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _run(settings: RunSettings, lr: np.ndarray) -> np.ndarray:
    upscale, _, _ = open_upscaler(settings)
    out = upscale(Picture(lr.astype(np.float32) / 255, None, 8, "PNG")).color
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


@pytest.mark.parametrize(("streams", "graphs"), [(1, False), (4, False), (2, True)])
def test_fp16_streams_match_cpu_fp32_on_set14(streams: int, graphs: bool) -> None:
    gpu = RunSettings(model="default", tile=128, batch=2, device="cuda", precision="fp16", backend="torch",
                      streams=streams, cuda_graphs=graphs)
    cpu = RunSettings(model="default", tile=128, batch=2, device="cpu", precision="fp32")
    for name, lr, _ in dataset_pairs(dataset("Set14"), 4):
        assert psnr(_run(gpu, lr), _run(cpu, lr)) >= 40, name
