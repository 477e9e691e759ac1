"""Model files: this project's safetensors (tensors + JSON card), foreign checkpoints and ONNX graphs.

`load_model` is the one entry point. Loading never executes code (see `checkpoint`), every
hyper-parameter is bounds-checked and the network is built on the meta device first, so a
crafted file can neither run code nor make us allocate more than a real generator; every bad
file is one ModelError line naming the file and the cause.
"""

from __future__ import annotations

import json
import os
from dataclasses import InitVar, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from upscaler.io.user_folders import platform_folder
from upscaler.models.descriptor import DESCRIPTOR_KEY, ModelDescriptor, cached, remember
from upscaler.models.errors import ModelError

if TYPE_CHECKING:  # torch loads where a model is opened, never for the names and folders below
    from torch import nn

    from upscaler.models.registry import Architecture, StateDict

FORMAT = "upscaler/1"
DEFAULT_MODEL = "default"
# `default` names what most inputs need: JPEG photos and compressed video, not clean bicubic LR.
BUILTIN_ALIASES = {DEFAULT_MODEL: "photo"}
BASELINE_MODEL = "bicubic"  # `upscale eval --model bicubic`: the published baseline row, a name no model may take
MODELS_ENV = "UPSCALER_MODELS"


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
    provenance: dict[str, Any] = field(default_factory=dict)  # imported files: where they came from

    def to_metadata(self) -> dict[str, str]:
        metadata = {
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
        if self.provenance:
            metadata["provenance"] = json.dumps(self.provenance)
        return metadata

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> ModelCard:
        """Strict: a missing or mistyped field is one ModelError line, never a KeyError traceback."""
        if meta.get("format") != FORMAT:
            raise ModelError(f"{source}: not an upscaler weights file (format {meta.get('format')!r})")
        for key in ("arch", "arch_params", "scale", "input_range"):
            if key not in meta:
                raise ModelError(f"{source}: metadata has no {key!r}")
        params = _json_field(meta, "arch_params", dict, source)
        value_range = _json_field(meta, "input_range", list, source)
        if len(value_range) != 2 or [float(v) if isinstance(v, (int, float)) else None for v in value_range] != [0.0, 1.0]:
            raise ModelError(f"{source}: input_range {value_range} is not supported (models here take [0, 1])")
        try:
            scale = int(meta["scale"])
        except ValueError:
            raise ModelError(f"{source}: metadata scale {meta['scale']!r} is not an integer") from None
        return cls(
            arch=meta["arch"],
            arch_params=params,
            scale=scale,
            value_range=(0.0, 1.0),
            name=meta.get("name", ""),
            recipe=_json_field(meta, "recipe", dict, source, "{}"),
            scores=_json_field(meta, "scores", dict, source, "{}"),
            provenance=_json_field(meta, "provenance", dict, source, "{}"),
        )


def _json_field(meta: dict[str, str], key: str, kind: type, source: str, default: str | None = None) -> Any:
    try:
        value = json.loads(meta.get(key, default) if default is not None else meta[key])
    except json.JSONDecodeError:
        raise ModelError(f"{source}: metadata {key} is not valid JSON") from None
    if not isinstance(value, kind):
        raise ModelError(f"{source}: metadata {key} must be a JSON {'object' if kind is dict else 'list'}, got {type(value).__name__}")
    return value


@dataclass
class LoadedModel:
    """A ready module: float NCHW RGB in [0, 1] in, float NCHW at `descriptor.scale` out.

    `load_model` passes the descriptor it read off the file; a model made in memory (training)
    gets one measured from its module.
    """

    card: ModelCard
    module: nn.Module
    source: str
    described: InitVar[ModelDescriptor | None] = None
    descriptor: ModelDescriptor = field(init=False)

    def __post_init__(self, described: ModelDescriptor | None) -> None:
        if described is None:
            from upscaler.models import get_architecture

            arch = get_architecture(self.card.arch)
            described = describe(arch, self.card.arch_params, self.card.scale, self.module, self.source)
        self.descriptor = described

    @property
    def digest(self) -> str:
        """sha256 of the model file, which engine caches key on; read only when asked for."""
        return self.descriptor.sha256


def save_model(module: nn.Module, card: ModelCard, path: Path, descriptor: ModelDescriptor | None = None) -> None:
    """Write atomically: a crash never leaves a truncated weights file under the final name.

    The descriptor (measured from `module` when not given) is stored with the weights, so loading
    this file later runs no probe.
    """
    from safetensors.torch import save

    tensors = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous() for k, v in module.state_dict().items()}
    if not tensors:
        raise ModelError(f"{path}: this model has no torch weights to save (an ONNX graph is kept as its .onnx file)")
    metadata = card.to_metadata()
    if card.arch in _architecture_names():
        from upscaler.models import get_architecture

        arch = get_architecture(card.arch)
        if descriptor is None or descriptor.activations_per_input_pixel == 0:
            descriptor = describe(arch, card.arch_params, card.scale, arch.build_on_meta(card.arch_params), str(path))
        metadata[DESCRIPTOR_KEY] = descriptor.stored()
    from upscaler.io.files import write_bytes_atomically

    write_bytes_atomically(path, save(tensors, metadata=metadata), mode=0o644)  # weights are shared files, not secrets


