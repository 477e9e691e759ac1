"""The run plan, number by number: memory budgets into tile limits, grids, precision, and every refusal."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from upscaler.engine import plan as plan_module
from upscaler.engine.devices import resolve_precision
from upscaler.engine.plan import STATIC_PHOTO_TILE, RunPlan, TilePlan, plan_run, working_bytes_per_pixel
from upscaler.engine.settings import RunSettings
from upscaler.engine.tiling import even_grid, fixed_grid
from upscaler.models.weights import LoadedModel

from .conftest import in_memory_model


def _x2() -> nn.Module:
    """Widest activation on a 32x32 probe: 12 x 32 x 32 = 12 elements per input pixel."""
    return nn.Sequential(nn.Conv2d(3, 12, 1), nn.PixelShuffle(2))


def _model(module: nn.Module | None = None, scale: int = 2, multiple: int = 1) -> LoadedModel:
    loaded = in_memory_model(module if module is not None else _x2(), scale=scale)
    loaded.descriptor.size_multiple = multiple
    return loaded


def test_working_bytes_follow_the_widest_layer_and_the_dtype() -> None:
    module = _x2()
    # 12 elements x 4 bytes x 3 alive at once, plus the output's 2 x 2 x 3 float32 values
    assert working_bytes_per_pixel(module, 2, torch.float32) == 12 * 4 * 3 + 2 * 2 * 3 * 4
    assert working_bytes_per_pixel(module, 2, torch.bfloat16) == 12 * 2 * 3 + 2 * 2 * 3 * 4
    assert working_bytes_per_pixel(nn.Upsample(scale_factor=4), 4, torch.float32) == 3 * 4 * 3 + 4 * 4 * 3 * 4
    wide = nn.Sequential(nn.Conv2d(3, 40, 3, padding=1), nn.Conv2d(40, 3, 3, padding=1))
    assert working_bytes_per_pixel(wide, 1, torch.float32) == 40 * 4 * 3 + 3 * 4
    assert not any(m._forward_hooks for m in wide.modules())


def test_the_memory_budget_becomes_tile_and_band_limits() -> None:
    settings = RunSettings(model="m", device="cpu", precision="fp32", memory_budget_mib=16, batch=3, streams=5,
                           engines=Path("somewhere"))
    plan = plan_run(settings, _model(multiple=2))
    per_pixel = 12 * 4 * 3 + 2 * 2 * 3 * 4
    assert plan.tiles == TilePlan(tile=None, overlap=24, max_tile_pixels=(16 << 20) // 2 // per_pixel,
                                  max_band_pixels=(16 << 20) // 2 // (2 * 2 * 6 * 4), static_shape=False,
                                  reshapeable=True, multiple=2)
    assert (plan.device, plan.dtype, plan.backend, plan.batch, plan.streams) == (torch.device("cpu"), torch.float32, "torch", 3, 5)
    assert (plan.scale, plan.out_scale, plan.engines, plan.cuda_graphs, plan.compile) == (2, 2, Path("somewhere"), False, False)
    tiny = plan_run(dataclasses.replace(settings, memory_budget_mib=1, scale=4, tile=64, overlap=8), _model())
    assert (tiny.tiles.max_tile_pixels, tiny.tiles.max_band_pixels) == (64 * 64, (1 << 20) // 2 // 96)
    assert (tiny.tiles.tile, tiny.tiles.overlap, tiny.out_scale) == (64, 8, 4)
    floor = plan_run(dataclasses.replace(settings, memory_budget_mib=1), _model(scale=8))
    assert floor.tiles.max_band_pixels == 64 * 64


@pytest.mark.parametrize(("free", "budget"), [(1 << 30, 256 << 20), (4 << 30, 512 << 20)])
def test_the_default_cpu_budget_is_a_quarter_of_free_memory_capped(monkeypatch: pytest.MonkeyPatch, free: int, budget: int) -> None:
    monkeypatch.setattr(plan_module, "available_memory", lambda device: free)
    plan = plan_run(RunSettings(model="m", device="cpu", precision="fp32"), _model())
    assert plan.tiles.max_tile_pixels == budget // 2 // (12 * 4 * 3 + 48)
    assert isinstance(plan.tiles.max_tile_pixels, int) and isinstance(plan.tiles.max_band_pixels, int)
    gpu_budget = plan_module._default_budget(torch.device("cuda"))
    assert gpu_budget == free // 2 and isinstance(gpu_budget, int)  # a GPU: half its free memory


@pytest.mark.parametrize(("changes", "message"), [
    ({"backend": "onnx"}, "--backend 'onnx': use auto, tensorrt or torch"),
    ({"backend": "tensorrt"}, "--backend tensorrt needs a CUDA device"),
    ({"precision": "fp16"}, "--precision fp16 needs a CUDA device; on CPU use fp32 or bf16"),
    ({"cuda_graphs": True}, "--cuda-graphs and --compile need a CUDA device"),
    ({"compile": True}, "--cuda-graphs and --compile need a CUDA device"),
    ({"tile": 32, "overlap": 16}, "overlap 16 must be at least 0 and under half the tile"),
])
def test_what_cannot_run_here_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        plan_run(dataclasses.replace(RunSettings(model="m", device="cpu"), **changes), _model())


def test_precision_is_the_requested_or_the_fastest_supported() -> None:
    cpu = torch.device("cpu")
    auto = plan_run(RunSettings(model="m", device="cpu"), _model())
    assert auto.dtype == resolve_precision("auto", cpu)
    assert plan_run(RunSettings(model="m", device="cpu", precision="bf16"), _model()).dtype == torch.bfloat16
    no_bf16 = _model()
    no_bf16.descriptor.supports_bf16 = False
    assert plan_run(RunSettings(model="m", device="cpu", precision="auto"), no_bf16).dtype == torch.float32
    with pytest.raises(ValueError, match=r"^memory: this model does not support --precision bf16 \(its outputs overflow"):
        plan_run(RunSettings(model="m", device="cpu", precision="bf16"), no_bf16)


def test_onnx_models_run_on_the_cpu() -> None:
    model = _model()
    model.descriptor.runtime = "onnxruntime"
    assert plan_run(RunSettings(model="m"), model).device == torch.device("cpu")
    with pytest.raises(ValueError):
        plan_run(RunSettings(model="m", device="cuda"), model)


def test_tile_plans_make_their_grids() -> None:
    auto = TilePlan(tile=None, overlap=8, max_tile_pixels=5000, max_band_pixels=4000, static_shape=False, multiple=2)
    assert auto.grid(150, 130) == even_grid(150, 130, 5000, 8, 2, 4000)
    assert auto.grid(150, 130).tile_w == 130  # the band limit splits rows, not columns
    fixed = dataclasses.replace(auto, tile=64)
    assert fixed.grid(51, 131) == fixed_grid(51, 131, 64, 8, fit=True, multiple=2)
    assert (fixed.grid(51, 131).height, fixed.grid(51, 131).width) == (52, 132)  # odd sizes padded to the multiple
    static = dataclasses.replace(auto, static_shape=True)
    assert static.grid(51, 131) == fixed_grid(51, 131, STATIC_PHOTO_TILE, 8, fit=False, multiple=2)
    assert static.grid(50, 130).tile_h == 512
    assert dataclasses.replace(static, tile=62).grid(51, 131) == fixed_grid(51, 131, 62, 8, fit=False, multiple=2)
    # a stream of equal frames: auto tiles become one even split, unless the engine cannot take new shapes cheaply
    assert static.for_frames() == auto
    frozen = dataclasses.replace(static, reshapeable=False)
    assert frozen.for_frames() is frozen
    sized = dataclasses.replace(static, tile=64)
    assert sized.for_frames() is sized


def test_the_plan_describes_itself() -> None:
    tiles = TilePlan(tile=None, overlap=8, max_tile_pixels=1, max_band_pixels=1, static_shape=False)
    base = RunPlan(torch.device("cpu"), torch.float32, "torch", tiles, 4, 2, False, False, 4, 4, Path("e"))
    assert base.describe() == "torch cpu fp32, auto tiles"
    assert base.precision == "fp32"
    gpu = dataclasses.replace(base, device=torch.device("cuda"), dtype=torch.float16, backend="tensorrt", cuda_graphs=True,
                              compile=True, tiles=dataclasses.replace(tiles, tile=256))
    assert gpu.describe() == "tensorrt cuda fp16, 2 stream(s), CUDA graphs, torch.compile, 256px tiles"
    assert dataclasses.replace(base, dtype=torch.bfloat16).describe() == "torch cpu bf16, auto tiles"


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """Plan as on a CUDA machine (only the plan's own decisions run: no kernel is launched)."""

    def machine(tensorrt: bool) -> None:
        monkeypatch.setattr(plan_module, "resolve_device", lambda spec: torch.device("cpu" if spec == "cpu" else "cuda"))
        monkeypatch.setattr(plan_module, "tensorrt_available", lambda: tensorrt)

    return machine


def _gpu_plan(**changes: Any) -> RunPlan:
    return plan_run(RunSettings(model="m", device="cuda", memory_budget_mib=16, **changes), _model())


def test_a_gpu_with_tensorrt_gets_static_tensorrt_engines(gpu: Callable[[bool], None]) -> None:
    gpu(True)
    plan = _gpu_plan()
    assert (plan.device.type, plan.dtype, plan.backend) == ("cuda", torch.float16, "tensorrt")
    assert plan.tiles.static_shape and not plan.tiles.reshapeable
    assert _gpu_plan(precision="fp32").backend == "tensorrt"
    torch_plan = _gpu_plan(backend="torch")
    assert torch_plan.backend == "torch" and not torch_plan.tiles.static_shape and torch_plan.tiles.reshapeable
    graphs = _gpu_plan(backend="torch", cuda_graphs=True)
    assert graphs.tiles.static_shape and graphs.tiles.reshapeable
    assert _gpu_plan(precision="bf16").backend == "torch"  # TensorRT engines here are fp16 or fp32
    with pytest.raises(ValueError, match="^--backend tensorrt runs fp16 or fp32 engines; bf16 is a torch-only precision$"):
        _gpu_plan(precision="bf16", backend="tensorrt")


def test_a_gpu_without_tensorrt_runs_torch(gpu: Callable[[bool], None]) -> None:
    gpu(False)
    plan = _gpu_plan()
    assert (plan.backend, plan.dtype, plan.tiles.static_shape) == ("torch", torch.float16, False)
    with pytest.raises(ValueError, match=r"^--backend tensorrt: TensorRT is not installed \(install this project's tensorrt extra, pip install -e '\.\[tensorrt\]', "
                                         r"on an NVIDIA machine\)$"):
        _gpu_plan(backend="tensorrt")


def test_onnx_models_stay_on_the_cpu_of_a_gpu_machine(gpu: Callable[[bool], None]) -> None:
    gpu(True)
    model = _model()
    model.descriptor.runtime = "onnxruntime"
    plan = plan_run(RunSettings(model="m", precision="fp32", memory_budget_mib=16), model)
    assert (plan.device.type, plan.backend) == ("cpu", "torch")
    assert plan_run(RunSettings(model="m", device="cpu", precision="fp32", memory_budget_mib=16), model).device.type == "cpu"
    with pytest.raises(ValueError, match="^memory: ONNX models run on onnxruntime on the CPU here; `upscale compile --model` "
                                         "builds a TensorRT engine from them for the GPU$"):
        plan_run(RunSettings(model="m", device="cuda", memory_budget_mib=16), model)
    assert _gpu_plan().device.type == "cuda"  # a torch model does use the GPU
