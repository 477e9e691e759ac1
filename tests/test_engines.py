"""Engines: ONNX parity, the engine cache, backend choice, precision fallback, OOM, typing."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from upscaler.cli import app
from upscaler.compile.compiler import CompileRequest, compile_model, probe_batch
from upscaler.compile.onnx import ByteIO, TileShape, check_onnx, export_onnx, run_onnxruntime
from upscaler.compile.trt.cache import EngineCache, EngineKey
from upscaler.engine.backends import TorchRunner, open_runner
from upscaler.engine.devices import cpu_has_native_bf16
from upscaler.engine.frames import FrameError, ModelRunner, _untrustworthy
from upscaler.engine.plan import plan_run
from upscaler.engine.settings import RunSettings
from upscaler.models import get_architecture
from upscaler.models.weights import load_model
from upscaler.quality.metrics import psnr

from .conftest import ROOT, photo_array


@pytest.mark.parametrize(("precision", "layout", "floor"), [("fp32", "nhwc", 50.0), ("fp16", "nhwc", 40.0), ("fp16", "nchw", 40.0)])
def test_onnx_graph_matches_torch_fp32_on_photos(tmp_path: Path, precision: str, layout: str, floor: float) -> None:
    loaded = load_model("default")
    shape = TileShape(batch=2, tile=64, layout=layout)
    path = tmp_path / "model.onnx"
    export_onnx(loaded.module, shape, precision, path)
    check_onnx(path, shape, 4)
    reference = ByteIO(loaded.module, torch.float32, layout).eval()
    for photo in ("astronaut.png", "coffee.png"):
        tiles = probe_batch(shape, photo_array(photo))
        with torch.no_grad():
            expected = reference(torch.from_numpy(tiles)).numpy()
        got = run_onnxruntime(path, tiles)
        assert got.dtype == np.uint8 and got.shape == shape.output_shape(4)
        assert psnr(got, expected) >= floor, f"{precision} {layout} on {photo}"


def test_fp16_lives_in_the_graph(tmp_path: Path) -> None:
    import onnx

    loaded = load_model("default")
    export_onnx(loaded.module, TileShape(1, 32), "fp16", tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    weights = [t for t in graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)


def _key(**changes: object) -> EngineKey:
    fields: dict[str, object] = {
        "model_digest": "a" * 64, "model_name": "default", "tile": 256, "batch": 4, "layout": "nhwc", "precision": "fp16",
        "tensorrt_version": "10.13.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
        "workspace_mib": 4096, "optimization_level": 3,
    }
    fields.update(changes)
    return EngineKey(**fields)  # type: ignore[arg-type]


def test_every_field_of_the_key_changes_the_engine_file() -> None:
    base = _key()
    variants = [_key(model_digest="b" * 64), _key(tile=192), _key(batch=2), _key(layout="nchw"), _key(precision="fp32"),
                _key(tensorrt_version="11.0.0"), _key(gpu_name="NVIDIA H200"), _key(compute_capability="8.9"),
                _key(workspace_mib=1024), _key(optimization_level=5)]
    stems = {base.stem, *(v.stem for v in variants)}
    assert len(stems) == 1 + len(variants)
    assert base.onnx_stem == _key(tensorrt_version="11.0.0", gpu_name="other").onnx_stem


def test_cache_round_trip_mismatch_and_refusals(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    plan = cache.store(_key(), b"serialized plan bytes")
    assert cache.lookup(_key()) == plan.resolve()
    assert cache.lookup(_key(tensorrt_version="11.0.0")) is None  # mismatch: the caller rebuilds
    assert cache.lookup(_key(optimization_level=0)) is None  # a plan built at level 3 never serves level 0
    assert cache.read_plan(plan) == b"serialized plan bytes"
    stray = tmp_path / "downloaded.plan"
    stray.write_bytes(b"serialized plan bytes")
    with pytest.raises(ValueError, match="not a plan from the engine cache"):
        cache.read_plan(stray)
    plan.write_bytes(b"tampered")
    with pytest.raises(ValueError, match="changed since it was built"):
        cache.read_plan(plan)
    assert cache.lookup(_key()) is None  # a changed plan is rebuilt, never loaded


def test_compile_without_tensorrt_exports_checks_and_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["compile", "--tile", "32", "--batch", "1", "--overlap", "8", "--out", str(tmp_path)])
    assert result.exit_code == 3
    assert "needs the `tensorrt` extra" in result.output and "pip install -e '.[tensorrt]'" in result.output
    onnx_files = list(tmp_path.glob("*.onnx"))
    assert len(onnx_files) == 1 and "-t32-b1-nhwc-fp16" in onnx_files[0].name
    assert "onnx parity" in result.output
    assert not list(tmp_path.glob("*.plan"))


def test_compile_model_reports_parity(tmp_path: Path) -> None:
    request = CompileRequest(TileShape(1, 48), "fp32", tmp_path)
    result = compile_model(load_model("default"), request, torch.device("cpu"), photo_array())
    assert result.plan is None and result.onnx.is_file()
    assert result.onnx_psnr is not None and result.onnx_psnr >= 50


def test_run_plan_on_cpu() -> None:
    loaded = load_model("default")
    fp32 = plan_run(RunSettings(model="default", device="cpu", precision="fp32"), loaded)
    assert (fp32.backend, fp32.dtype, fp32.describe()) == ("torch", torch.float32, "torch cpu fp32, auto tiles")
    auto = plan_run(RunSettings(model="default", device="cpu"), loaded)
    assert auto.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert open_runner(plan_run(RunSettings(model="default", device="cpu", precision="bf16"), loaded), loaded).fallback
    assert open_runner(fp32, loaded).fallback is None
    bad_settings = ({"backend": "tensorrt"}, {"precision": "fp16"}, {"backend": "cuda-magic"}, {"cuda_graphs": True},
                    {"tile": 32, "overlap": 16})
    for bad in bad_settings:
        with pytest.raises(ValueError):
            plan_run(RunSettings(model="default", device="cpu", **bad), loaded)  # type: ignore[arg-type]


def test_untrustworthy_tiles_are_found() -> None:
    inputs = torch.rand(4, 3, 8, 8)
    outputs = torch.rand(4, 3, 32, 32)
    outputs[1, 0, 3, 3] = float("nan")
    outputs[2] = 0.0  # collapsed to black while the input is textured
    inputs[3] = 0.5
    outputs[3] = 0.5  # flat in, flat out: fine
    assert _untrustworthy(inputs, outputs, reduced=True).nonzero().flatten().tolist() == [1, 2]
    assert _untrustworthy(inputs, outputs, reduced=False).nonzero().flatten().tolist() == [1]


class _OverflowsOnBrightTiles(nn.Module):
    """Behaves like a reduced-precision model that overflows on bright tiles."""

    def __init__(self, good: nn.Module) -> None:
        super().__init__()
        self.good = good

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.good(x)
        bright = x.flatten(1).float().mean(dim=1) > 0.6
        return torch.where(bright[:, None, None, None], torch.full_like(y, float("inf")), y)


def test_bad_reduced_precision_tiles_are_recomputed_by_a_real_fp32_model(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    good = get_architecture("compact").build(channels=8, blocks=1).eval()
    cpu = torch.device("cpu")
    built: list[TorchRunner] = []

    def fp32() -> TorchRunner:
        built.append(TorchRunner(good, cpu, torch.float32))
        return built[-1]

    runner = ModelRunner(TorchRunner(_OverflowsOnBrightTiles(good), cpu, torch.bfloat16), torch.bfloat16, fp32)
    tiles = torch.rand(3, 3, 16, 16) * 0.5
    tiles[1] = 0.9  # one bright tile
    out = runner(tiles)
    assert torch.isfinite(out).all() and "recomputed in fp32" in caplog.text
    assert all(p.dtype == torch.float32 for p in built[0].forward.parameters())  # type: ignore[union-attr]
    with torch.no_grad():
        torch.testing.assert_close(out[1], good(tiles[1:2])[0])
    assert all(p.dtype == torch.float32 for p in good.parameters())  # the loaded model was never converted


class _MemoryLimited(nn.Module):
    """A model on a device that runs out of memory above two tiles per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=4, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.up(x)


