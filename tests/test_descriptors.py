"""Stored and cached descriptors: what start-up reads instead of probing must equal a fresh probe, and never go stale."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from upscaler.models import get_architecture
from upscaler.models.descriptor import descriptors_folder, file_digest
from upscaler.models.registry import ARCHITECTURES
from upscaler.models.weights import ModelCard, builtin_models, describe, load_model, save_model

SMALL: dict[str, dict[str, object]] = {
    "srresnet": {"channels": 8, "blocks": 1}, "msrresnet": {"channels": 8, "blocks": 1}, "edsr": {"channels": 8, "blocks": 1},
    "edsr_reference": {"channels": 8, "blocks": 1}, "compact": {"channels": 8, "blocks": 1},
    "rrdbnet": {"channels": 8, "blocks": 1, "growth": 4}, "srvggnet_compact": {"channels": 8, "blocks": 2}}


def _fresh(loaded_arch: str, params: dict[str, object], scale: int, source: str) -> dict[str, object]:
    arch = get_architecture(loaded_arch)
    return describe(arch, params, scale, arch.build_on_meta(params), source).to_json()


def _facts(json: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in json.items() if k not in ("source", "sha256")}


@pytest.mark.parametrize("name", sorted(builtin_models()))
def test_each_builtins_stored_descriptor_equals_a_fresh_probe(name: str) -> None:
    loaded = load_model(name)
    fresh = _fresh(loaded.card.arch, loaded.card.arch_params, loaded.card.scale, loaded.source)
    assert _facts(loaded.descriptor.to_json()) == _facts(fresh)


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_what_save_model_stores_equals_a_fresh_probe_for_every_architecture(arch: str, tmp_path: Path) -> None:
    params = {**SMALL[arch], "scale": 4}
    torch.manual_seed(0)
    module = get_architecture(arch).build(**params)
    save_model(module, ModelCard(arch, params, 4), tmp_path / "m.safetensors")
    loaded = load_model(str(tmp_path / "m.safetensors"))
    assert _facts(loaded.descriptor.to_json()) == _facts(_fresh(arch, params, 4, str(tmp_path / "m.safetensors")))


def test_every_registered_architecture_is_covered() -> None:
    get_architecture("compact")  # the registry fills as the architectures' modules load
    assert {a.name for a in ARCHITECTURES.values()} == set(SMALL), "give the new architecture a small size in SMALL"


def test_a_changed_foreign_file_is_never_served_a_stale_descriptor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyed by content: new bytes under the same name and mtime get their own measurement."""
    monkeypatch.setenv("UPSCALER_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "foreign.pth"

    def write(channels: int) -> None:
        torch.manual_seed(channels)
        module = get_architecture("srvggnet_compact").build(channels=channels, blocks=2, scale=4)
        torch.save({"params": module.state_dict()}, path)
        os.utime(path, (1_700_000_000, 1_700_000_000))  # the same mtime both times

    write(8)
    first = load_model(str(path)).descriptor
    assert (descriptors_folder() / f"{file_digest(path)}.json").is_file()
    assert load_model(str(path)).descriptor.to_json() == first.to_json()  # served from the cache
    write(16)
    second = load_model(str(path)).descriptor
    assert second.sha256 != first.sha256 and second.parameters > first.parameters
    assert _facts(second.to_json()) == _facts(_fresh("srvggnet_compact", {"scale": 4, "channels": 16, "blocks": 2}, 4,
                                                    str(path)))
