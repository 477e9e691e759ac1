"""Foreign generators as their authors publish them: detected, checked against the reference
computation, run through `upscale image`, exported to ONNX and imported.

Each checkpoint here has random weights in a small configuration, written in the official key
layout (`torch.save` of the wrapped dict, and safetensors). The reference forwards below are
written from the published source's structure and read the tensors by their official names,
independently of the modules under test, so a wrong key mapping or a wrong layer order fails.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from upscaler.cli import app
from upscaler.models import get_architecture
from upscaler.models.errors import ModelError
from upscaler.models.weights import load_model
from upscaler.quality.metrics import psnr

from .conftest import EXAMPLES

T = dict[str, torch.Tensor]


@pytest.fixture(autouse=True)
def user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never the real user's model folder."""
    folder = tmp_path / "user-models"
    monkeypatch.setenv("UPSCALER_MODELS", str(folder))
    return folder


def conv(state: T, name: str, x: torch.Tensor) -> torch.Tensor:
    weight = state[f"{name}.weight"]
    return F.conv2d(x, weight, state[f"{name}.bias"], padding=weight.shape[-1] // 2)


def lrelu(x: torch.Tensor, slope: float = 0.2) -> torch.Tensor:
    return F.leaky_relu(x, slope)


# ---- reference forwards, from the published code's structure, on official key names ----


def rrdb_basicsr(state: T, x: torch.Tensor, scale: int) -> torch.Tensor:
    """BasicSR rrdbnet_arch.RRDBNet.forward."""
    feat = F.pixel_unshuffle(x, 4 // scale) if scale < 4 else x
    feat = conv(state, "conv_first", feat)
    body = feat
    blocks = len({k.split(".")[1] for k in state if k.startswith("body.")})
    for n in range(blocks):
        block_in = body
        for k in (1, 2, 3):
            xs = [body]
            for j in (1, 2, 3, 4):
                xs.append(lrelu(conv(state, f"body.{n}.rdb{k}.conv{j}", torch.cat(xs, 1))))
            body = conv(state, f"body.{n}.rdb{k}.conv5", torch.cat(xs, 1)) * 0.2 + body
        body = body * 0.2 + block_in
    feat = feat + conv(state, "conv_body", body)
    feat = lrelu(conv(state, "conv_up1", F.interpolate(feat, scale_factor=2, mode="nearest")))
    feat = lrelu(conv(state, "conv_up2", F.interpolate(feat, scale_factor=2, mode="nearest")))
    return conv(state, "conv_last", lrelu(conv(state, "conv_hr", feat)))


def srvgg(state: T, x: torch.Tensor, scale: int) -> torch.Tensor:
    """Real-ESRGAN srvgg_arch.SRVGGNetCompact.forward (PReLU)."""
    last = max(int(k.split(".")[1]) for k in state)
    out = x
    for i in range(0, last, 2):
        out = F.prelu(conv(state, f"body.{i}", out), state[f"body.{i + 1}.weight"])
    out = F.pixel_shuffle(conv(state, f"body.{last}", out), scale)
    return out + F.interpolate(x, scale_factor=scale, mode="nearest")


def edsr_official(state: T, x: torch.Tensor, scale: int, res_scale: float = 1.0) -> torch.Tensor:
    """EDSR-PyTorch edsr.EDSR.forward on 0..255 pixels (rgb_range 255)."""
    x = conv(state, "sub_mean", x * 255)
    x = conv(state, "head.0", x)
    blocks = max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    res = x
    for n in range(blocks):
        res = res + res_scale * conv(state, f"body.{n}.body.2", F.relu(conv(state, f"body.{n}.body.0", res)))
    res = conv(state, f"body.{blocks}", res) + x
    steps = sorted({int(k.split(".")[2]) for k in state if k.startswith("tail.0.")})
    for i in steps:
        res = F.pixel_shuffle(conv(state, f"tail.0.{i}", res), 3 if scale == 3 else 2)
    return conv(state, "add_mean", conv(state, "tail.1", res)) / 255


def msrresnet(state: T, x: torch.Tensor, scale: int) -> torch.Tensor:
    """BasicSR srresnet_arch.MSRResNet.forward."""
    feat = lrelu(conv(state, "conv_first", x), 0.1)
    blocks = len({k.split(".")[1] for k in state if k.startswith("body.")})
    for n in range(blocks):
        feat = feat + conv(state, f"body.{n}.conv2", F.relu(conv(state, f"body.{n}.conv1", feat)))
    ups = ["upconv1", "upconv2"] if scale == 4 else ["upconv1"]
    for name in ups:
        feat = lrelu(F.pixel_shuffle(conv(state, name, feat), 2 if scale == 4 else scale), 0.1)
    out = conv(state, "conv_last", lrelu(conv(state, "conv_hr", feat), 0.1))
    return out + F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


# ---- official key layouts that differ from the modules' own names ----


def to_original_esrgan(state: T) -> T:
    """xinntao/ESRGAN's flattened sequential: model.0, model.1.sub.N.RDBk.convj.0, model.1.sub.NB, 3, 6, 8, 10."""
    blocks = len({k.split(".")[1] for k in state if k.startswith("body.")})
    out: T = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "body":
            new = f"model.1.sub.{parts[1]}.RDB{parts[2][3:]}.{parts[3]}.0.{parts[4]}"
        else:
            index = {"conv_first": "model.0", "conv_body": f"model.1.sub.{blocks}", "conv_up1": "model.3",
                     "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}[parts[0]]
            new = f"{index}.{parts[1]}"
        out[new] = value
    return out


def to_bsrgan(state: T) -> T:
    """The intermediate ESRGAN layout (BSRGAN/RealSR): RRDB_trunk, trunk_conv, upconvN, HRconv."""
    names = {"body": "RRDB_trunk", "conv_body": "trunk_conv", "conv_up1": "upconv1", "conv_up2": "upconv2", "conv_hr": "HRconv"}
    out: T = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        out[f"{names.get(head, head)}.{rest}".replace(".rdb", ".RDB")] = value
    return out


def to_basicsr_edsr(state: T) -> T:
    """BasicSR edsr_arch.EDSR names; its mean is a constant, not a tensor."""
    blocks = max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    out: T = {}
    for key, value in state.items():
        p = key.split(".")
        if p[0] in ("sub_mean", "add_mean"):
            continue
        if p[0] == "head":
            new = f"conv_first.{p[2]}"
        elif p[0] == "body" and int(p[1]) == blocks:
            new = f"conv_after_body.{p[2]}"
        elif p[0] == "body":
            new = f"body.{p[1]}.conv{1 if p[3] == '0' else 2}.{p[4]}"
        elif p[1] == "0":
            new = f"upsample.{p[2]}.{p[3]}"
        else:
            new = f"conv_last.{p[2]}"
        out[new] = value
    return out


@dataclass(frozen=True)
class Case:
    id: str
    arch: str
    params: dict[str, object]
    layout: Callable[[T], T]
    reference: Callable[[T, torch.Tensor, int], torch.Tensor]

    @property
    def scale(self) -> int:
        return int(self.params.get("scale", 4))  # type: ignore[call-overload]


def same(state: T) -> T:
    return dict(state)


CASES = [
    Case("rrdb-basicsr-x4", "rrdbnet", {"scale": 4, "channels": 8, "blocks": 2, "growth": 4}, same, rrdb_basicsr),
    Case("rrdb-basicsr-x2-unshuffle", "rrdbnet", {"scale": 2, "channels": 8, "blocks": 1, "growth": 4}, same, rrdb_basicsr),
    Case("rrdb-basicsr-x1-unshuffle", "rrdbnet", {"scale": 1, "channels": 8, "blocks": 1, "growth": 4}, same, rrdb_basicsr),
    Case("rrdb-original-esrgan-x4", "rrdbnet", {"scale": 4, "channels": 8, "blocks": 2, "growth": 4}, to_original_esrgan, rrdb_basicsr),
    Case("rrdb-bsrgan-x4", "rrdbnet", {"scale": 4, "channels": 8, "blocks": 1, "growth": 6}, to_bsrgan, rrdb_basicsr),
    Case("srvgg-x4", "srvggnet_compact", {"scale": 4, "channels": 8, "blocks": 3}, same, srvgg),
    Case("srvgg-x2", "srvggnet_compact", {"scale": 2, "channels": 6, "blocks": 1}, same, srvgg),
    Case("edsr-official-x4", "edsr_reference", {"scale": 4, "channels": 8, "blocks": 2}, same, edsr_official),
    Case("edsr-official-x3", "edsr_reference", {"scale": 3, "channels": 8, "blocks": 1}, same, edsr_official),
    Case("edsr-basicsr-x2", "edsr_reference", {"scale": 2, "channels": 8, "blocks": 2}, to_basicsr_edsr, edsr_official),
    Case("msrresnet-x4", "msrresnet", {"scale": 4, "channels": 8, "blocks": 2}, same, msrresnet),
    Case("msrresnet-x3", "msrresnet", {"scale": 3, "channels": 8, "blocks": 1}, same, msrresnet),
]


def random_state(case: Case, seed: int = 0) -> T:
    """Random weights, tamed so outputs stay mid-range (an RRDB without a skip gets a grey bias)."""
    torch.manual_seed(seed)
    module = get_architecture(case.arch).build(**case.params)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    if case.arch == "rrdbnet":
        state["conv_last.bias"] += 0.5
    for key, value in state.items():
        if key.endswith(".weight") and value.dim() == 1:  # PReLU slopes: distinct, not the 0.25 they start at
            state[key] = torch.rand_like(value) * 0.3
    return state


def write_checkpoint(case: Case, folder: Path, kind: str) -> Path:
    official = case.layout(random_state(case))
    if kind == "safetensors":
        path = folder / f"{case.id}.safetensors"
        save_file({k: v.contiguous() for k, v in official.items()}, str(path))
    else:  # BasicSR's training checkpoint: params_ema is what is run, params must be ignored
        decoy = {k: torch.zeros_like(v) for k, v in official.items()}
        path = folder / f"{case.id}.pth"
        torch.save({"params": decoy, "params_ema": official}, path)
    return path


def photo_file(path: Path, width: int, height: int) -> Path:
    """A crop of a real example photo, small enough for CPU tests of deep random models."""
    with Image.open(EXAMPLES / "coffee.png") as img:
        img.convert("RGB").crop((30, 20, 30 + width, 20 + height)).save(path)
    return path


def photo_crop(width: int = 40, height: int = 30, name: str = "coffee.png") -> torch.Tensor:
    with Image.open(EXAMPLES / name) as img:
        pixels = np.asarray(img.convert("RGB"))[:height, :width]
    return torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1)[None]


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_detected_with_its_hyper_parameters_and_matches_the_reference(case: Case, kind: str, tmp_path: Path) -> None:
    path = write_checkpoint(case, tmp_path, kind)
    loaded = load_model(str(path))
    expected = get_architecture(case.arch).checked_params(case.params)
    assert loaded.descriptor.arch == case.arch and loaded.descriptor.arch_params == expected
    assert loaded.descriptor.scale == case.scale and loaded.card.scale == case.scale
    x = photo_crop(16, 12)
    state = random_state(case)
    if case.arch == "edsr_reference" and case.layout is to_basicsr_edsr:  # BasicSR has no MeanShift tensors: the constant mean
        state = {**state, **{k: v for k, v in get_architecture(case.arch).build(**case.params).state_dict().items() if "mean" in k}}
    with torch.no_grad():
        got = loaded.module(x)
        want = case.reference(state, x, case.scale)
    assert got.shape == (1, 3, 12 * case.scale, 16 * case.scale)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_descriptor_reads_size_multiple_precision_and_cost(tmp_path: Path) -> None:
    x2 = load_model(str(write_checkpoint(CASES[1], tmp_path, "pth"))).descriptor
    x1 = load_model(str(write_checkpoint(CASES[2], tmp_path, "pth"))).descriptor
    x4 = load_model(str(write_checkpoint(CASES[0], tmp_path, "pth"))).descriptor
    assert (x4.size_multiple, x2.size_multiple, x1.size_multiple) == (1, 2, 4)  # pixel-unshuffle by 2 and 4
    assert x4.supports_fp16 and x4.supports_bf16 and x4.runtime == "torch" and x4.in_channels == x4.out_channels == 3
    module = get_architecture("rrdbnet").build(**CASES[0].params)
    assert x4.parameters == sum(p.numel() for p in module.parameters())
    assert x4.sha256 == hashlib.sha256((tmp_path / f"{CASES[0].id}.pth").read_bytes()).hexdigest()
    # MACs: first conv at LR, 2 blocks x 3 RDB x 5 convs and conv_body at LR, up1 at 4 px, up2, hr, last at 16 px
    c, g = 8, 4
    rdb = sum((c + j * g) * (g if j < 4 else c) for j in range(5))
    expected = 9 * (3 * c + 2 * 3 * rdb + c * c + 4 * c * c + 16 * (c * c + c * c + c * 3))
    assert x4.macs_per_input_pixel == pytest.approx(expected)


def test_any_input_size_runs_through_an_unshuffle_model(tmp_path: Path) -> None:
    loaded = load_model(str(write_checkpoint(CASES[2], tmp_path, "pth")))  # x1: multiple of 4 natively
    with torch.no_grad():
        assert loaded.module(photo_crop(13, 11)).shape == (1, 3, 11, 13)


def test_unknown_dict_names_the_closest_architecture_and_what_differs(tmp_path: Path) -> None:
    state = random_state(CASES[0])
    del state["conv_hr.weight"], state["conv_hr.bias"]
    torch.save({"state_dict": state}, tmp_path / "odd.pth")
    with pytest.raises(ModelError) as info:
        load_model(str(tmp_path / "odd.pth"))
    message = str(info.value)
    assert "\n" not in message and "odd.pth" in message
    assert "closest: rrdbnet" in message and "missing conv_hr.bias, conv_hr.weight" in message

    state = random_state(CASES[5])
    state["body.2.weight"] = state["body.2.weight"][:, :4]  # one conv with fewer inputs than the width
    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(ModelError, match=r"closest: srvggnet_compact \(body.2.weight is \[8, 4, 3, 3\], the layers need \[8, 8, 3, 3\]\)"):
        load_model(str(tmp_path / "narrow.pth"))


def run_image(runner: CliRunner, model: str, source: Path, out: Path, *extra: str) -> np.ndarray:
    result = runner.invoke(app, ["image", str(source), "-o", str(out), "--model", model, "--device", "cpu", "--precision", "fp32", *extra])
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        return np.asarray(img.convert("RGB")).astype(np.int16)


IMAGE_CASES = [CASES[1], CASES[3], CASES[5], CASES[7], CASES[9], CASES[10]]


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[c.id for c in IMAGE_CASES])
def test_upscale_image_gives_the_right_size_and_tiles_match_the_whole(case: Case, tmp_path: Path, runner: CliRunner) -> None:
    model = write_checkpoint(case, tmp_path, "pth")
    photo = photo_file(tmp_path / "photo.png", 72, 52)  # even, so tile origins keep a x2 unshuffle model's 2x2 phase
    whole = run_image(runner, str(model), photo, tmp_path / "whole.png", "--tile", "256", "--overlap", "0")
    tiled = run_image(runner, str(model), photo, tmp_path / "tiled.png", "--tile", "32", "--overlap", "12")
    assert whole.shape == (52 * case.scale, 72 * case.scale, 3)
    assert whole.std() > 2, "the random model's output is flat; the comparison would prove nothing"
    assert np.abs(whole - tiled).max() <= 1
    odd = run_image(runner, str(model), photo_file(tmp_path / "odd.png", 45, 31), tmp_path / "odd-x.png")
    assert odd.shape == (31 * case.scale, 45 * case.scale, 3)


def export_onnx_file(module: torch.nn.Module, path: Path, example: torch.Tensor, dynamic: bool) -> None:
    axes = {"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "h", 3: "w"}} if dynamic else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), input_names=["input"], output_names=["output"],
                          opset_version=17, dynamic_axes=axes, dynamo=False)


@pytest.mark.parametrize("case,dynamic", [(CASES[1], True), (CASES[5], False), (CASES[7], True)], ids=["rrdb-x2-dynamic", "srvgg-static", "edsr-dynamic"])
def test_onnx_export_runs_on_onnxruntime_like_torch(case: Case, dynamic: bool, tmp_path: Path) -> None:
    torch_model = load_model(str(write_checkpoint(case, tmp_path, "pth")))
    export_onnx_file(torch_model.module, tmp_path / "m.onnx", torch.zeros(1, 3, 32, 32), dynamic)
    onnx_model = load_model(str(tmp_path / "m.onnx"))
    d = onnx_model.descriptor
    assert (d.runtime, d.scale, d.supports_fp16, d.supports_bf16) == ("onnxruntime", case.scale, False, False)
    assert d.size_multiple == (torch_model.descriptor.size_multiple if dynamic else 1)
    assert d.parameters == pytest.approx(torch_model.descriptor.parameters, rel=0.01)  # the exporter shares equal constants
    assert d.macs_per_input_pixel == pytest.approx(torch_model.descriptor.macs_per_input_pixel, rel=0.05)
    x = photo_crop(30, 26)  # smaller than a static 32x32 graph, and not a multiple of 4
    with torch.no_grad():
        expected, got = torch_model.module(x), onnx_model.module(x)
    assert got.shape == expected.shape
    assert psnr(255 * got.clamp(0, 1).numpy(), 255 * expected.clamp(0, 1).numpy()) >= 50


def test_uint8_nhwc_onnx_graph_is_adapted(tmp_path: Path) -> None:
    from upscaler.compile.onnx import ByteIO

    loaded = load_model(str(write_checkpoint(CASES[5], tmp_path, "pth")))
    graph = ByteIO(loaded.module, torch.float32, "nhwc")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (torch.zeros(1, 24, 24, 3, dtype=torch.uint8),), str(tmp_path / "bytes.onnx"), input_names=["lr"],
                          output_names=["sr"], opset_version=17, dynamic_axes={"lr": {1: "h", 2: "w"}, "sr": {1: "H", 2: "W"}}, dynamo=False)
    onnx_model = load_model(str(tmp_path / "bytes.onnx"))
    assert onnx_model.descriptor.arch_params["input"] == "uint8" and onnx_model.descriptor.arch_params["layout"] == "nhwc"
    x = photo_crop(20, 16)
    with torch.no_grad():
        expected = loaded.module(x).clamp(0, 1)
    assert psnr(255 * onnx_model.module(x).numpy(), 255 * expected.numpy()) >= 50  # 8-bit rounding only