def test_out_of_memory_lowers_the_batch_and_retries(caplog: pytest.LogCaptureFixture) -> None:
    runner = TorchRunner(_MemoryLimited(), torch.device("cpu"), torch.float32)
    tiles = torch.rand(8, 3, 8, 8)
    out = runner(tiles)
    torch.testing.assert_close(out, nn.functional.interpolate(tiles, scale_factor=4, mode="nearest"))
    assert runner.chunk == 2 and "retrying with" in caplog.text


def _stubs_folder(tmp_path: Path) -> Path:
    """tensorrt-stubs, copied where mypy reads them, with their few unparsable signatures loosened."""
    import ast

    for root in site.getsitepackages():
        source = Path(root)
        if (source / "tensorrt_stubs").is_dir() and (source / "tensorrt_bindings" / "tensorrt.pyi").is_file():
            break
    else:
        pytest.fail("tensorrt-stubs are not installed: pip install --no-deps tensorrt-stubs")
    target = tmp_path / "stubs"
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(source / package, target / package, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    stub = target / "tensorrt_bindings" / "tensorrt.pyi"
    lines = stub.read_text().split("\n")
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith("def "):
            try:
                ast.parse(text + "\n    ...")
            except SyntaxError:  # e.g. a parameter named `in` in plugin APIs this project never calls
                indent = line[: len(line) - len(line.lstrip())]
                lines[i] = f"{indent}def {text[4:text.index('(')]}(self, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:"
    stub.write_text("import typing\n" + "\n".join(lines))
    return target


def test_tensorrt_modules_pass_mypy_strict_against_the_stubs(tmp_path: Path) -> None:
    stubs = _stubs_folder(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental", "upscaler/compile/trt/", "upscaler/engine/tensorrt.py"],
        cwd=ROOT, capture_output=True, text=True, check=False, env={"MYPYPATH": str(stubs), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_batch_norm_folding_is_exact_and_leaves_the_loaded_model_alone() -> None:
    from upscaler.engine.prepare import fold_batch_norm

    torch.manual_seed(5)
    module = get_architecture("srresnet").build(blocks=2, channels=16).eval()
    for norm in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 1.5)
    runner = TorchRunner(module, torch.device("cpu"), torch.float32)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in runner.forward.modules())  # type: ignore[union-attr]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in module.modules()) == 5
    x = torch.from_numpy(photo_array("chelsea.png")[:32, :32].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        torch.testing.assert_close(runner(x), module(x), atol=2e-5, rtol=1e-4)
    assert fold_batch_norm(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1)))[0].__class__ is nn.BatchNorm2d


