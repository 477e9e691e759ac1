"""Bad input to `train` and `eval`: one `error:` line naming the file or option and the cause, the right exit code.

Exit 2 for usage and bad input, 130 for Ctrl-C; never a traceback, never code from a pickle.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from upscaler.cli import app

from .conftest import EXAMPLES, ROOT, photo_array, save_random_model

TINY = ["--arch", "compact", "--param", "channels=8", "--param", "blocks=1", "--patch", "32", "--batch", "2", "--device", "cpu"]


def one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert "Traceback" not in text
    return lines[0]


def upscale(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: a real process."""
    return subprocess.run([sys.executable, "-m", "upscaler", *args], check=False, capture_output=True, text=True, timeout=180, cwd=ROOT)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares its size and holds no pixels: what a decompression bomb looks like before decoding."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def benchmark_folder(root: Path, lr: Image.Image | bytes) -> Path:
    """A one-image dataset in the HR/ + LR_bicubic/X4/ layout, its LR file as given."""
    (root / "HR").mkdir(parents=True)
    (root / "LR_bicubic" / "X4").mkdir(parents=True)
    Image.fromarray(photo_array()[:64, :64]).save(root / "HR" / "a.png")
    target = root / "LR_bicubic" / "X4" / "a.png"
    if isinstance(lr, bytes):
        target.write_bytes(lr)
    else:
        lr.save(target)
    return target


# -- eval ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("lr", "cause"), [
    (b"\x89PNG\r\n\x1a\n not really a png", "not a readable image"),
    (Image.new("RGBA", (16, 16), (10, 20, 30, 128)), "alpha channel"),
])
def test_eval_with_a_corrupt_or_rgba_lr_file(runner: CliRunner, tmp_path: Path, lr: Image.Image | bytes, cause: str) -> None:
    lr_path = benchmark_folder(tmp_path / "set", lr)
    result = runner.invoke(app, ["eval", "--model", "bicubic", str(tmp_path / "set")])
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert str(lr_path) in line and cause in line


def test_eval_record_into_a_read_only_folder(runner: CliRunner, tmp_path: Path, tiny_model: Path) -> None:
    benchmark_folder(tmp_path / "set", Image.fromarray(photo_array()[:16, :16]))
    if os.geteuid() == 0:  # root writes through permission bits: use a file system that refuses everyone
        folder = Path("/sys")
        if os.access(folder, os.W_OK) and not _refuses_files(folder):
            pytest.skip("no folder here refuses writes to root")
    else:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
    target = folder / "scored.safetensors"
    result = runner.invoke(app, ["eval", "--model", str(tiny_model), str(tmp_path / "set"), "--record", str(target)])
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert str(target) in line and "cannot write" in line
    assert not target.exists()


def _refuses_files(folder: Path) -> bool:
    try:
        (folder / ".probe").touch()
    except OSError:
        return True
    (folder / ".probe").unlink()
    return False


def test_eval_record_copies_the_files_tensors_byte_for_byte(runner: CliRunner, tmp_path: Path) -> None:
    """Scored in bf16, which rounds the running module's weights: the recorded file keeps the source's."""
    source = save_random_model(tmp_path / "model.safetensors", "compact", seed=3, channels=8, blocks=1)
    benchmark_folder(tmp_path / "set", Image.fromarray(photo_array()[:16, :16]))
    target = tmp_path / "scored.safetensors"
    result = runner.invoke(app, ["eval", "--model", str(source), str(tmp_path / "set"), "--precision", "bf16",
                                 "--device", "cpu", "--record", str(target)])
    assert result.exit_code == 0, result.output
    with safe_open(str(source), framework="pt") as a, safe_open(str(target), framework="pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():  # noqa: SIM118 (safe_open is not a dict)
            mine, theirs = a.get_tensor(key), b.get_tensor(key)
            assert mine.dtype == theirs.dtype == torch.float32
            assert mine.numpy().tobytes() == theirs.numpy().tobytes(), key
        meta_a, meta_b = a.metadata(), b.metadata()
    assert {k: v for k, v in meta_b.items() if k != "scores"} == {k: v for k, v in meta_a.items() if k != "scores"}
    assert '"set": {"psnr"' in meta_b["scores"]
    # bf16 matters here: these weights rounded to bf16 are not the file's.
    with safe_open(str(source), framework="pt") as a:
        head = a.get_tensor("head.weight")
    assert not torch.equal(head.bfloat16().float(), head)


# -- train -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "make", "cause"), [
    ("broken.png", lambda p: p.write_bytes((EXAMPLES / "coffee.png").read_bytes()[:300]), "corrupt or truncated"),
    ("bomb.png", lambda p: png_header_only(p, 20_000, 20_000), "decompression-bomb"),
])
def test_train_with_a_corrupt_or_bomb_sized_image(runner: CliRunner, tmp_path: Path, name: str, make: object, cause: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(photo_array()).save(data / "good.png")
    bad = data / name
    make(bad)  # type: ignore[operator]
    result = runner.invoke(app, ["train", str(data), "-o", str(tmp_path / "run"), "--steps", "1", *TINY])
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert str(bad) in line and cause in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", ["--patch", "--batch", "--steps"])
def test_train_with_zero(runner: CliRunner, tmp_path: Path, option: str) -> None:
    args = list(TINY)
    if option in args:
        args[args.index(option) + 1] = "0"
    else:
        args += [option, "0"]
    result = runner.invoke(app, ["train", str(EXAMPLES), "-o", str(tmp_path / "run"), *args])
    assert result.exit_code == 2
    assert one_error_line(result.stderr).startswith(f"error: {option} 0: must be")
    assert not (tmp_path / "run").exists()


def test_train_out_is_an_existing_file(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("keep me\n")
    result = runner.invoke(app, ["train", str(EXAMPLES), "-o", str(out), "--steps", "1", *TINY])
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert str(out) in line and "not a folder" in line
    assert out.read_text() == "keep me\n"


class _Payload:
    """Unpickling this runs a shell command: what a planted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_train_resume_never_runs_a_malicious_checkpoint(tmp_path: Path) -> None:
    run, marker = tmp_path / "run", tmp_path / "pwned"
    run.mkdir()
    torch.save({"config": _Payload(marker), "step": 1, "model": {}}, run / "checkpoint.pt")
    result = upscale("train", str(EXAMPLES), "-o", str(run), "--steps", "2", "--resume", *TINY)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert str(run / "checkpoint.pt") in line and "not a checkpoint" in line
    assert not marker.exists()
    # The payload is live: an unsafe load runs it. That is what weights_only=True refused.
    torch.load(run / "checkpoint.pt", weights_only=False)
    assert marker.exists()


def test_ctrl_c_in_the_first_seconds_of_train(tmp_path: Path) -> None:
    """SIGINT while the training images are being read: exit 130, one line, nothing written."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(150):  # enough photos that reading them takes a moment
        os.link(EXAMPLES / "astronaut.png", data / f"{i:03d}.png")
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "upscaler", "train", str(data), "-o", str(run), "--steps", "1000", *TINY],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    fds = Path(f"/proc/{process.pid}/fd")
    deadline = time.monotonic() + 120
    while not _has_open_file_in(fds, data):
        assert process.poll() is None and time.monotonic() < deadline, "train never opened a training image"
        time.sleep(0.002)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert one_error_line(stderr) == "error: interrupted before the first checkpoint; nothing to resume"
    assert not run.exists()


def _has_open_file_in(fds: Path, folder: Path) -> bool:
    try:
        return any(os.readlink(fd).startswith(str(folder)) for fd in fds.iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False