def test_upscale_image_and_compile_take_an_onnx_file(tmp_path: Path, runner: CliRunner) -> None:
    from upscaler.compile.onnx import TileShape, check_onnx, run_onnxruntime

    case = CASES[1]
    model = write_checkpoint(case, tmp_path, "pth")
    export_onnx_file(load_model(str(model)).module, tmp_path / "m.onnx", torch.zeros(1, 3, 32, 32), True)
    photo = photo_file(tmp_path / "photo.png", 61, 47)
    via_onnx = run_image(runner, str(tmp_path / "m.onnx"), photo, tmp_path / "a.png", "--tile", "32", "--overlap", "8")
    via_torch = run_image(runner, str(model), photo, tmp_path / "b.png", "--tile", "32", "--overlap", "8")
    assert via_onnx.shape == (94, 122, 3) and np.abs(via_onnx - via_torch).max() <= 1

    result = runner.invoke(app, ["compile", "--model", str(tmp_path / "m.onnx"), "--tile", "32", "--overlap", "8", "--batch", "2",
                                 "-o", str(tmp_path / "engines"), "--device", "cpu"])
    assert result.exit_code == 3, result.output  # no TensorRT here: the wrapped graph is made and checked
    assert "TensorRT is not installed" in result.output and "fp32" in result.output
    (wrapped,) = (tmp_path / "engines").glob("*.onnx")
    check_onnx(wrapped, TileShape(2, 32), case.scale)  # uint8 NHWC in and out at the static tile shape
    tiles = np.stack([np.asarray(Image.open(EXAMPLES / "coffee.png").convert("RGB"))[:32, i : i + 32] for i in (0, 40)])
    got = run_onnxruntime(wrapped, np.ascontiguousarray(tiles)).astype(np.int16)
    with torch.no_grad():
        want = load_model(str(model)).module(torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255)
    want_bytes = (want.clamp(0, 1) * 255).round().permute(0, 2, 3, 1).numpy().astype(np.int16)
    assert np.abs(got - want_bytes).max() <= 1
    refused = runner.invoke(app, ["compile", "--model", str(tmp_path / "m.onnx"), "--precision", "fp16", "--tile", "32", "--overlap", "8"])
    assert refused.exit_code == 2 and "own precision (fp32)" in refused.output