def test_exported_graphs_flag_bad_tiles_before_quantising(tmp_path: Path) -> None:
    """The engine sees only bytes; the graph's `bad` output tells it which tiles to recompute in fp32."""
    shape = TileShape(batch=3, tile=16)
    export_onnx(_OverflowsOnBrightTiles(nn.Upsample(scale_factor=4)), shape, "fp32", tmp_path / "m.onnx")
    check_onnx(tmp_path / "m.onnx", shape, 4)
    import onnxruntime

    tiles = np.full(shape.input_shape(), 60, np.uint8)
    tiles[1] = 250  # bright: overflows
    tiles[2, ::2] = 200  # textured
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    pixels, bad = session.run(["sr", "bad"], {"lr": tiles})
    assert bad.tolist() == [0, 1, 0] and pixels.shape == shape.output_shape(4)


def test_deferred_checks_never_ask_the_host_and_report_per_frame() -> None:
    """Streamed on CUDA the verdict stays on the device until the frame is collected."""
    good = nn.Upsample(scale_factor=4)
    runner = ModelRunner(TorchRunner(_OverflowsOnBrightTiles(good), torch.device("cpu"), torch.float32), torch.float32,
                         None, deferred=True)
    calm = torch.rand(2, 3, 8, 8) * 0.5
    assert runner.take_verdict() is None
    runner(calm)
    assert runner.take_verdict().item() is False  # type: ignore[union-attr]
    bright = calm.clone()
    bright[1] = 0.9
    runner(calm)
    out = runner(bright)  # no exception: the caller decides after the frame
    assert not torch.isfinite(out).all() and runner.take_verdict().item() is True  # type: ignore[union-attr]
    with pytest.raises(FrameError):
        runner.checked()(bright)


