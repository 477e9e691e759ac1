"""`upscale import`: any supported file into the user's model folder, checked and with its provenance.

Torch checkpoints become this project's safetensors (the detected architecture, its
descriptor and where the file came from in the metadata); ONNX graphs are kept as ONNX with
the same provenance in the graph's metadata properties. Either way the file is loaded back
from its new place before it is kept, so an import never leaves an unusable model behind.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from upscaler.models.errors import ModelError
from upscaler.models.onnx_model import PROVENANCE_KEY
from upscaler.models.weights import BASELINE_MODEL, BUILTIN_ALIASES, ModelCard, builtin_models, load_model, save_model

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# Release file names of the common public weights and the licence of the repository that publishes them.
# A name is only a hint: the user states where the file really came from.
LICENCE_HINTS: list[tuple[str, str]] = [
    (r"(?i)^(RealESRGAN|RealESRNet|realesr-)", "Real-ESRGAN release name: BSD-3-Clause (xinntao/Real-ESRGAN)"),
    (r"(?i)^RRDB_(ESRGAN|PSNR)_x4", "ESRGAN release name: Apache-2.0 (xinntao/ESRGAN)"),
    (r"(?i)^edsr_(baseline_)?x[234]", "EDSR-PyTorch release name: MIT (sanghyun-son/EDSR-PyTorch)"),
    (r"(?i)^(EDSR_(Lx|Mx)|MSRResNet|ESRGAN_SRx4)", "BasicSR model-zoo name: Apache-2.0 (XPixelGroup/BasicSR)"),
]


def licence_note(file_name: str) -> str:
    for pattern, note in LICENCE_HINTS:
        if re.match(pattern, file_name):
            return note
    return "unknown: check the licence where the file came from"


def model_name(source: Path, name: str | None) -> str:
    """The name `--model` will take: --name, else the file's stem made safe."""
    chosen = name if name is not None else re.sub(r"[^A-Za-z0-9._-]+", "-", source.stem).strip("-._")
    if not NAME_PATTERN.fullmatch(chosen or ""):
        raise ModelError(f"model name {chosen!r}: use letters, digits, '.', '_' or '-' (64 at most), starting with a letter or digit")
    if chosen in builtin_models() or chosen in BUILTIN_ALIASES or chosen == BASELINE_MODEL:
        raise ModelError(f"model name {chosen!r} is a built-in model's; choose another with --name")
    return chosen


def import_model(source: Path, folder: Path, name: str | None = None, replace: bool = False) -> tuple[Path, dict[str, Any]]:
    """Convert `source` into `folder`; returns the new file and its provenance."""
    chosen = model_name(source, name)  # a refused name costs no model load
    loaded = load_model(str(source))
    suffix = ".onnx" if loaded.descriptor.runtime == "onnxruntime" else ".safetensors"
    target = folder / f"{chosen}{suffix}"
    existing = [p for p in (folder / f"{chosen}.safetensors", folder / f"{chosen}.onnx") if p.exists()]
    if existing and not replace:
        raise ModelError(f"{existing[0]}: a model of that name is already imported (--force replaces it)")
    provenance = {
        "file": source.name, "sha256": loaded.descriptor.sha256, "detected": loaded.descriptor.arch,
        "arch_params": loaded.descriptor.arch_params, "licence": licence_note(source.name),
    }
    folder.mkdir(parents=True, exist_ok=True)
    if suffix == ".onnx":
        _write_onnx(source, target, provenance)
    else:
        card = ModelCard(loaded.card.arch, loaded.descriptor.arch_params, loaded.descriptor.scale, name=chosen, provenance=provenance)
        save_model(loaded.module, card, target, loaded.descriptor)
    try:
        load_model(str(target))
    except ValueError:
        target.unlink(missing_ok=True)
        raise
    for other in existing:
        if other != target:
            other.unlink()
    return target, provenance


def _write_onnx(source: Path, target: Path, provenance: dict[str, Any]) -> None:
    """The graph as it is, plus a metadata property; written under a temporary name and renamed."""
    from upscaler.io.files import write_bytes_atomically
    from upscaler.models.onnx_model import read_onnx

    model = read_onnx(source)
    kept = [p for p in model.metadata_props if p.key != PROVENANCE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=PROVENANCE_KEY, value=json.dumps(provenance))
    write_bytes_atomically(target, model.SerializeToString(), mode=0o644)

