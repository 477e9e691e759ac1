"""ncnn models (.param + .bin) as upscayl keeps them: read, checked against ncnn's own CPU output, imported, refused.

The files are written here from torch modules with random weights, in ncnn's format as its
ONNX converter lays it out (Split layers where a blob feeds several, fused LeakyReLU, Eltwise
sums with coefficients), by a writer independent of the reader under test.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from upscaler.cli import app
from upscaler.models import get_architecture
from upscaler.models.errors import ModelError
from upscaler.models.weights import load_model

FP16 = 0x01306B47


@pytest.fixture(autouse=True)
def user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "user-models"
    monkeypatch.setenv("UPSCALER_MODELS", str(folder))
    return folder


class Writer:
    """Layers with logical blob names; Splits are inserted where a blob has several readers, as ncnn wants."""

    def __init__(self, half: bool) -> None:
        self.half, self.layers, self.weights, self.count = half, [("Input", "data", [], ["data"], "")], bytearray(), 0

    def layer(self, kind: str, inputs: list[str], params: str = "") -> str:
        self.count += 1
        out = "output" if kind == "OUT" else f"b{self.count}"
        self.layers.append((kind, f"{kind.lower()}_{self.count}", inputs, [out], params))
        return out

    def conv(self, x: str, conv: torch.nn.Conv2d, leaky: bool = False) -> str:
        weight = conv.weight.detach()
        act = " 9=2 -23310=1,2.000000e-01" if leaky else ""
        out = self.layer("Convolution", [x], f"0={weight.shape[0]} 1=3 4=1 5=1 6={weight.numel()}{act}")
        if self.half:
            self.weights += struct.pack("<I", FP16) + weight.numpy().astype("<f2").tobytes()
            self.weights += bytes(-len(self.weights) % 4)
        else:
            self.weights += bytes(4) + weight.numpy().astype("<f4").tobytes()
        self.weights += conv.bias.detach().numpy().astype("<f4").tobytes()
        return out

    def save(self, param: Path, output: str) -> Path:
        layers = [(k, n, i, ["output" if o == [output] else o[0]][:1], p) for k, n, i, o, p in self.layers]
        layers = [(k, n, [("output" if b == output else b) for b in i], o, p) for k, n, i, o, p in layers]
        readers: dict[str, int] = {}
        for _, _, inputs, _, _ in layers:
            for blob in inputs:
                readers[blob] = readers.get(blob, 0) + 1
        lines, seen = [], dict.fromkeys(readers, 0)
        for kind, name, inputs, outputs, params in layers:
            renamed = []
            for blob in inputs:
                renamed.append(f"{blob}_s{seen[blob]}" if readers[blob] > 1 else blob)
                seen[blob] += 1
            lines.append(f"{kind:<16} {name:<16} {len(inputs)} {len(outputs)} {' '.join(renamed + outputs)} {params}".rstrip())
            blob = outputs[0]
            if readers.get(blob, 0) > 1:
                splits = " ".join(f"{blob}_s{n}" for n in range(readers[blob]))
                lines.append(f"{'Split':<16} split_{blob:<10} 1 {readers[blob]} {blob} {splits}")
        blobs = {b for line in lines for b in line.split()[4:] if "=" not in b}
        param.write_text("7767517\n" + f"{len(lines)} {len(blobs)}\n" + "\n".join(lines) + "\n")
        param.with_suffix(".bin").write_bytes(bytes(self.weights))
        return param


def random_module(arch: str, seed: int, **params: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    module = get_architecture(arch).build(**params).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return module


def write_srvgg(path: Path, half: bool = False, relu_at: int | None = None) -> tuple[Path, torch.nn.Module]:
    module = random_module("srvggnet_compact", 1, scale=4, channels=8, blocks=2)
    w, x = Writer(half), "data"
    for n, layer in enumerate(module.body):
        if isinstance(layer, torch.nn.Conv2d):
            x = w.conv(x, layer)
        elif n == relu_at:
            x = w.layer("ReLU", [x])
        else:
            x = w.layer("PReLU", [x], f"0={layer.weight.numel()}")
            w.weights += layer.weight.detach().numpy().astype("<f4").tobytes()
    shuffled = w.layer("PixelShuffle", [x], "0=4")
    up = w.layer("Interp", ["data"], "0=1 1=4.000000e+00 2=4.000000e+00")
    return w.save(path, w.layer("BinaryOp", [shuffled, up], "0=0")), module


def write_rrdb(path: Path, half: bool = False, resize: int = 1) -> tuple[Path, torch.nn.Module]:
    module = random_module("rrdbnet", 2, scale=4, channels=8, blocks=2, growth=4)
    w = Writer(half)
    first = w.conv("data", module.conv_first)
    x = first
    for block in module.body:
        start = x
        for rdb in (block.rdb1, block.rdb2, block.rdb3):
            feats = [x]
            for conv in (rdb.conv1, rdb.conv2, rdb.conv3, rdb.conv4):
                feats.append(w.conv(feats[0] if len(feats) == 1 else w.layer("Concat", list(feats)), conv, leaky=True))
            x = w.layer("Eltwise", [w.conv(w.layer("Concat", feats), rdb.conv5), feats[0]], "0=1 -23301=2,2.000000e-01,1.000000e+00")
        x = w.layer("Eltwise", [x, start], "0=1 -23301=2,2.000000e-01,1.000000e+00")
    x = w.layer("BinaryOp", [first, w.conv(x, module.conv_body)], "0=0")
    for conv in (module.conv_up1, module.conv_up2):
        x = w.conv(w.layer("Interp", [x], f"0={resize} 1=2.000000e+00 2=2.000000e+00"), conv, leaky=True)
    return w.save(path, w.conv(w.conv(x, module.conv_hr, leaky=True), module.conv_last)), module


WRITERS = {"srvgg": write_srvgg, "rrdb": write_rrdb}


def picture(height: int = 12, width: int = 10) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(3).random((1, 3, height, width), dtype=np.float32))


def ncnn_output(param: Path, x: torch.Tensor) -> torch.Tensor:
    ncnn = pytest.importorskip("ncnn")  # the test extra
    net = ncnn.Net()
    for option in ("use_vulkan_compute", "use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, option, False)  # ncnn's fp32 CPU path
    assert net.load_param(str(param)) == 0 and net.load_model(str(param.with_suffix(".bin"))) == 0
    extractor = net.create_extractor()
    extractor.input("data", ncnn.Mat(np.ascontiguousarray(x[0].numpy())))
    status, out = extractor.extract("output")
    assert status == 0
    return torch.from_numpy(np.array(out))[None]


@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_matches_ncnns_own_output(tmp_path: Path, kind: str, half: bool) -> None:
    param, _ = WRITERS[kind](tmp_path / f"{kind}.param", half)
    loaded = load_model(str(param))
    x = picture()
    with torch.no_grad():
        ours = loaded.module(x)
    theirs = ncnn_output(param, x)
    assert ours.shape == theirs.shape == (1, 3, 48, 40)
    mse = float(((ours.double() - theirs.double()) ** 2).mean())
    assert 10 * np.log10(1 / max(mse, 1e-30)) >= 60  # dB on the [0, 1] range


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_weights_land_on_the_right_keys_and_fp16_is_kept_exactly(tmp_path: Path, kind: str) -> None:
    for half in (False, True):
        param, module = WRITERS[kind](tmp_path / f"{kind}{half}.param", half)
        loaded = load_model(str(param))
        assert loaded.card.arch == ("srvggnet_compact" if kind == "srvgg" else "rrdbnet") and loaded.descriptor.scale == 4
        theirs = loaded.module.state_dict()
        assert theirs.keys() == module.state_dict().keys()
        for key, value in module.state_dict().items():
            want = value.half().float() if half and key.endswith("weight") and value.ndim == 4 else value
            assert torch.equal(theirs[key], want), key
        with torch.no_grad():
            assert torch.allclose(loaded.module(picture()), module(picture()), atol=1e-2 if half else 1e-6)


def test_refused_graphs_name_the_closest_architecture(tmp_path: Path) -> None:
    param, _ = write_srvgg(tmp_path / "relu.param", relu_at=3)
    with pytest.raises(ModelError, match=r"relu\.param: ncnn graph not recognised; closest: srvggnet_compact \(.*PReLU.*ReLU"):
        load_model(str(param))
    param, _ = write_rrdb(tmp_path / "bilinear.param", resize=2)
    with pytest.raises(ModelError, match=r"closest: rrdbnet \(the x2 upsampling .* has 0=2, 1 expected"):
        load_model(str(param))


def test_bad_files_are_one_line(tmp_path: Path) -> None:
    param, _ = write_srvgg(tmp_path / "m.param")
    weights = param.with_suffix(".bin")
    whole = weights.read_bytes()
    weights.write_bytes(whole[:-8])
    with pytest.raises(ModelError, match=r"m\.bin: ends inside"):
        load_model(str(param))
    weights.write_bytes(whole + bytes(4))
    with pytest.raises(ModelError, match="bytes beyond the weights"):
        load_model(str(param))
    weights.write_bytes(struct.pack("<I", 0x000D4B38) + whole[4:])
    with pytest.raises(ModelError, match="int8"):
        load_model(str(param))
    weights.unlink()
    with pytest.raises(ModelError, match=r"m\.bin are not beside it"):
        load_model(str(param))
    param.write_text("7767517\n1 1\nInput data 0 1 data\n../../etc/passwd 0 0\n")
    with pytest.raises(ModelError, match="says 1 layers but holds 2"):
        load_model(str(param))
    param.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ModelError, match="not an ncnn .param"):
        load_model(str(param))


def test_import_and_run_from_the_command_line(tmp_path: Path, user_models: Path) -> None:
    param, _ = write_srvgg(tmp_path / "anime-tiny.param", half=True)
    runner = CliRunner()
    result = runner.invoke(app, ["import", str(param)])
    assert result.exit_code == 0, result.output
    assert (user_models / "anime-tiny.safetensors").is_file() and "srvggnet_compact" in result.output
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    for model in (str(param), "anime-tiny"):
        out = tmp_path / f"out-{model.count('/')}.png"
        result = runner.invoke(app, ["image", str(tmp_path / "in.png"), "-o", str(out), "--model", model, "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert Image.open(out).size == (28, 36)