_IMAGES_FAULTS = """
import resource, sys, torch
from upscaler.engine.devices import keep_freed_heap
if sys.argv[1] == "kept":
    assert keep_freed_heap(512 << 20)
def image():  # activations of a few tens of MB, each layer's output replacing the last
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(3, 500, 480)
    x = torch.nn.functional.interpolate(x[None], size=(2000, 1920))[0]
    for _ in range(4):
        x = x.add(1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(*[image() for _ in range(6)])
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_the_next_image_reuses_the_heap_instead_of_faulting_it_in_again() -> None:
    """46 MB activations: glibc alone maps and unmaps each (over its adaptive limit), so every image faults them in again;
    kept, the heap grows to the image's peak once (over the first one to three images, as the threads' allocation order
    falls) and the images after that fault nothing. The last three of six are checked, and one of them must fault
    nothing: under load the heap sometimes settles one image later, or one tensor of a later image is mapped anew
    (seen once in a full suite run: 11,250 pages, exactly one activation), and neither is the bug this test is about;
    without the setting no image ever faults nothing."""
    def faults(mode: str) -> list[int]:
        run = subprocess.run([sys.executable, "-c", _IMAGES_FAULTS, mode], capture_output=True, text=True, check=True)
        return [int(n) for n in run.stdout.split()]

    plain, kept = faults("plain"), faults("kept")
    page_count = 3 * 2000 * 1920 * 4 // 4096
    assert min(plain[1:]) > page_count  # every image faults its activations in again
    assert min(kept[3:]) < page_count // 20, kept


_POLICY_PROBE = """
import atexit, os, sys
import upscaler.__main__ as entry
assert "torch" not in sys.modules  # so main() runs before torch (and its OpenMP runtime) loads
atexit.register(lambda: print("policy", os.environ.get("OMP_WAIT_POLICY")))
sys.argv = ["upscale", *sys.argv[1:]]
entry.main()
"""


@pytest.mark.parametrize(("command", "given", "expected"), [
    (["dir", "--help"], None, "PASSIVE"), (["pipe", "--help"], None, "PASSIVE"), (["dir", "--help"], "ACTIVE", "ACTIVE"),
    (["models"], None, "None"), (["--help"], None, "None"),
])
def test_commands_with_io_beside_the_model_let_idle_openmp_threads_sleep(command: list[str], given: str | None,
                                                                         expected: str) -> None:
    """Spinning OpenMP threads would hold the cores the decoders and encoders need (benchmarks/RESULTS.md); the
    user's own setting wins, and commands with nothing beside the model keep libgomp's default."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | ({"OMP_WAIT_POLICY": given} if given else {})
    run = subprocess.run([sys.executable, "-c", _POLICY_PROBE, *command], capture_output=True, text=True, env=env,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == f"policy {expected}"


@pytest.mark.parametrize("size", ["10x", "abc", "64x48x3", "0x5"])
def test_bench_size_that_is_not_width_by_height_is_one_usage_line(size: str) -> None:
    result = CliRunner().invoke(app, ["bench", "--size", size, "--frames", "1", "--warmup", "0"])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: --size {size}: give the frame size as WIDTHxHEIGHT, e.g. 960x540"


def test_a_manifest_entry_from_before_the_build_settings_joined_the_key_is_never_served(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    plan = cache.store(_key(), b"plan bytes")
    manifest = json.loads((cache.folder / "manifest.json").read_text())
    for entry in manifest["engines"]:
        del entry["key"]["optimization_level"], entry["key"]["workspace_mib"]
    (cache.folder / "manifest.json").write_text(json.dumps(manifest))
    assert cache.entries() == [] and cache.lookup(_key()) is None and plan.is_file()
