"""The direct path and `upscale eval --degrade`: parsed specs, seeded damage, the JPEG grid figure,
and fine-tuning from a trained generator with --init."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from upscaler.cli import app
from upscaler.models.weights import load_model
from upscaler.quality.evaluate import bicubic_resize, bicubic_upscaler
from upscaler.quality.metrics import jpeg_grid
from upscaler.train.data import PatchSampler
from upscaler.train.degradations import Draw, LowResDamage, RealWorldSettings
from upscaler.train.trainer import TrainConfig, Trainer

from .conftest import EXAMPLES, dataset


def _photo() -> np.ndarray:
    return np.asarray(Image.open(min(EXAMPLES.glob("*.png"))).convert("RGB"))


def test_specs_parse_into_their_steps_in_one_fixed_order() -> None:
    assert LowResDamage.parse("jpeg:75+noise:3") == LowResDamage(0.0, 3.0, 75)
    assert LowResDamage.parse("noise:3+jpeg:75").spec() == "noise:3+jpeg:75"
    assert LowResDamage.parse("blur:1.2").spec() == "blur:1.2"
    assert LowResDamage.parse("clean") == LowResDamage()
    for bad in ("jpg:50", "jpeg:101", "jpeg:7.5", "noise:-1", "noise", "jpeg:50+jpeg:60", ""):
        with pytest.raises(ValueError, match="--degrade"):
            LowResDamage.parse(bad)


def test_damage_is_seeded_and_each_step_changes_the_picture() -> None:
    lr = bicubic_resize(_photo(), 1 / 4)
    damage = LowResDamage.parse("blur:1.2+noise:5+jpeg:50")
    a, b = damage.apply_uint8(lr, seed=3), damage.apply_uint8(lr, seed=3)
    assert np.array_equal(a, b) and a.shape == lr.shape and a.dtype == np.uint8
    assert not np.array_equal(a, damage.apply_uint8(lr, seed=4))
    noise = LowResDamage(noise_sigma=5.0).apply_uint8(lr, seed=0).astype(float) - lr
    assert 4.0 < noise[(lr > 20) & (lr < 235)].std() < 6.0  # sigma 5 on the 0..255 scale, clipped only at the ends
    gray = LowResDamage.parse("jpeg:30").apply_uint8(lr[..., 0], seed=0)
    assert gray.shape == lr.shape[:2]


def test_jpeg_grid_sees_blocks_that_the_encoder_makes_and_not_a_clean_upscale() -> None:
    lr = bicubic_resize(_photo(), 1 / 4)
    buffer = io.BytesIO()
    Image.fromarray(lr).save(buffer, format="JPEG", quality=10)
    blocky = np.asarray(Image.open(buffer).convert("RGB"))
    nearest = np.repeat(np.repeat(blocky, 4, axis=0), 4, axis=1)
    assert jpeg_grid(nearest) > 1.2
    assert jpeg_grid(bicubic_upscaler(4)(blocky)) > jpeg_grid(bicubic_upscaler(4)(lr))
    flat_steps = np.zeros((64, 64, 3), np.uint8)
    flat_steps[:, 31::32] = 255  # edges exactly where blocks meet
    assert jpeg_grid(flat_steps) > 10


def test_direct_path_is_seeded_quantised_and_bicubic_when_nothing_is_drawn() -> None:
    plain = RealWorldSettings.from_params({"direct_prob": 1, "direct_blur_prob": 0, "direct_noise_prob": 0, "direct_jpeg_prob": 0})
    lr, hr = PatchSampler(EXAMPLES, patch=32, scale=4, seed=5, realworld=plain).batch(4)
    assert lr.shape == (4, 3, 8, 8) and torch.equal(lr, (lr * 255).round() / 255)
    assert float((lr - torch.nn.functional.avg_pool2d(hr, 4)).abs().mean()) < 0.05  # bicubic: near the 4x4 means
    quantised = (torch.rand(3, 8, 8) * 255).round() / 255
    assert torch.equal(LowResDamage().apply(quantised, Draw(torch.Generator())), quantised)
    mixed = RealWorldSettings.from_params({"direct_prob": 0.5})
    a = PatchSampler(EXAMPLES, 32, 4, 7, mixed).batch(6)
    b = PatchSampler(EXAMPLES, 32, 4, 7, mixed).batch(6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_eval_degrade_is_deterministic_with_bicubic_beside(runner: CliRunner) -> None:
    args = ["eval", str(dataset("Set5")), "--model", "bicubic", "--degrade", "jpeg:50+noise:2", "--json"]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout
    report = json.loads(first.stdout)
    assert report["degrade"] == "noise:2+jpeg:50" and report["seed"] == 0
    set5 = report["datasets"]["Set5"]
    assert set5["bicubic"]["psnr"] == set5["psnr"] < 28.42  # worse than the clean bicubic row
    assert set5["grid"] > 1.05 and len(set5["images"]) == 5
    other = json.loads(runner.invoke(app, [*args, "--seed", "1"]).stdout)["datasets"]["Set5"]
    assert other["psnr"] != set5["psnr"]
    bad = runner.invoke(app, ["eval", str(dataset("Set5")), "--degrade", "gif:3"])
    assert bad.exit_code == 2 and "error: --degrade 'gif:3'" in bad.output


def test_pixel_stage_fine_tunes_from_init(tmp_path: Path) -> None:
    base = TrainConfig(data=str(EXAMPLES), arch="compact", patch=32, batch=2, steps=2, checkpoint_every=2, log_every=1,
                       arch_params={"channels": 8, "blocks": 1})
    (tmp_path / "a").mkdir()
    first = Trainer(base, tmp_path / "a", torch.device("cpu"))
    first.run(lambda _: None)
    init = first.export("last", {})
    tuned = Trainer(TrainConfig(data=str(EXAMPLES), arch="srresnet", patch=32, batch=2, steps=1, log_every=1,
                                init=str(init), degradation="realworld"), tmp_path / "b", torch.device("cpu"))
    assert tuned.config.arch == "compact" and tuned.config.arch_params == {"channels": 8, "blocks": 1}
    start = load_model(str(init)).module.state_dict()
    assert all(torch.equal(start[k], v) for k, v in tuned.model.state_dict().items())
    (tmp_path / "b").mkdir()
    tuned.run(lambda _: None)
    recipe = tuned.recipe()
    assert recipe["init"] == str(init) and len(recipe["init_sha256"]) == 64
    assert "--init" in recipe["command"] and "--arch" not in recipe["command"]
