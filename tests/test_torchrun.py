"""`torchrun --nproc-per-node 2 -m upscaler train ...`: two real processes, gloo on CPU, both stages."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from upscaler.cli import app
from upscaler.models.weights import load_model
from upscaler.train.data import PatchSampler
from upscaler.train.distributed import parameters_digest
from upscaler.train.trainer import sampler_seed

from .conftest import EXAMPLES, ROOT
from .test_train_gan import torchvision_layout_state


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               "-m", "upscaler", "train", str(EXAMPLES), "--patch", "32", "--batch", "2", "--device", "cpu", *args]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _replicas_agree(run: Path, step: int, networks: set[str]) -> dict[str, str]:
    """The digests both ranks logged at `step`: one per network, equal on both ranks."""
    [record] = [r for r in _records(run) if "replica_digests" in r and r["step"] == step]
    digests = record["replica_digests"]
    assert set(digests) == networks
    for values in digests.values():
        assert len(values) == 2 and values[0] == values[1]
    return {name: values[0] for name, values in digests.items()}


@pytest.fixture(autouse=True)
def _gloo() -> None:
    if not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")


def test_ranks_draw_different_crops() -> None:
    batches = [PatchSampler(EXAMPLES, 32, 4, sampler_seed(0, rank)).batch(4)[1] for rank in (0, 1)]
    assert not torch.equal(batches[0], batches[1])
    assert torch.equal(PatchSampler(EXAMPLES, 32, 4, sampler_seed(0, 0)).batch(4)[1], batches[0])


def test_torchrun_two_processes_both_stages_identical_replicas_one_writer_and_resume(tmp_path: Path) -> None:
    pixel = tmp_path / "pixel"
    torchrun("-o", str(pixel), "--arch", "srresnet", "--param", "channels=8", "--param", "blocks=1",
             "--steps", "4", "--checkpoint-every", "2")
    # Rank 0 alone wrote: one checkpoint, one metrics file, one export, nothing else.
    assert sorted(p.name for p in pixel.iterdir()) == ["checkpoint.pt", "last.safetensors", "metrics.jsonl"]
    assert [r["step"] for r in _records(pixel) if "loss" in r] == [4]
    _replicas_agree(pixel, 2, {"generator"})
    final = _replicas_agree(pixel, 4, {"generator"})
    exported = load_model(str(pixel / "last.safetensors"))
    assert parameters_digest(exported.module) == final["generator"]
    recipe = exported.card.recipe
    assert (recipe["world_size"], recipe["batch"], recipe["global_batch"]) == (2, 2, 4)
    assert recipe["command"].startswith("torchrun --nnodes 1 --nproc-per-node 2 -m upscaler train")
    checkpoint = torch.load(pixel / "checkpoint.pt", weights_only=True)
    assert checkpoint["world_size"] == 2 and len(checkpoint["sampler_rng"]) == 2
    assert not torch.equal(*checkpoint["sampler_rng"])  # each rank its own crops
    alone = CliRunner().invoke(app, ["train", str(EXAMPLES), "-o", str(pixel), "--arch", "srresnet", "--param", "channels=8",
                                     "--param", "blocks=1", "--patch", "32", "--batch", "2", "--steps", "6", "--device", "cpu",
                                     "--resume"])
    assert alone.exit_code == 2 and alone.stderr.count("\n") == 1, alone.output
    assert alone.stderr.startswith("error:") and "written by 2 process(es)" in alone.stderr

    vgg = tmp_path / "vgg19-random.pth"  # random weights: mechanism only
    torch.save(torchvision_layout_state(), vgg)
    gan = tmp_path / "gan"
    gan_args = ["-o", str(gan), "--stage", "gan", "--init", str(pixel / "last.safetensors"), "--vgg", str(vgg),
                "--checkpoint-every", "1"]
    torchrun(*gan_args, "--steps", "2")
    assert sorted(p.name for p in gan.iterdir()) == ["checkpoint.pt", "last.safetensors", "metrics.jsonl"]
    _replicas_agree(gan, 2, {"generator", "discriminator"})

    torchrun(*gan_args, "--steps", "3", "--resume")
    assert sorted(p.name for p in gan.iterdir()) == ["checkpoint.pt", "last.safetensors", "metrics.jsonl"]
    losses = [r for r in _records(gan) if "d_loss" in r]
    assert [r["step"] for r in losses] == [2, 3]  # each leg logs its last step; the resumed one continued at 3
    final = _replicas_agree(gan, 3, {"generator", "discriminator"})
    exported = load_model(str(gan / "last.safetensors"))
    assert parameters_digest(exported.module) == final["generator"]
    # Resumed across processes, bit for bit what an uninterrupted run ends with.
    straight = tmp_path / "straight"
    torchrun(*gan_args[:1], str(straight), *gan_args[2:], "--steps", "3")
    assert _replicas_agree(straight, 3, {"generator", "discriminator"}) == final
    assert exported.card.recipe["steps"] == 3 and exported.card.recipe["stage"] == "gan"
    assert exported.card.recipe["init"] == str(pixel / "last.safetensors")