def builtin_models() -> dict[str, Path]:
    """Weights shipped inside the package, by name (aliases such as `default` apart: see BUILTIN_ALIASES)."""
    folder = resources.files("upscaler") / "weights"
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".safetensors")
    }


def user_models_dir() -> Path:
    """Where `upscale import` puts models: $UPSCALER_MODELS, else the platform's per-user data folder."""
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV]).expanduser()
    return platform_folder("data") / "models"


def user_models(folder: Path | None = None) -> dict[str, Path]:
    """Imported models by name (file stem)."""
    folder = folder or user_models_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".onnx") and not p.name.startswith(".")}


def resolve_model_path(spec: str) -> Path:
    """A built-in name, an imported model's name, or a path to a model file."""
    builtin = builtin_models()
    if BUILTIN_ALIASES.get(spec, spec) in builtin:
        return builtin[BUILTIN_ALIASES.get(spec, spec)]
    imported = user_models()
    if spec in imported:
        return imported[spec]
    path = Path(spec)
    if path.is_file():
        return path
    if path.exists():
        raise ModelError(f"model {spec!r}: not a file")
    names = ", ".join(sorted(builtin) + [f"{a} = {n}" for a, n in BUILTIN_ALIASES.items()]) or "none"
    raise FileNotFoundError(
        f"model {spec!r}: no such file and no built-in model of that name (built-in: {names}; "
        f"imported: {', '.join(sorted(imported)) or 'none'} in {user_models_dir()})"
    )


def _architecture_names() -> set[str]:
    from upscaler.models import ARCHITECTURES

    return set(ARCHITECTURES)


def trusted_location(path: Path) -> bool:
    """Built-in and imported files: written by this project, checked when they were; their stored descriptor holds."""
    folder = path.resolve().parent
    return folder in (Path(str(resources.files("upscaler") / "weights")).resolve(), user_models_dir().resolve())


def read_card(path: Path) -> ModelCard:
    from upscaler.models.checkpoint import read_safetensors

    return ModelCard.from_metadata(read_safetensors(path)[1], str(path))


