"""Weights files and the architecture registry, field by field: cards, bounds, strict loading, digests, lookup."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from upscaler.models import get_architecture, registry
from upscaler.models.errors import ModelError
from upscaler.models.registry import (
    INT_BOUNDS,
    Architecture,
    count_parameters,
    macs_per_input_pixel,
    output_shape,
    register,
)
from upscaler.models.weights import (
    ModelCard,
    load_model,
    resolve_model_path,
    save_model,
    user_models,
    user_models_dir,
)

from .conftest import save_random_model

# -- the card ------------------------------------------------------------------------------------


def _metadata(**changes: str | None) -> dict[str, str]:
    meta = ModelCard("compact", {"channels": 8}, 4, name="n", recipe={"r": 1}, scores={"s": 2}).to_metadata()
    for key, value in changes.items():
        if value is None:
            del meta[key]
        else:
            meta[key] = value
    return meta


def test_card_metadata_is_exactly_the_documented_fields() -> None:
    assert _metadata() == {
        "format": "upscaler/1", "name": "n", "arch": "compact", "arch_params": '{"channels": 8}', "scale": "4",
        "input_range": "[0.0, 1.0]", "output_range": "[0.0, 1.0]", "recipe": '{"r": 1}', "scores": '{"s": 2}',
    }
    card = ModelCard("compact", {}, 2, provenance={"from": "x.pth"})
    assert json.loads(card.to_metadata()["provenance"]) == {"from": "x.pth"}
    assert ModelCard.from_metadata(card.to_metadata(), "m") == card


def test_card_defaults_for_optional_fields() -> None:
    card = ModelCard.from_metadata(_metadata(name=None, recipe=None, scores=None, input_range="[0, 1]"), "m")
    assert (card.name, card.recipe, card.scores, card.provenance, card.value_range) == ("", {}, {}, {}, (0.0, 1.0))
    assert card.arch_params == {"channels": 8} and card.scale == 4


@pytest.mark.parametrize(("changes", "message"), [
    ({"format": "upscaler/2"}, "m: not an upscaler weights file (format 'upscaler/2')"),
    ({"format": None}, "m: not an upscaler weights file (format None)"),
    ({"arch": None}, "m: metadata has no 'arch'"),
    ({"arch_params": None}, "m: metadata has no 'arch_params'"),
    ({"scale": None}, "m: metadata has no 'scale'"),
    ({"input_range": None}, "m: metadata has no 'input_range'"),
    ({"arch_params": "{"}, "m: metadata arch_params is not valid JSON"),
    ({"arch_params": "[1]"}, "m: metadata arch_params must be a JSON object, got list"),
    ({"input_range": "{}"}, "m: metadata input_range must be a JSON list, got dict"),
    ({"input_range": "[0, 255]"}, "m: input_range [0, 255] is not supported (models here take [0, 1])"),
    ({"input_range": "[0, 1, 2]"}, r"m: input_range \[0, 1, 2\] is not supported"),
    ({"input_range": '["0", 1]'}, "m: input_range"),
    ({"scale": "four"}, "m: metadata scale 'four' is not an integer"),
    ({"recipe": "[]"}, "m: metadata recipe must be a JSON object, got list"),
    ({"scores": "nope"}, "m: metadata scores is not valid JSON"),
    ({"provenance": "3"}, "m: metadata provenance must be a JSON object, got int"),
])
def test_card_refuses_each_bad_field_in_one_line(changes: dict[str, str | None], message: str) -> None:
    with pytest.raises(ModelError, match="^" + (message if "\\" in message else message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\["))):
        ModelCard.from_metadata(_metadata(**changes), "m")


# -- saving and loading ----------------------------------------------------------------------------


def test_save_is_atomic_float32_and_world_readable(tmp_path: Path) -> None:
    module = get_architecture("compact").build(channels=4, blocks=1).half()
    path = tmp_path / "deep" / "folder" / "m.safetensors"
    save_model(module, ModelCard("compact", {"channels": 4, "blocks": 1}, 4), path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.safetensors"]  # no temporary left
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    with safe_open(str(path), "pt") as handle:
        assert all(handle.get_tensor(k).dtype == torch.float32 for k in handle.keys())  # noqa: SIM118 (a safetensors handle, not a dict)
        assert json.loads(handle.metadata()["descriptor"])["parameters"] == sum(p.numel() for p in module.parameters())
    loaded = load_model(str(path))
    save_model(loaded.module, loaded.card, tmp_path / "d.safetensors", loaded.descriptor)
    with safe_open(str(tmp_path / "d.safetensors"), "pt") as handle:
        assert json.loads(handle.metadata()["descriptor"])["parameters"] == loaded.descriptor.parameters


def test_a_module_without_weights_is_not_saved(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="e.safetensors: this model has no torch weights to save"):
        save_model(nn.Identity(), ModelCard("compact", {}, 4), tmp_path / "e.safetensors")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("scale", [2, 3])
def test_scale_comes_from_the_layers(tmp_path: Path, scale: int) -> None:
    path = save_random_model(tmp_path / "m.safetensors", channels=4, blocks=1, scale=scale)
    loaded = load_model(str(path))
    assert loaded.card.scale == loaded.descriptor.scale == scale
    assert loaded.module(torch.zeros(1, 3, 5, 7)).shape == (1, 3, 5 * scale, 7 * scale)
    meta = _read_metadata(path)
    meta["scale"] = "0"  # unknown: taken from the layers
    _rewrite(path, meta)
    assert load_model(str(path)).card.scale == scale


def _read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as handle:
        return dict(handle.metadata())


def _rewrite(path: Path, meta: dict[str, str], drop: str | None = None, extra: dict[str, torch.Tensor] | None = None) -> None:
    with safe_open(str(path), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys() if k != drop}  # noqa: SIM118
    save_file({**tensors, **(extra or {})}, str(path), metadata=meta)


def test_loading_is_strict_about_every_tensor(tmp_path: Path) -> None:
    path = save_random_model(tmp_path / "m.safetensors", channels=4, blocks=1)
    meta = _read_metadata(path)
    _rewrite(path, meta, drop="head.bias")
    with pytest.raises(ModelError, match=r"m.safetensors: compact layers do not match the file: missing head.bias"):
        load_model(str(path))
    path = save_random_model(tmp_path / "m.safetensors", channels=4, blocks=1)
    _rewrite(path, meta, extra={"stray": torch.zeros(2)})
    with pytest.raises(ModelError, match="unexpected stray"):
        load_model(str(path))


def test_loaded_weights_are_the_files(tmp_path: Path) -> None:
    path = save_random_model(tmp_path / "m.safetensors", seed=5, channels=4, blocks=1)
    loaded = load_model(str(path))
    with safe_open(str(path), "pt") as handle:
        for key in handle.keys():  # noqa: SIM118
            assert torch.equal(loaded.module.state_dict()[key], handle.get_tensor(key)), key
    assert not loaded.module.training


def test_the_digest_is_of_the_bytes_at_the_path(tmp_path: Path) -> None:
    path = save_random_model(tmp_path / "m.safetensors", seed=0, channels=4, blocks=1)
    first = load_model(str(path)).digest
    assert first == hashlib.sha256(path.read_bytes()).hexdigest()
    save_random_model(path, seed=1, channels=4, blocks=1)  # same path, new weights
    second = load_model(str(path)).digest
    assert second == hashlib.sha256(path.read_bytes()).hexdigest() and second != first


def test_unsupported_files_and_unknown_architectures_are_named(tmp_path: Path) -> None:
    other = tmp_path / "m.txt"
    other.write_text("x")
    with pytest.raises(ModelError, match=r"m.txt: unsupported model file type '.txt'; use one of .*\.safetensors"):
        load_model(str(other))
    bare = tmp_path / "weights"
    bare.write_text("x")
    with pytest.raises(ModelError, match=r"weights: unsupported model file type '\(none\)'; use one of"):
        load_model(str(bare))
    path = save_random_model(tmp_path / "m.safetensors", channels=4, blocks=1)
    _rewrite(path, {**_read_metadata(path), "arch": "nonesuch"})
    with pytest.raises(ModelError, match=r"m.safetensors: unknown architecture 'nonesuch' \(known: .*compact"):
        load_model(str(path))
    _rewrite(path, {**_read_metadata(path), "format": "upscaler/9"})
    with pytest.raises(ModelError, match=r"not an upscaler weights file \(format 'upscaler/9'\)"):
        load_model(str(path))


def test_uppercase_suffixes_are_model_files(tmp_path: Path) -> None:
    path = save_random_model(tmp_path / "m.safetensors", channels=4, blocks=1)
    upper = path.rename(tmp_path / "M.SAFETENSORS")
    assert load_model(str(upper)).card.arch == "compact"


# -- where models are found ------------------------------------------------------------------------


def test_user_models_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSCALER_MODELS", "~/mine")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_models_dir() == tmp_path / "mine"
    monkeypatch.delenv("UPSCALER_MODELS")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert user_models_dir() == tmp_path / "data" / "upscaler" / "models"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert user_models_dir() == tmp_path / ".local" / "share" / "upscaler" / "models"


def test_imported_models_are_found_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "models"
    assert user_models(folder) == {}
    save_random_model(folder / "b.safetensors", channels=4, blocks=1)
    (folder / "a.onnx").write_bytes(b"")
    (folder / ".hidden.safetensors").write_bytes(b"")
    (folder / "notes.txt").write_text("")
    assert list(user_models(folder).items()) == [("a", folder / "a.onnx"), ("b", folder / "b.safetensors")]
    monkeypatch.setenv("UPSCALER_MODELS", str(folder))
    assert resolve_model_path("b") == folder / "b.safetensors"
    assert resolve_model_path("default") == resolve_model_path("photo") and resolve_model_path("photo").name == "photo.safetensors"
    assert resolve_model_path("clean").name == "clean.safetensors"
    assert resolve_model_path(str(folder / "b.safetensors")) == folder / "b.safetensors"
    with pytest.raises(ModelError, match=r"^model '.*models': not a file$"):
        resolve_model_path(str(folder))
    with pytest.raises(FileNotFoundError, match=r"^model 'zzz': no such file and no built-in model of that name "
                                                r"\(built-in: clean, photo, default = photo; imported: a, b in .*models\)"):
        resolve_model_path("zzz")


# -- the registry ----------------------------------------------------------------------------------


class _Probe(nn.Module):
    def __init__(self, scale: int = 2, width: int = 5, gain: float = 1.0, act: str = "relu", bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3 * scale * scale, 1, bias=bias)
        self.shuffle = nn.PixelShuffle(scale)
        self.width, self.gain, self.act = width, gain, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


PROBE = Architecture("probe", _Probe, {"scale": 2, "width": 5, "gain": 1.0, "act": "relu", "bias": True}, "a probe")


@pytest.mark.parametrize(("params", "message"), [
    ([("scale", 2)], "probe: hyper-parameters must be a mapping, got list"),
    ({"depth": 1, "alpha": 2}, r"probe: unknown hyper-parameters \['alpha', 'depth'\]"),
    ({"scale": 0}, r"probe: scale=0 is out of bounds \[1, 8\]"),
    ({"scale": 9}, r"probe: scale=9 is out of bounds \[1, 8\]"),
    ({"scale": 2.0}, "probe: scale must be an integer, got 2.0"),
    ({"scale": True}, "probe: scale must be an integer, got True"),
    ({"width": 1025}, r"probe: width=1025 is out of bounds \[0, 1024\]"),
    ({"width": -1}, r"probe: width=-1 is out of bounds \[0, 1024\]"),
    ({"gain": "1"}, "probe: gain must be a number, got '1'"),
    ({"gain": False}, "probe: gain must be a number, got False"),
    ({"gain": 1e6 + 1}, r"probe: gain=1000001.0 is out of bounds \[0.0, 1000000.0\]"),
    ({"gain": -0.5}, r"probe: gain=-0.5 is out of bounds"),
    ({"act": 1}, "probe: act must be a str, got 1"),
    ({"bias": 1}, "probe: bias must be a bool, got 1"),
])
def test_hyper_parameters_are_typed_and_bounded(params: object, message: str) -> None:
    with pytest.raises(ModelError, match="^" + message):
        PROBE.checked_params(params)  # type: ignore[arg-type]


def test_hyper_parameters_at_their_bounds_are_accepted() -> None:
    assert PROBE.checked_params({"scale": 8, "width": 1024, "gain": 3, "bias": False}) == {
        "scale": 8, "width": 1024, "gain": 3.0, "act": "relu", "bias": False}
    assert isinstance(PROBE.checked_params({"gain": 3})["gain"], float)
    assert PROBE.checked_params({"scale": 1, "width": 0, "gain": 0})["scale"] == 1
    assert INT_BOUNDS["scale"] == (1, 8)
    with pytest.raises(ModelError, match="^probe: gain has an unsupported type$"):
        Architecture("probe", _Probe, {"gain": [1]}, "").checked_params({})


def test_registered_defaults_come_from_the_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "ARCHITECTURES", registry.ARCHITECTURES.copy())  # the probes vanish afterwards
    register("probe-registered", "a probe", size_multiple=lambda p: 4, supports_fp16=False)(_Probe)
    arch = get_architecture("probe-registered")
    assert arch.defaults == {"scale": 2, "width": 5, "gain": 1.0, "act": "relu", "bias": True}
    assert (arch.name, arch.factory, arch.summary, arch.size_multiple({}), arch.supports_fp16, arch.supports_bf16) == (
        "probe-registered", _Probe, "a probe", 4, False, True)

    class Required(_Probe):
        def __init__(self, width: int, scale: int = 2) -> None:
            super().__init__(scale=scale, width=width)

    register("probe-required", "required width")(Required)
    assert get_architecture("probe-required").defaults == {"scale": 2}  # only keyword defaults are hyper-parameters
    register("probe-plain", "plain")(_Probe)
    plain = get_architecture("probe-plain")
    assert plain.size_multiple({}) == 1 and plain.supports_fp16 and plain.detect is None
    built = arch.build(scale=3)
    assert isinstance(built, _Probe) and built.shuffle.upscale_factor == 3
    meta = arch.build_on_meta({"scale": 3})
    assert next(meta.parameters()).is_meta and count_parameters(meta) == 3 * 27 + 27
    with pytest.raises(ModelError, match=r"^unknown architecture \['x'\] \(known: .*probe-plain, probe-registered"):
        get_architecture(["x"])  # type: ignore[arg-type]


def test_output_shape_and_macs_are_measured() -> None:
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 1, groups=3), nn.Conv2d(6, 3, 3, stride=2, padding=1))
    assert output_shape(net, 8, 6) == (1, 3, 4, 3)
    # per input pixel: 6 outputs x 27 taps, 6 x 2 taps, then a quarter of the pixels x 3 x 54 taps
    assert macs_per_input_pixel(net) == 6 * 27 + 6 * 2 + 3 * 54 / 4
    net.train()
    macs_per_input_pixel(net, probe=8)
    assert net.training
    net.eval()
    macs_per_input_pixel(net, probe=8)
    assert not net.training
    assert not any(m._forward_hooks for m in net.modules())
    with torch.device("meta"):
        on_meta = nn.Conv2d(3, 12, 1)
    assert output_shape(on_meta, 5, 5) == (1, 12, 5, 5)
    assert output_shape(nn.Identity(), 2, 3) == (1, 3, 2, 3)


def test_the_registry_refuses_a_second_architecture_of_one_name_and_orders_detection_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "ARCHITECTURES", registry.ARCHITECTURES.copy())
    with pytest.raises(ValueError, match="'compact' is registered twice"):
        register("compact", "a twin")(_Probe)
    assert get_architecture("compact").factory is not _Probe  # the first stays
    with pytest.raises(ValueError, match="has a detector but no place in the detection order"):
        register("probe-detecting", "detects", detect=lambda _state: None)(_Probe)
    assert [a.name for a in registry.ARCHITECTURES.detectors()] == list(registry.DETECTION_ORDER)
