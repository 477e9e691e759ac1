"""The registry and the architectures as the papers define them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from upscaler.models import ARCHITECTURES, count_parameters, get_architecture, macs_per_input_pixel


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_upscales_4x(name: str) -> None:
    model = get_architecture(name).build(**({"blocks": 2} if name != "compact" else {})).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 12, 10))
    assert out.shape == (2, 3, 48, 40)


def test_srresnet_is_the_paper_generator() -> None:
    model = get_architecture("srresnet").build()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # 9x9 head, 16 blocks x 2 convs, body tail, two x2 upsamplers, 9x9 tail
    assert [c.kernel_size for c in convs] == [(9, 9)] + [(3, 3)] * 33 + [(3, 3)] * 2 + [(9, 9)]
    assert [c.out_channels for c in convs][-3:] == [256, 256, 3]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 33
    assert sum(isinstance(m, nn.PixelShuffle) for m in model.modules()) == 2
    assert sum(isinstance(m, nn.PReLU) for m in model.modules()) == 1 + 16 + 2
    assert count_parameters(model) == 1_549_462  # the published SRResNet size


def test_edsr_baseline_has_no_batch_norm_and_scales_residuals() -> None:
    model = get_architecture("edsr").build(res_scale=0.1)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert count_parameters(model) == 1_517_571  # EDSR baseline x4, 16 blocks x 64 channels
    block = model.body[0]
    x = torch.rand(1, 64, 8, 8)
    assert torch.allclose(block(x), x + 0.1 * block.body(x))


def test_macs_per_pixel_counts_every_convolution() -> None:
    model = get_architecture("compact").build(channels=8, blocks=1)
    c = 8
    expected = 9 * (3 * c + 2 * c * c + c * c + c * 48)
    assert macs_per_input_pixel(model) == pytest.approx(expected)


def test_unknown_names_fail_clearly() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'nope'.*compact"):
        get_architecture("nope")
    with pytest.raises(ValueError, match="unknown hyper-parameters"):
        get_architecture("edsr").build(width=3)
    with pytest.raises(ValueError, match="power of two"):
        get_architecture("srresnet").build(scale=3)


def test_models_command_lists_the_builtin_with_its_scores() -> None:
    import json

    from typer.testing import CliRunner

    from upscaler.cli import app

    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    clean, photo = rows["clean"], rows["photo"]
    assert clean["aliases"] == [] and photo["aliases"] == ["default"]
    for row in (clean, photo):
        assert row["kind"] == "built-in" and row["scale"] == 4 and row["arch"] == "compact"
        assert row["parameters"] > 10_000 and row["macs_per_input_pixel"] <= 650_000
        assert row["recipe"]["data"] == "train290" and row["recipe"]["command"].startswith("upscale train")
    assert clean["scores"]["Set5"]["psnr"] >= 30.8 and clean["scores"]["Set14"]["psnr"] >= 27.6
    assert "realworld" in photo["recipe"]["degradation"] and photo["recipe"]["init"].endswith("clean-init.safetensors")
    assert len(photo["recipe"]["init_sha256"]) == 64
    assert photo["scores"]["Set14 jpeg:50"]["psnr"] > clean["scores"]["Set14 jpeg:50"]["psnr"]
    assert photo["scores"]["Set14 jpeg:50"]["grid"] < clean["scores"]["Set14 jpeg:50"]["grid"]
    table = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert "photo (default)" in table.output and "Set14 jpeg:50" in table.output