def test_import_converts_lists_and_serves_by_name(tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSCALER_MODELS", str(tmp_path / "library"))
    source = tmp_path / "RealESRGAN_x2plus.pth"
    write_checkpoint(CASES[1], tmp_path, "pth").rename(source)
    result = runner.invoke(app, ["import", str(source)])
    assert result.exit_code == 0, result.output
    imported = tmp_path / "library" / "RealESRGAN_x2plus.safetensors"
    assert imported.is_file() and b"pickle" not in imported.read_bytes()[:8]
    export_onnx_file(load_model(str(source)).module, tmp_path / "any.onnx", torch.zeros(1, 3, 32, 32), True)
    assert runner.invoke(app, ["import", str(tmp_path / "any.onnx"), "--name", "graph"]).exit_code == 0

    listing = runner.invoke(app, ["models", "--json"])
    assert listing.exit_code == 0, listing.output
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["photo"]["kind"] == "built-in" and rows["photo"]["descriptor"]["arch"] == "compact"
    row = rows["RealESRGAN_x2plus"]
    assert row["kind"] == "imported" and row["arch"] == "rrdbnet" and row["scale"] == 2
    assert row["descriptor"]["size_multiple"] == 2 and row["descriptor"]["sha256"] == hashlib.sha256(imported.read_bytes()).hexdigest()
    assert row["provenance"]["file"] == source.name and row["provenance"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert "BSD-3-Clause" in row["provenance"]["licence"]
    assert rows["graph"]["descriptor"]["runtime"] == "onnxruntime" and rows["graph"]["provenance"]["file"] == "any.onnx"

    photo = photo_file(tmp_path / "photo.png", 40, 30)
    a = run_image(runner, "RealESRGAN_x2plus", photo, tmp_path / "a.png", "--tile", "32", "--overlap", "8")
    b = run_image(runner, str(source), photo, tmp_path / "b.png", "--tile", "32", "--overlap", "8")
    assert a.shape == (60, 80, 3) and np.array_equal(a, b)

    again = runner.invoke(app, ["import", str(source)])
    assert again.exit_code == 2 and "already imported" in again.output
    for taken in ("default", "photo", "clean", "bicubic"):
        builtin = runner.invoke(app, ["import", str(source), "--name", taken])
        assert builtin.exit_code == 2 and "built-in" in builtin.output, taken


def test_user_model_folder_follows_the_platform_convention(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from upscaler.models.weights import user_models_dir

    monkeypatch.delenv("UPSCALER_MODELS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    if sys.platform.startswith("linux"):
        assert user_models_dir() == tmp_path / "data" / "upscaler" / "models"
    monkeypatch.setenv("UPSCALER_MODELS", str(tmp_path / "mine"))
    assert user_models_dir() == tmp_path / "mine"


def test_float16_onnx_graph_runs_and_compiles_at_its_own_precision(tmp_path: Path, runner: CliRunner) -> None:
    from upscaler.compile.onnx import TileShape, check_onnx

    loaded = load_model(str(write_checkpoint(CASES[5], tmp_path, "pth")))
    half = get_architecture("srvggnet_compact").build(**CASES[5].params)
    half.load_state_dict(loaded.module.state_dict())
    export_onnx_file(half.half(), tmp_path / "half.onnx", torch.zeros(1, 3, 16, 16, dtype=torch.half), True)
    onnx_model = load_model(str(tmp_path / "half.onnx"))
    assert onnx_model.descriptor.arch_params["input"] == "float16"
    x = photo_crop(20, 16)
    with torch.no_grad():
        expected = loaded.module(x).clamp(0, 1)
    assert psnr(255 * onnx_model.module(x).clamp(0, 1).numpy(), 255 * expected.numpy()) >= 50
    result = runner.invoke(app, ["compile", "--model", str(tmp_path / "half.onnx"), "--tile", "32", "--overlap", "8", "--batch", "1",
                                 "-o", str(tmp_path / "engines"), "--device", "cpu"])
    assert result.exit_code == 3, result.output
    (wrapped,) = (tmp_path / "engines").glob("*-fp16.onnx")
    check_onnx(wrapped, TileShape(1, 32), 4)
