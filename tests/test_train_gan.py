"""The SRGAN stage: discriminator, VGG19 content loss, a few real steps, exact resume, the schedule.

VGG19 weights here are random (mechanism only, never shipped): the ImageNet file is not in this workplace.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from upscaler.cli import app
from upscaler.models.weights import load_model
from upscaler.train.discriminator import Discriminator
from upscaler.train.gan import GanTrainer
from upscaler.train.trainer import TrainConfig
from upscaler.train.vgg import VGG19, ContentLoss, load_vgg19

from .conftest import EXAMPLES, save_random_model

# torchvision's VGG19 "features": the index of every 3x3 convolution and its (in, out) channels.
VGG19_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256),
               16: (256, 256), 19: (256, 512), 21: (512, 512), 23: (512, 512), 25: (512, 512), 28: (512, 512),
               30: (512, 512), 32: (512, 512), 34: (512, 512)}
POOLS = (4, 9, 18, 27, 36)


def torchvision_layout_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under torchvision's VGG19 key names and shapes (he-normal as torchvision initialises)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, (cin, cout) in VGG19_CONVS.items():
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=generator) * math.sqrt(2 / (cout * 9))
        state[f"features.{index}.bias"] = torch.randn(cout, generator=generator) * 0.01
    # The downloaded file carries the classifier too; its biases stand for it here (the weights are 480 MB).
    state.update({"classifier.0.bias": torch.zeros(4096), "classifier.3.bias": torch.zeros(4096), "classifier.6.bias": torch.zeros(1000)})
    return state


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vgg") / "vgg19-random.pth"
    torch.save(torchvision_layout_state(), path)
    return path


@pytest.fixture(scope="module")
def init_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_model(tmp_path_factory.mktemp("init") / "pixel.safetensors", "srresnet", seed=1, channels=8, blocks=1)


def test_discriminator_layers_and_parameter_count_for_96x96() -> None:
    # Fig. 4: k3n64s1 (no BN), then conv-BN-LeakyReLU blocks, then dense 1024, LeakyReLU, dense 1.
    spec = [(64, 1), (64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1), (512, 2)]
    d = Discriminator(96)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.stride[0], c.kernel_size) for c in convs] == [(n, s, (3, 3)) for n, s in spec]
    assert [type(m).__name__ for m in d.features][:2] == ["Conv2d", "LeakyReLU"]
    assert [type(m).__name__ for m in d.features][2:] == ["Conv2d", "BatchNorm2d", "LeakyReLU"] * 7
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, nn.LeakyReLU))
    dense = [m for m in d.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dense] == [(512 * 6 * 6, 1024), (1024, 1)]

    expected = 3 * 64 * 9 + 64  # first convolution with its bias
    channels = 64
    for out, _ in spec[1:]:
        expected += channels * out * 9 + 2 * out  # bias-free convolution, BN scale and shift
        channels = out
    expected += 512 * 6 * 6 * 1024 + 1024 + 1024 + 1
    assert sum(p.numel() for p in d.parameters()) == expected == 23_563_649  # worked by hand: 4,687,232 in convolutions + 18,876,417 dense
    assert d(torch.rand(2, 3, 96, 96)).shape == (2,)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vgg19_loads_torchvision_layout_without_missing_or_unexpected_keys(tmp_path: Path, suffix: str) -> None:
    state = torchvision_layout_state()
    assert {k: tuple(v.shape) for k, v in VGG19().state_dict().items()} == {
        k: tuple(v.shape) for k, v in state.items() if k.startswith("features.")}
    path = tmp_path / f"vgg19{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    loaded = load_vgg19(path).state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_content_layers_are_phi54_and_phi22() -> None:
    vgg = VGG19()
    phi54, phi22 = ContentLoss(vgg, "vgg54").features, ContentLoss(vgg, "vgg22").features
    # φ5,4: the ReLU after conv5_4 (the 16th convolution), before the 5th pooling.
    assert len(phi54) == 36 and isinstance(phi54[35], nn.ReLU) and phi54[34] is vgg.features[34]
    assert sum(isinstance(m, nn.Conv2d) for m in phi54) == 16 and sum(isinstance(m, nn.MaxPool2d) for m in phi54) == 4
    # φ2,2: the ReLU after conv2_2 (the 4th convolution), before the 2nd pooling.
    assert len(phi22) == 9 and isinstance(phi22[8], nn.ReLU) and phi22[7] is vgg.features[7]
    assert sum(isinstance(m, nn.Conv2d) for m in phi22) == 4 and sum(isinstance(m, nn.MaxPool2d) for m in phi22) == 1
    x = torch.rand(1, 3, 32, 32)
    assert phi54(x).shape == (1, 512, 2, 2) and phi22(x).shape == (1, 128, 16, 16)


def _independent_phi(state: dict[str, torch.Tensor], images: torch.Tensor, last_conv: int) -> torch.Tensor:
    """φ by hand from the tensors: ImageNet normalisation, conv+ReLU, 2x2 pooling at torchvision's indices."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (images - mean) / std
    for index in range(last_conv + 1):
        if index in VGG19_CONVS:
            x = F.relu(F.conv2d(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"], padding=1))
        elif index in POOLS:
            x = F.max_pool2d(x, 2)
    return x


@pytest.mark.parametrize(("layer", "last_conv"), [("vgg54", 34), ("vgg22", 7)])
def test_content_loss_equals_an_independent_computation(vgg_file: Path, layer: str, last_conv: int) -> None:
    state = torchvision_layout_state()
    loss = ContentLoss(load_vgg19(vgg_file), layer)
    generator = torch.Generator().manual_seed(2)
    sr, hr = torch.rand(2, 3, 48, 48, generator=generator), torch.rand(2, 3, 48, 48, generator=generator)
    expected = ((_independent_phi(state, sr, last_conv) - _independent_phi(state, hr, last_conv)) ** 2).mean() / 12.75**2
    assert expected > 0
    torch.testing.assert_close(loss(sr, hr), expected, rtol=1e-4, atol=0)
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.training and not loss.features.training


def _config(init: Path, vgg: Path, steps: int) -> TrainConfig:
    return TrainConfig(data=str(EXAMPLES), arch="srresnet", patch=32, batch=2, steps=steps, seed=5, checkpoint_every=2,
                       log_every=1, stage="gan", init=str(init), vgg=str(vgg))


def _interrupt_at(step: int, records: list[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    def log(record: dict[str, Any]) -> None:
        records.append(record)
        if record["step"] == step:
            raise KeyboardInterrupt  # Ctrl-C in the middle of training
    return log


def test_gan_steps_log_every_loss_drop_lr_tenfold_and_resume_exactly(tmp_path: Path, init_model: Path, vgg_file: Path) -> None:
    for run in ("straight", "interrupted"):
        (tmp_path / run).mkdir()
    straight = GanTrainer(_config(init_model, vgg_file, 4), tmp_path / "straight", torch.device("cpu"))
    records: list[dict[str, Any]] = []
    straight.run(records.append)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for record in records:
        for key in ("loss", "content", "adversarial", "d_loss", "d_real", "d_fake"):
            assert math.isfinite(record[key]), (key, record)
        assert 0 < record["d_real"] < 1 and 0 < record["d_fake"] < 1 and record["content"] > 0
        assert record["loss"] == pytest.approx(record["content"] + 1e-3 * record["adversarial"], rel=1e-5)
    # The paper's schedule: 1e-4 for the first half of the updates, 1e-5 for the second, for G and D alike.
    assert [r["lr"] for r in records] == pytest.approx([1e-4, 1e-4, 1e-5, 1e-5])
    assert straight.d_optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)
    # The generator started from the init model and moved.
    init = load_model(str(init_model)).module.state_dict()
    assert not torch.equal(straight.model.state_dict()["tail.weight"], init["tail.weight"])

    interrupted_log: list[dict[str, Any]] = []
    with pytest.raises(KeyboardInterrupt):
        GanTrainer(_config(init_model, vgg_file, 4), tmp_path / "interrupted", torch.device("cpu")).run(
            _interrupt_at(3, interrupted_log))
    resumed = GanTrainer(_config(init_model, vgg_file, 4), tmp_path / "interrupted", torch.device("cpu"))
    resumed.resume()
    assert resumed.step == 2  # the last checkpoint before the interrupt
    resumed.run(lambda _: None)
    assert resumed.step == straight.step == 4
    for mine, theirs in ((resumed.model, straight.model), (resumed.discriminator, straight.discriminator)):
        for key, value in theirs.state_dict().items():
            torch.testing.assert_close(mine.state_dict()[key], value, rtol=1e-6, atol=1e-7)


def test_gan_command_end_to_end(runner: CliRunner, tmp_path: Path, init_model: Path, vgg_file: Path) -> None:
    run = tmp_path / "run"
    args = ["train", str(EXAMPLES), "-o", str(run), "--stage", "gan", "--init", str(init_model), "--vgg", str(vgg_file),
            "--content", "vgg22", "--patch", "32", "--batch", "2", "--steps", "2", "--checkpoint-every", "1", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"content", "adversarial", "d_loss", "d_real", "d_fake"} <= set(records[-1])
    card = load_model(str(run / "last.safetensors")).card
    assert card.arch == "srresnet" and card.arch_params == {"scale": 4, "channels": 8, "blocks": 1}
    recipe = card.recipe
    assert (recipe["stage"], recipe["content"], recipe["adv_weight"], recipe["init"]) == ("gan", "vgg22", 1e-3, str(init_model))
    assert recipe["vgg"] == vgg_file.name and recipe["world_size"] == 1 and recipe["global_batch"] == 2
    assert recipe["schedule"] == "drop" and recipe["lr"] == 1e-4
    assert recipe["command"].startswith(f"upscale train {EXAMPLES} -o {run} --stage gan --init {init_model} --content vgg22")

    out = tmp_path / "rocket.png"
    result = runner.invoke(app, ["image", str(EXAMPLES / "rocket.jpg"), "-o", str(out), "--model", str(run / "last.safetensors")])
    assert result.exit_code == 0, result.output
    assert out.is_file()


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize("case", ["missing", "absent", "wrong-hash", "wrong-layout", "text"])
def test_missing_or_wrong_vgg_gives_one_line_and_exit_2(runner: CliRunner, tmp_path: Path, init_model: Path, case: str) -> None:
    vgg_args: list[str] = []
    if case == "absent":
        vgg_args = ["--vgg", str(tmp_path / "vgg19-dcbb9e9d.pth")]
    elif case == "wrong-hash":  # random weights under the real file's name: the sha256 prefix gives them away
        torch.save(torchvision_layout_state(), tmp_path / "vgg19-dcbb9e9d.pth")
        vgg_args = ["--vgg", str(tmp_path / "vgg19-dcbb9e9d.pth")]
    elif case == "wrong-layout":  # VGG16's state dict is not VGG19's
        state = {k: v for k, v in torchvision_layout_state().items() if k not in ("features.16.weight", "features.16.bias")}
        torch.save(state, tmp_path / "vgg16.pth")
        vgg_args = ["--vgg", str(tmp_path / "vgg16.pth")]
    elif case == "text":
        (tmp_path / "vgg.pth").write_text("not weights\n")
        vgg_args = ["--vgg", str(tmp_path / "vgg.pth")]
    result = runner.invoke(app, ["train", str(EXAMPLES), "-o", str(tmp_path / "run"), "--stage", "gan",
                                 "--init", str(init_model), "--patch", "32", "--steps", "1", *vgg_args])
    assert result.exit_code == 2, result.output
    lines = _error_lines(result.output)
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "vgg19-dcbb9e9d.pth" in lines[0] and "download.pytorch.org" in lines[0]
    if vgg_args:
        assert vgg_args[1] in lines[0]
    assert not (tmp_path / "run").exists()


def test_srgan_mse_needs_no_vgg(tmp_path: Path, init_model: Path) -> None:
    """SRGAN-MSE of the paper's ablation: pixel MSE as the content loss, with the adversarial term."""
    config = _config(init_model, tmp_path / "absent.pth", 1)
    config.content, config.vgg = "mse", None
    trainer = GanTrainer(config, tmp_path, torch.device("cpu"))
    records: list[dict[str, Any]] = []
    trainer.run(records.append)
    assert isinstance(trainer.content_loss, nn.MSELoss) and records[-1]["content"] > 0
    assert trainer.recipe()["vgg"] is None and trainer.recipe()["loss"] == "pixel mse + 0.001 * -log D(G(LR))"


def test_gan_without_init_gives_one_line_and_exit_2(runner: CliRunner, tmp_path: Path, vgg_file: Path) -> None:
    result = runner.invoke(app, ["train", str(EXAMPLES), "-o", str(tmp_path / "run"), "--stage", "gan", "--vgg", str(vgg_file)])
    assert result.exit_code == 2
    lines = _error_lines(result.output)
    assert len(lines) == 1 and lines[0].startswith("error: --stage gan needs --init"), result.output
