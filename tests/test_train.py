"""`upscale train` and `upscale eval`: degradation, exact resume, the bicubic row, end to end."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from upscaler.cli import app
from upscaler.cli.train import parse_params
from upscaler.models import get_architecture
from upscaler.models.weights import load_model
from upscaler.quality.evaluate import dataset_pairs
from upscaler.train.data import PatchSampler, degrade
from upscaler.train.distributed import World
from upscaler.train.run import metrics_logger
from upscaler.train.trainer import TrainConfig, Trainer, lr_factor

from .conftest import EXAMPLES, dataset


def test_degradation_matches_matlab_imresize_on_set5() -> None:
    diffs = []
    for name, lr, hr in dataset_pairs(dataset("Set5"), 4):
        ours = degrade(torch.from_numpy(hr.copy()).permute(2, 0, 1).double() / 255, 4)
        ours_u8 = (ours * 255).round().permute(1, 2, 0).numpy()
        assert ours_u8.shape == lr.shape, name
        diffs.append(np.abs(ours_u8 - lr.astype(np.float64)).mean())
    assert float(np.mean(diffs)) < 0.2


def test_patches_are_aligned_pairs(tmp_path: Path) -> None:
    sampler = PatchSampler(EXAMPLES, patch=48, scale=4, seed=3)
    lr, hr = sampler.batch(6)
    assert lr.shape == (6, 3, 12, 12) and hr.shape == (6, 3, 48, 48)
    # The LR patch is the degraded HR patch (up to the border, where real context was used).
    again = degrade(hr.double(), 4).float()
    assert (again - lr)[..., 2:-2, 2:-2].abs().mean() < 2 / 255


def test_schedules() -> None:
    assert lr_factor("constant", 900, 1000) == 1.0
    assert [lr_factor("step", s, 1000) for s in (0, 499, 500, 749, 750)] == [1, 1, 0.5, 0.5, 0.25]
    assert lr_factor("cosine", 0, 1000) == pytest.approx(1.0)
    assert lr_factor("cosine", 1000, 1000) == pytest.approx(0.01)


def _config(steps: int) -> TrainConfig:
    return TrainConfig(
        data=str(EXAMPLES), arch="compact", patch=32, batch=4, steps=steps, seed=7,
        checkpoint_every=3, log_every=1, arch_params={"channels": 8, "blocks": 1},
    )


def _interrupt_at(step: int) -> Callable[[dict[str, Any]], None]:
    def log(record: dict[str, Any]) -> None:
        if record["step"] == step:
            raise KeyboardInterrupt  # Ctrl-C in the middle of training
    return log


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path: Path) -> None:
    for run in ("straight", "interrupted"):
        (tmp_path / run).mkdir()
    straight = Trainer(_config(6), tmp_path / "straight", torch.device("cpu"))
    straight.run(lambda _: None)

    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(6), tmp_path / "interrupted", torch.device("cpu")).run(_interrupt_at(4))
    resumed = Trainer(_config(6), tmp_path / "interrupted", torch.device("cpu"))
    resumed.resume()
    assert resumed.step == 3  # the last checkpoint before the interrupt
    resumed.run(lambda _: None)

    assert resumed.step == straight.step == 6
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=1e-6, atol=1e-7)


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    Trainer(_config(3), tmp_path / "r", torch.device("cpu")).run(lambda _: None)
    other = _config(3)
    other.patch = 64
    with pytest.raises(ValueError, match="different settings.*patch"):
        Trainer(other, tmp_path / "r", torch.device("cpu")).resume()


def test_resume_takes_the_same_data_folder_by_another_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "r").mkdir()
    Trainer(_config(3), tmp_path / "r", torch.device("cpu")).run(lambda _: None)  # named absolutely
    monkeypatch.chdir(EXAMPLES.parent)
    relative = _config(3)
    relative.data = f"./{EXAMPLES.name}/"
    resumed = Trainer(relative, tmp_path / "r", torch.device("cpu"))
    resumed.resume()
    assert resumed.step == 3
    elsewhere = _config(3)
    (tmp_path / "other").mkdir()
    shutil.copy(EXAMPLES / "astronaut.png", tmp_path / "other")
    elsewhere.data = str(tmp_path / "other")
    with pytest.raises(ValueError, match=r"different settings \(data\)"):
        Trainer(elsewhere, tmp_path / "r", torch.device("cpu")).resume()


def test_a_resumed_run_keeps_one_history_of_metrics(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": step, "loss": 1 / step}) + "\n" for step in range(1, 6)) + '{"step": 6, "lo')
    log = metrics_logger(tmp_path, resumed_at=3)  # the checkpoint was at step 3; steps 4 and 5 run again
    log({"step": 4, "loss": 0.2})
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4]
    metrics_logger(tmp_path)({"step": 5})  # a fresh logger appends
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_eval_reproduces_the_published_bicubic_row(runner: CliRunner) -> None:
    result = runner.invoke(app, ["eval", "--model", "bicubic", str(dataset("Set5")), str(dataset("Set14")), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["datasets"]
    assert scores["Set5"]["psnr"] == pytest.approx(28.42, abs=0.02)
    assert scores["Set14"]["psnr"] == pytest.approx(26.00, abs=0.02)
    assert len(scores["Set14"]["images"]) == 14


def test_train_then_upscale_end_to_end(runner: CliRunner, tmp_path: Path) -> None:
    run = tmp_path / "run"
    val = tmp_path / "val"
    (val / "HR").mkdir(parents=True)
    (val / "LR_bicubic" / "X4").mkdir(parents=True)
    with Image.open(EXAMPLES / "astronaut.png") as img:
        img.save(val / "HR" / "a.png")
        img.resize((32, 32), Image.Resampling.BICUBIC).save(val / "LR_bicubic" / "X4" / "a.png")
    args = ["train", str(EXAMPLES), "-o", str(run), "--arch", "compact", "--patch", "32", "--batch", "4",
            "--steps", "20", "--val", str(val), "--val-every", "10", "--checkpoint-every", "10",
            "--param", "channels=8", "--param", "blocks=1", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "steps_per_s"} <= set(next(r for r in records if "loss" in r))
    assert [r["step"] for r in records if "val_psnr" in r] == [10, 20]
    assert (run / "best.safetensors").is_file() and (run / "checkpoint.pt").is_file()
    card = load_model(str(run / "last.safetensors")).card
    assert card.recipe["loss"] == "l1" and card.recipe["steps"] == 20 and card.recipe["data"] == "examples"
    assert card.recipe["command"].startswith(f"upscale train {EXAMPLES} -o {run} --arch compact --loss l1")
    assert "--param channels=8" in card.recipe["command"] and card.recipe["hardware"].endswith("threads")

    scored = tmp_path / "scored.safetensors"
    result = runner.invoke(app, ["eval", "--model", str(run / "best.safetensors"), str(val), "--record", str(scored), "--tile", "48", "--overlap", "8"])
    assert result.exit_code == 0, result.output
    assert set(load_model(str(scored)).card.scores["val"]) == {"psnr", "ssim", "grid"}

    out = tmp_path / "up"
    result = runner.invoke(app, ["dir", str(EXAMPLES), "-o", str(out), "--model", str(run / "best.safetensors"), "--tile", "48", "--overlap", "8"])
    assert result.exit_code == 0, result.output
    with Image.open(out / "coffee.png") as img:
        assert img.size == (600, 400)

    resumed = runner.invoke(app, [*args[:-1], "cpu", "--resume", "--steps", "30"])
    assert resumed.exit_code == 0, resumed.output
    assert load_model(str(run / "last.safetensors")).card.recipe["steps"] == 30


def test_edsr_large_recipe_stays_selectable() -> None:
    """Lim et al.'s 32x256 EDSR: L1, no batch norm, residual scaling 0.1, all through --param."""
    params = parse_params(["channels=256", "blocks=32", "res_scale=0.1"])
    config = TrainConfig(data=str(EXAMPLES), arch="edsr", arch_params=params).with_recipe_defaults()
    assert (config.loss, config.lr, config.schedule) == ("l1", 1e-4, "step")
    assert "--arch edsr --loss l1" in config.command_line(Path("run"), World())
    assert "--param channels=256 --param blocks=32 --param res_scale=0.1" in config.command_line(Path("run"), World())
    with torch.device("meta"):  # the shapes are what matter here, not 43M numbers
        model = get_architecture("edsr").build(scale=4, **params)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert {m.res_scale for m in model.modules() if hasattr(m, "res_scale")} == {0.1}
    conv = 256 * 256 * 9 + 256
    expected = (3 * 256 * 9 + 256) + 32 * 2 * conv + conv + 2 * (256 * 1024 * 9 + 1024) + (256 * 3 * 9 + 3)
    assert sum(p.numel() for p in model.parameters()) == expected  # 43.1M, the paper's "43M"