def load_model(spec: str) -> LoadedModel:
    """Any supported model file, checked, as a module in eval mode; ModelError (a ValueError) if it is bad."""
    from upscaler.models import get_architecture
    from upscaler.models.checkpoint import (
        MODEL_SUFFIXES,
        NCNN_SUFFIXES,
        ONNX_SUFFIXES,
        SAFETENSORS_SUFFIXES,
        TORCH_SUFFIXES,
        read_safetensors,
        read_torch_checkpoint,
        unwrap,
    )

    path = resolve_model_path(spec)
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from upscaler.models.onnx_model import load_onnx

        module, descriptor, provenance = load_onnx(path)
        card = ModelCard("onnx", {}, descriptor.scale, name=path.stem, provenance=provenance)
        return LoadedModel(card, module, str(path), descriptor)
    if suffix in SAFETENSORS_SUFFIXES:
        tensors, metadata = read_safetensors(path)
        if metadata.get("format") == FORMAT or "arch" in metadata:
            card = ModelCard.from_metadata(metadata, str(path))
            try:
                arch = get_architecture(card.arch)
            except ModelError as exc:
                raise ModelError(f"{path}: {exc}") from None
            stored = ModelDescriptor.from_stored(metadata.get(DESCRIPTOR_KEY), str(path)) if trusted_location(path) else None
            return _build(arch, card.arch_params, tensors, card, path, stored)
        if metadata.get("format", "").startswith("upscaler"):
            ModelCard.from_metadata(metadata, str(path))  # names the unknown format version
        return _detected(tensors, path)
    if suffix in TORCH_SUFFIXES:
        return _detected(unwrap(read_torch_checkpoint(path), path), path)
    if suffix in NCNN_SUFFIXES:
        from upscaler.models.ncnn import read_ncnn

        arch, params, tensors = read_ncnn(path)
        return _build(arch, params, tensors, ModelCard(arch.name, params, 0, name=path.stem), path)
    raise ModelError(f"{path}: unsupported model file type {suffix or '(none)'!r}; use one of {', '.join(MODEL_SUFFIXES)}")


def _detected(tensors: StateDict, path: Path) -> LoadedModel:
    from upscaler.models.detect import detect_architecture

    found = detect_architecture(tensors, path)
    card = ModelCard(found.arch.name, found.params, 0, name=path.stem)
    return _build(found.arch, found.params, found.state, card, path)


def _build(
    arch: Architecture, params: dict[str, Any], tensors: StateDict, card: ModelCard, path: Path,
    stored: ModelDescriptor | None = None,
) -> LoadedModel:
    """Bounds, then (first sight of a file) the network on meta: size, keys, shapes, real scale; only then real memory.

    A descriptor stored by this project (`stored`) or measured earlier for these very bytes (the
    cache) skips the meta build and its probe; strict loading still matches every key and shape.
    """
    from upscaler.models.checkpoint import as_float32
    from upscaler.models.detect import state_mismatch

    try:
        checked = arch.checked_params(params)
    except ValueError as exc:
        raise ModelError(f"{path}: {exc}") from None
    descriptor = stored if stored is not None else cached(path)
    if descriptor is not None and (descriptor.arch, descriptor.arch_params) != (arch.name, checked):
        descriptor = None
    if descriptor is None:
        try:
            meta = arch.build_on_meta(params)
            problem = state_mismatch(meta, tensors)
            if problem is not None:
                raise ModelError(f"{arch.name} layers do not match the file: {problem}")
            descriptor = describe(arch, params, card.scale, meta, str(path))
        except ValueError as exc:
            raise ModelError(f"{path}: {exc}") from None
        if stored is None and not trusted_location(path):
            remember(descriptor)
    if card.scale and card.scale != descriptor.scale:
        raise ModelError(f"{path}: metadata says scale {card.scale} but the layers upscale x{descriptor.scale}")
    card.scale = descriptor.scale
    module = arch.build(**params)
    try:
        module.load_state_dict(as_float32(tensors, path))
    except RuntimeError as exc:
        raise ModelError(f"{path}: {arch.name} layers do not match the file: {str(exc).splitlines()[-1].strip()}") from None
    return LoadedModel(card, module.eval(), str(path), descriptor)


def describe(arch: Architecture, params: dict[str, Any], scale: int, module: nn.Module, source: str) -> ModelDescriptor:
    """The descriptor of a torch module, measured (on meta it costs shapes alone); `scale` is the one measured."""
    from upscaler.models.probe import probe

    return probe(arch, params, module, source)
