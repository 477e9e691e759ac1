"""Weights files: safetensors with metadata, loaded without unpickling."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from upscaler.models import get_architecture
from upscaler.models.weights import ModelCard, load_model, read_card, resolve_model_path, save_model

from .conftest import save_random_model


def test_round_trip_keeps_tensors_and_card(tmp_path: Path) -> None:
    path = save_random_model(tmp_path / "m.safetensors", channels=8, blocks=1)
    loaded = load_model(str(path))
    torch.manual_seed(0)
    again = get_architecture("compact").build(channels=8, blocks=1)
    for key, value in again.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key], value)
    assert loaded.card.arch == "compact" and loaded.card.scale == 4
    assert loaded.card.arch_params == {"channels": 8, "blocks": 1}
    assert loaded.card.value_range == (0.0, 1.0)
    assert len(loaded.digest) == 64


def test_card_records_recipe_and_scores(tmp_path: Path) -> None:
    card = ModelCard("compact", {}, 4, name="x", recipe={"loss": "l1"}, scores={"Set5": {"psnr": 30.0, "ssim": 0.9}})
    save_model(get_architecture("compact").build(), card, tmp_path / "x.safetensors")
    assert read_card(tmp_path / "x.safetensors") == card


def test_a_pickle_is_refused_not_executed(tmp_path: Path) -> None:
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"weights": torch.zeros(1)}))
    with pytest.raises(Exception) as info:
        load_model(str(evil))
    assert not isinstance(info.value, pickle.UnpicklingError)


def test_foreign_safetensors_named_clearly(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"other.safetensors: not a known generator: its keys \(w\) match none of .*rrdbnet"):
        load_model(str(tmp_path / "other.safetensors"))


def test_missing_model_names_the_builtins(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file and no built-in model"):
        resolve_model_path(str(tmp_path / "absent.safetensors"))


def test_a_model_made_in_memory_measures_its_descriptor() -> None:
    """The trainer wraps its live module without a file; the descriptor then comes from the module itself."""
    from upscaler.models.weights import LoadedModel

    module = get_architecture("srresnet").build(channels=8, blocks=1)
    loaded = LoadedModel(ModelCard("srresnet", {"channels": 8, "blocks": 1}, 4), module, "training")
    d = loaded.descriptor
    assert (d.arch, d.scale, d.size_multiple, d.runtime) == ("srresnet", 4, 1, "torch")
    assert d.parameters == sum(p.numel() for p in module.parameters()) and d.macs_per_input_pixel > 0
    assert module.training  # measuring it changed nothing


def test_builtin_clean_keeps_loading_with_its_scores() -> None:
    loaded = load_model("clean")
    assert loaded.card.scores["Set5"]["psnr"] == 31.502 and loaded.card.scores["Set14"]["psnr"] == 28.034
    assert loaded.descriptor.arch == "compact" and loaded.descriptor.parameters == 292_320
    assert loaded.digest == loaded.descriptor.sha256 and len(loaded.digest) == 64
