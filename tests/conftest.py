"""Shared fixtures: real photos on disk, small random-init models saved as real weights files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from upscaler.models import get_architecture
from upscaler.models.descriptor import ModelDescriptor
from upscaler.models.weights import LoadedModel, ModelCard, save_model

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "upscaler" / "examples"
DATASETS = Path(os.environ.get("UPSCALER_DATASETS", ROOT.parent / "shared" / "datasets"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def upscale_command(args: list[str | Path] | tuple[str | Path, ...], unprivileged: bool = False) -> list[str]:
    """`python -m upscaler ARGS`; `unprivileged`: as root without the capabilities that override file modes, so
    permission faults are real (skipped where setpriv is missing)."""
    command = [sys.executable, "-m", "upscaler", *map(str, args)]
    if unprivileged and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be denied")
        return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    return command


def dataset(name: str) -> Path:
    """A folder of ../shared/datasets, or skip: a user's checkout has none."""
    path = DATASETS / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


def photo_array(name: str = "astronaut.png") -> np.ndarray:
    with Image.open(EXAMPLES / name) as img:
        return np.asarray(img.convert("RGB"))


def save_random_model(path: Path, arch: str = "compact", seed: int = 0, **params: object) -> Path:
    """Random weights for testing mechanisms only; they never ship as a model."""
    torch.manual_seed(seed)
    module = get_architecture(arch).build(**params)
    card = ModelCard(arch=arch, arch_params=dict(params), scale=int(params.get("scale", 4)), name=f"random-{arch}")
    save_model(module, card, path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small compact net (fast on CPU) with random weights, as a real .safetensors file."""
    return save_random_model(tmp_path_factory.mktemp("models") / "tiny.safetensors", channels=8, blocks=1)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def in_memory_model(module: torch.nn.Module, scale: int = 4) -> LoadedModel:
    """Any torch module (an nn.Upsample, a model that misbehaves on purpose) as a loaded model."""
    facts = ModelDescriptor(arch="test", scale=scale, in_channels=3, out_channels=3,
                            parameters=sum(p.numel() for p in module.parameters()), macs_per_input_pixel=0.0,
                            supports_fp16=True, supports_bf16=True, size_multiple=1, source="memory")
    return LoadedModel(ModelCard("test", {}, scale), module, "memory", facts)


def numbered_copies(folder: Path, count: int, photo: str = "astronaut.png") -> Path:
    """FOLDER holding frame00.png, frame01.png... copies of one example photo: a batch of equal work."""
    folder.mkdir(parents=True)
    for i in range(count):
        shutil.copy(EXAMPLES / photo, folder / f"frame{i:02d}{Path(photo).suffix}")
    return folder


def interrupt_at_first_output(command: list[str], out: Path, pattern: str, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run `command`, send Ctrl-C to its process group once OUT holds a file matching `pattern`; (exit code, output)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(out.glob(pattern))) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground process group
    output, _ = proc.communicate(timeout=120)
    return proc.returncode, output


def assert_interrupted_cleanly(returncode: int, output: str, out: Path, total: int) -> list[Path]:
    """Exit 130 with the way to finish, some but not all frames written, each complete, no temporaries."""
    assert returncode == 130, output
    assert "re-run with --skip-existing" in output
    written = sorted(out.iterdir())
    assert 0 < len(written) < total, "interrupt came too late to test anything"
    assert all(p.name.startswith("frame") for p in written)  # no temporary files left
    assert_complete_images(written)
    return written


def assert_complete_images(paths: list[Path]) -> None:
    """Every file under an output name decodes to the end."""
    for path in paths:
        with Image.open(path) as img:
            img.load()
