"""Bad and hostile model files (issue 8, items 8-10; issue 11's pickle proof): one `error:` line
naming the file, exit 2, no traceback, nothing allocated or executed on a crafted file's say-so."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from upscaler.cli import app
from upscaler.models import get_architecture
from upscaler.models.errors import ModelError
from upscaler.models.weights import ModelCard, load_model, save_model

from .conftest import EXAMPLES, save_random_model


@pytest.fixture(autouse=True)
def user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never the real user's model folder."""
    folder = tmp_path / "user-models"
    monkeypatch.setenv("UPSCALER_MODELS", str(folder))
    return folder


def card_metadata(**changes: object) -> dict[str, str]:
    metadata = ModelCard("compact", {"channels": 8, "blocks": 1}, 4, name="t").to_metadata()
    for key, value in changes.items():
        if value is None:
            del metadata[key]
        else:
            metadata[key] = value if isinstance(value, str) else json.dumps(value)
    return metadata


def tiny_tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return dict(get_architecture("compact").build(channels=8, blocks=1).state_dict())


def with_metadata(path: Path, **changes: object) -> Path:
    save_file(tiny_tensors(), str(path), metadata=card_metadata(**changes))
    return path


class Evil:
    """A pickle whose loading would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., int], tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"params_ema": tiny_tensors(), "hook": Evil(marker)}, path)
    return path


def real_file(tmp_path: Path) -> Path:
    return save_random_model(tmp_path / "good.safetensors", channels=8, blocks=1)


# Every kind of bad --model file, as (file name, writer); each must give one ModelError line naming it.
BAD_FILES: dict[str, Callable[[Path], Path]] = {
    "text.pth": lambda p: _write(p, b"just some text\n"),
    "text.safetensors": lambda p: _write(p, b"not weights at all\n"),
    "empty.safetensors": lambda p: _write(p, b""),
    "truncated.safetensors": lambda p: _write(p, real_file(p.parent).read_bytes()[:900]),
    "header-only.safetensors": lambda p: _write(p, _header_only()),
    "truncated.pth": lambda p: _write(p, _torch_bytes(p)[:300]),
    "pickle.safetensors": lambda p: _write(p, pickle.dumps({"weights": torch.zeros(1)})),
    "torch-zip.safetensors": lambda p: _write(p, _torch_bytes(p)),
    "no-arch.safetensors": lambda p: with_metadata(p, arch=None),
    "no-input-range.safetensors": lambda p: with_metadata(p, input_range=None),
    "params-list.safetensors": lambda p: with_metadata(p, arch_params=[8, 1]),
    "params-not-json.safetensors": lambda p: with_metadata(p, arch_params="{channels: 8"),
    "scale-word.safetensors": lambda p: with_metadata(p, scale="four"),
    "unknown-arch.safetensors": lambda p: with_metadata(p, arch="nope"),
    "range-255.safetensors": lambda p: with_metadata(p, input_range=[0, 255]),
    "optimizer.pth": lambda p: _save(p, {"optimizer": {"state": {}, "lr": 0.1}, "epoch": 3}),
    "list.pth": lambda p: _save(p, [torch.zeros(3)]),
    "nan.pth": lambda p: _save(p, {k: v * float("nan") for k, v in _rrdb_tensors().items()}),
    "text.onnx": lambda p: _write(p, b"graph? no\n"),
    "weights.txt": lambda p: _write(p, b"0.1 0.2\n"),
    "folder.pth": lambda p: _folder(p),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def _torch_bytes(path: Path) -> bytes:
    scratch = path.with_name(f"{path.name}.full")
    torch.save(tiny_tensors(), scratch)
    return scratch.read_bytes()


def _rrdb_tensors() -> dict[str, torch.Tensor]:
    return dict(get_architecture("rrdbnet").build(channels=8, blocks=1, growth=4).state_dict())


def _header_only() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}).encode()
    return len(header).to_bytes(8, "little") + header


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_every_bad_model_file_is_one_line_naming_it(name: str, tmp_path: Path) -> None:
    path = BAD_FILES[name](tmp_path / name)
    with pytest.raises(ModelError) as info:
        load_model(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message


def test_the_causes_are_named(tmp_path: Path) -> None:
    def cause(name: str) -> str:
        with pytest.raises(ModelError) as info:
            load_model(str(BAD_FILES[name](tmp_path / name)))
        return str(info.value)

    assert "it looks like" not in cause("text.safetensors") and "(text;" in cause("text.safetensors")
    assert "a Python pickle" in cause("pickle.safetensors") and "rename it .pth" in cause("pickle.safetensors")
    assert "a PyTorch zip checkpoint" in cause("torch-zip.safetensors")
    assert "metadata has no 'arch'" in cause("no-arch.safetensors")
    assert "metadata has no 'input_range'" in cause("no-input-range.safetensors")
    assert "arch_params must be a JSON object, got list" in cause("params-list.safetensors")
    assert "unknown architecture 'nope'" in cause("unknown-arch.safetensors")
    assert "NaN" in cause("nan.pth")
    assert "unsupported model file type '.txt'" in cause("weights.txt")
    assert "no weight tensors" in cause("optimizer.pth")


@pytest.mark.parametrize("params", [
    {"channels": 100_000_000}, {"blocks": 100_000_000}, {"channels": 1e8}, {"blocks": -1}, {"channels": True},
])
def test_crafted_hyper_parameters_are_refused_by_bounds(params: dict[str, object], tmp_path: Path) -> None:
    path = with_metadata(tmp_path / "crafted.safetensors", arch_params={"blocks": 1, "channels": 8, **params})
    with pytest.raises(ModelError, match=r"crafted.safetensors: compact: (channels|blocks)"):
        load_model(str(path))


def test_in_bounds_but_enormous_is_refused_on_the_meta_device(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    save_file(tiny_tensors(), str(path), metadata={**card_metadata(), "arch": "rrdbnet",
                                                    "arch_params": json.dumps({"channels": 512, "blocks": 128, "growth": 256})})
    with pytest.raises(ModelError, match=r"huge.safetensors: rrdbnet: [\d,]+ parameters is more than any supported generator"):
        load_model(str(path))


def peak_rss_of(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run the CLI in a child and return its result and its own peak resident memory in MiB (the kernel's
    account of that one child, taken as it is reaped: the CLI may leave through os._exit)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, "-m", "upscaler", *args], stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(child.args, child.returncode, out.read(), err.read())
    return result, usage.ru_maxrss // 1024


@pytest.mark.parametrize("arch,params", [
    ("compact", {"blocks": 100_000_000, "channels": 8}), ("rrdbnet", {"channels": 100_000_000, "blocks": 1}),
])
def test_crafted_file_exits_2_before_allocating(arch: str, params: dict[str, int], tmp_path: Path) -> None:
    """Issue 8 item 8: these took 21.6 GB and 11 GB; now one line, exit 2, the memory of a bare start."""
    path = tmp_path / "crafted.safetensors"
    save_file(tiny_tensors(), str(path), metadata={**card_metadata(), "arch": arch, "arch_params": json.dumps(params)})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result, peak_mib = peak_rss_of(["image", str(EXAMPLES / "astronaut.png"), "-o", str(tmp_path / "out.png"), "--model", str(path)], env)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "crafted.safetensors" in lines[0]
    assert peak_mib < 1500, f"peak RSS {peak_mib} MiB"  # torch itself is ~0.4 GB; one conv of 1e8 channels would be 3.6 GB
    assert not (tmp_path / "out.png").exists()


def test_metadata_scale_that_disagrees_with_the_layers_is_one_line(tmp_path: Path) -> None:
    """Issue 8 item 9: it loaded, then failed every image with a raw tensor error."""
    path = with_metadata(tmp_path / "liar.safetensors", scale="2")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run([sys.executable, "-m", "upscaler", "image", str(EXAMPLES / "astronaut.png"), "-o", str(tmp_path / "o.png"),
                             "--model", str(path)], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: {path}: metadata says scale 2 but the layers upscale x4"
    params_liar = with_metadata(tmp_path / "params.safetensors", arch_params={"channels": 8, "blocks": 1, "scale": 2}, scale="2")
    with pytest.raises(ModelError, match=r"compact layers do not match the file: to_subpixels.weight is \[48, 8, 3, 3\], the layers need \[12, 8, 3, 3\]"):
        load_model(str(params_liar))


COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "image": lambda model, tmp: ["image", str(EXAMPLES / "astronaut.png"), "-o", str(tmp / "o.png"), "--model", str(model)],
    "dir": lambda model, tmp: ["dir", str(EXAMPLES), "-o", str(tmp / "out"), "--model", str(model)],
    "eval": lambda model, tmp: ["eval", str(tmp), "--model", str(model)],
    "bench": lambda model, tmp: ["bench", "--model", str(model), "--frames", "1", "--warmup", "0"],
    "compile": lambda model, tmp: ["compile", "--model", str(model), "-o", str(tmp / "engines")],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("name", ["text.pth", "truncated.safetensors", "header-only.safetensors", "pickle.safetensors",
                                  "no-arch.safetensors", "no-input-range.safetensors", "params-list.safetensors", "missing.pth"])
def test_every_command_turns_a_bad_model_into_exit_2(command: str, name: str, tmp_path: Path) -> None:
    model = BAD_FILES[name](tmp_path / name) if name in BAD_FILES else tmp_path / name
    result = CliRunner().invoke(app, COMMANDS[command](model, tmp_path))
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and name in errors[0], result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("name", ["pickle.safetensors"])
def test_real_process_prints_one_line_and_exits_2(name: str, tmp_path: Path) -> None:
    model = BAD_FILES[name](tmp_path / name)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run([sys.executable, "-m", "upscaler", "dir", str(EXAMPLES), "-o", str(tmp_path / "out"), "--model", str(model)],
                            capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {model}: ")


def test_models_lists_the_good_and_names_the_bad(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    library = tmp_path / "library"
    library.mkdir()
    save_random_model(library / "mine.safetensors", channels=8, blocks=1)
    BAD_FILES["pickle.safetensors"](library / "broken.safetensors")
    monkeypatch.setenv("UPSCALER_MODELS", str(library))
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    assert {row["name"] for row in json.loads(result.stdout)} == {"clean", "photo", "mine"}
    assert "warning: skipped" in result.stderr and "broken.safetensors" in result.stderr


def test_a_malicious_pickle_never_runs(tmp_path: Path) -> None:
    """Issue 11: through the CLI in a real process, as .pth and misnamed .safetensors; the marker must not appear."""
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "UPSCALER_MODELS": str(tmp_path / "library")}
    path = evil_checkpoint(tmp_path / "evil.pth", marker)
    result = subprocess.run([sys.executable, "-m", "upscaler", "import", str(path)], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"{path}: refused: the checkpoint holds more than weights" in result.stderr and "posix.system" in result.stderr
    for name in ("evil.safetensors", "evil.ckpt"):
        misnamed = evil_checkpoint(tmp_path / name, marker)
        outcome = CliRunner().invoke(app, ["image", str(EXAMPLES / "astronaut.png"), "-o", str(tmp_path / "o.png"), "--model", str(misnamed)])
        assert outcome.exit_code == 2 and name in outcome.output
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "library").exists() or not any((tmp_path / "library").iterdir())
    pickle.loads(pickle.dumps(Evil(marker)))  # the payload is real: unpickling it does run
    assert marker.exists()


def test_the_safetensors_path_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("pickle was called on a .safetensors file")

    for target in ("pickle.load", "pickle.loads", "pickle.Unpickler", "torch.load", "_pickle.Unpickler"):
        module, attr = target.rsplit(".", 1)
        monkeypatch.setattr(f"{module}.{attr}", forbidden)
    marker = tmp_path / "marker"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_model(str(path))
    assert not marker.exists()


def test_save_model_is_atomic_and_keeps_integer_buffers(tmp_path: Path) -> None:
    module = get_architecture("srresnet").build(channels=8, blocks=1)
    card = ModelCard("srresnet", {"channels": 8, "blocks": 1}, 4)
    save_model(module, card, tmp_path / "s.safetensors")
    loaded = load_model(str(tmp_path / "s.safetensors"))
    assert loaded.module.state_dict()["body.0.body.1.num_batches_tracked"].dtype == torch.int64
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]
