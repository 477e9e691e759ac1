"""The engine cache (io/user_cache.py says where): a manifest keyed by everything a plan depends on.

A serialized plan is only valid for the exact model weights, tile shape, batch, precision,
TensorRT version and GPU it was built for, and it can carry code (plugins), so plans are
loaded only from this cache and only when their bytes match the manifest's hash.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from upscaler.io.files import write_bytes_atomically

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class EngineKey:
    model_digest: str  # sha256 of the weights file
    model_name: str
    tile: int
    batch: int
    layout: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    workspace_mib: int  # the builder's choices change the kernels it picks, so a plan's pixels and speed
    optimization_level: int

    @property
    def onnx_stem(self) -> str:
        """The graph depends on the model and tile shape only, not on TensorRT or the GPU."""
        model = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.model_name) or "model"
        return f"{model}-{self.model_digest[:12]}-t{self.tile}-b{self.batch}-{self.layout}-{self.precision}"

    @property
    def stem(self) -> str:
        """A readable, unique file stem: every field that decides validity is in it or in the hash."""
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu_name.lower()).strip("-")
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.onnx_stem}-trt{self.tensorrt_version}-{gpu}-sm{self.compute_capability.replace('.', '')}-{digest}"


@dataclass
class CacheEntry:
    key: EngineKey
    plan: str  # file name inside the cache folder
    plan_sha256: str
    onnx: str

    def to_json(self) -> dict[str, object]:
        return {"key": asdict(self.key), "plan": self.plan, "plan_sha256": self.plan_sha256, "onnx": self.onnx}


class EngineCache:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def entries(self) -> list[CacheEntry]:
        path = self.folder / MANIFEST
        if not path.is_file():
            return []
        raw = json.loads(path.read_text())
        entries = []
        for item in raw.get("engines", []):
            try:
                key = EngineKey(**item["key"])
            except TypeError:  # written before a field joined the key: never a match, rebuilt when asked for
                continue
            entries.append(CacheEntry(key, item["plan"], item["plan_sha256"], item["onnx"]))
        return entries

    def onnx_path(self, key: EngineKey) -> Path:
        return self.folder / f"{key.onnx_stem}.onnx"

    def lookup(self, key: EngineKey) -> Path | None:
        """The plan for exactly this key, or None (so the caller rebuilds): never a near match."""
        for entry in self.entries():
            if entry.key == key:
                path = self._inside(entry.plan)
                if path.is_file() and _sha256(path) == entry.plan_sha256:
                    return path
        return None

    def store(self, key: EngineKey, plan: bytes) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._inside(f"{key.stem}.plan")
        write_bytes_atomically(path, plan)
        entry = CacheEntry(key, path.name, hashlib.sha256(plan).hexdigest(), self.onnx_path(key).name)
        others = [e for e in self.entries() if e.key != key]
        self._write_manifest([*others, entry])
        return path

    def read_plan(self, path: Path) -> bytes:
        """Plan bytes, refused unless the file is one this cache wrote and is unchanged since."""
        resolved = path.resolve()
        for entry in self.entries():
            if self._inside(entry.plan) == resolved:
                data = resolved.read_bytes()
                if hashlib.sha256(data).hexdigest() != entry.plan_sha256:
                    raise ValueError(f"{path}: plan changed since it was built; refusing to load it")
                return data
        raise ValueError(f"{path}: not a plan from the engine cache {self.folder}; refusing to load it")

    def _inside(self, name: str) -> Path:
        path = (self.folder / name).resolve()
        if path.parent != self.folder.resolve():
            raise ValueError(f"{name}: outside the engine cache {self.folder}")
        return path

    def _write_manifest(self, entries: list[CacheEntry]) -> None:
        text = json.dumps({"engines": [e.to_json() for e in entries]}, indent=2)
        write_bytes_atomically(self.folder / MANIFEST, text.encode())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
