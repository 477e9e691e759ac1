"""The frame engine on a real GPU (skipped where there is none, as in CI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upscaler.engine.engine import open_engine
from upscaler.engine.settings import RunSettings
from upscaler.io.files import Job
from upscaler.io.images import Picture, read_picture
from upscaler.jobs.pictures import run_jobs
from upscaler.models.weights import LoadedModel, load_model
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


def test_dir_keeps_pictures_in_flight_across_picture_boundaries(tmp_path: Path) -> None:
    """`upscale dir`'s runner on CUDA: pictures of different sizes, modes and formats launched `depth` ahead, each
    written as the CPU in fp32 writes it (RGB as RGBX buffers for JPEG, alpha, gray)."""
    gpu = open_engine(RunSettings(model="default", device="cuda", precision="fp16", streams=3))
    cpu = open_engine(CPU_FP32)
    assert gpu.depth == 2
    sources = []
    for i, name in enumerate(["chelsea.png", "coffee.png", "astronaut.png"] * 2):
        image = Image.fromarray(photo_array(name))
        image = [image, image.convert("L"), image.convert("RGBA")][i % 3]
        sources.append(tmp_path / f"{i}-{name}")
        image.save(sources[-1], format="PNG")
    jobs = [Job(s, tmp_path / "out" / f"{s.stem}.{'jpg' if i % 3 == 0 else 'png'}", "JPEG" if i % 3 == 0 else "PNG")
            for i, s in enumerate(sources)]
    outcomes = list(run_jobs(jobs, gpu.launch, depth=gpu.depth))
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    for job in jobs:
        written = np.asarray(Image.open(job.target))
        reference = cpu.upscale(read_picture(job.source), job.format)
        expected = reference.color if reference.alpha is None else np.dstack([reference.color, reference.alpha])
        assert psnr(written, expected) >= (30 if job.format == "JPEG" else 40), job.source.name


class _OverflowsInFp16(torch.nn.Module):
    """The built-in model with an intermediate above fp16's range wherever its output passes 0.65: fine in fp32."""

    def __init__(self, good: torch.nn.Module) -> None:
        super().__init__()
        self.good = good

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.good(x) * 1e5) / 1e5


@pytest.mark.parametrize("graphs", [False, True])
def test_frames_and_pictures_fp16_got_wrong_are_redone_in_fp32(graphs: bool) -> None:
    """The deferred check's verdict comes back with the frame; such frames are redone tile by tile in fp32
    (on an engine stream: a CUDA graph cannot be captured on the default one)."""
    default = load_model("default")
    overflowing = LoadedModel(default.card, _OverflowsInFp16(default.module).eval(), "overflows-in-fp16")
    gpu = open_engine(RunSettings(model="default", device="cuda", precision="fp16", backend="torch", streams=2,
                                  cuda_graphs=graphs), overflowing)
    cpu = open_engine(CPU_FP32, default)
    bright = np.clip(photo_array("chelsea.png").astype(int) + 120, 0, 255).astype(np.uint8)
    reference = cpu.upscale(Picture(bright, None, "PNG")).color
    assert psnr(gpu.upscale(Picture(bright, None, "PNG")).color, reference) >= 40
    for out in gpu.stream([bright, bright, bright]):
        assert psnr(out, reference) >= 40
