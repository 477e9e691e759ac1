"""Generators on disk: safetensors tensors plus JSON metadata. Loading never unpickles."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from upscaler.models import get_architecture

FORMAT = "upscaler/1"
DEFAULT_MODEL = "default"


@dataclass
class ModelCard:
    """Everything a weights file says about itself besides its tensors."""

    arch: str
    arch_params: dict[str, Any]
    scale: int
    value_range: tuple[float, float] = (0.0, 1.0)
    name: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "name": self.name,
            "arch": self.arch,
            "arch_params": json.dumps(self.arch_params),
            "scale": str(self.scale),
            "input_range": json.dumps(list(self.value_range)),
            "output_range": json.dumps(list(self.value_range)),
            "recipe": json.dumps(self.recipe),
            "scores": json.dumps(self.scores),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> ModelCard:
        if meta.get("format") != FORMAT:
            raise ValueError(f"{source}: not an upscaler weights file (format {meta.get('format')!r})")
        low, high = json.loads(meta["input_range"])
        return cls(
            arch=meta["arch"],
            arch_params=json.loads(meta["arch_params"]),
            scale=int(meta["scale"]),
            value_range=(float(low), float(high)),
            name=meta.get("name", ""),
            recipe=json.loads(meta.get("recipe", "{}")),
            scores=json.loads(meta.get("scores", "{}")),
        )


@dataclass
class LoadedModel:
    card: ModelCard
    module: nn.Module
    source: str

    @cached_property
    def digest(self) -> str:
        """sha256 of the weights file, which engine caches key on; read only when asked for."""
        return hashlib.sha256(Path(self.source).read_bytes()).hexdigest()


def save_model(module: nn.Module, card: ModelCard, path: Path) -> None:
    """Write atomically: a crash never leaves a truncated weights file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=card.to_metadata())
    tmp.chmod(0o644)  # weights are shared files, not secrets
    tmp.replace(path)


def builtin_models() -> dict[str, Path]:
    """Weights shipped inside the package, by name."""
    folder = resources.files("upscaler") / "weights"
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".safetensors")
    }


def resolve_model_path(spec: str) -> Path:
    """A built-in name or a path to a .safetensors file."""
    builtin = builtin_models()
    if spec in builtin:
        return builtin[spec]
    path = Path(spec)
    if path.is_file():
        return path
    names = ", ".join(sorted(builtin)) or "none"
    raise FileNotFoundError(f"model {spec!r}: no such file and no built-in model of that name (built-in: {names})")


def read_card(path: Path) -> ModelCard:
    with safe_open(str(path), framework="pt") as handle:
        return ModelCard.from_metadata(handle.metadata() or {}, str(path))


def load_model(spec: str) -> LoadedModel:
    path = resolve_model_path(spec)
    with safe_open(str(path), framework="pt") as handle:
        card = ModelCard.from_metadata(handle.metadata() or {}, str(path))
        state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    module = get_architecture(card.arch).build(**card.arch_params)
    module.load_state_dict(state)
    module.eval()
    return LoadedModel(card=card, module=module, source=str(path))
