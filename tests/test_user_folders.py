"""The engine cache and the descriptor cache live in the user's cache folder, never in the folder a command runs in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from upscaler.engine.settings import RunSettings
from upscaler.io import user_folders


def _compile(model: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in (user_folders.CACHE_ENV, user_folders.ENGINES_ENV)}
    return subprocess.run([sys.executable, "-m", "upscaler", "compile", "--model", str(model), "--tile", "32",
                           "--overlap", "8", "--batch", "1", "--device", "cpu", "--precision", "fp32"],
                          cwd=cwd, env={**clean, **env, "PYTHONPATH": str(Path(__file__).parent.parent)},
                          capture_output=True, text=True, timeout=300, check=False)


def test_compile_writes_to_the_user_cache_folder_or_upscaler_engines(tiny_model: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    done = _compile(tiny_model, work, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert done.returncode == 3, done.stderr  # no TensorRT here: the checked ONNX graph is the product
    assert list((tmp_path / "xdg" / "upscaler" / "engines").glob("*.onnx")) and list(work.iterdir()) == []
    moved = _compile(tiny_model, work, XDG_CACHE_HOME=str(tmp_path / "xdg"), UPSCALER_ENGINES=str(tmp_path / "fast"))
    assert moved.returncode == 3, moved.stderr
    assert list((tmp_path / "fast").glob("*.onnx")) and list(work.iterdir()) == []


def test_the_folders_follow_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(user_folders.CACHE_ENV, raising=False)
    monkeypatch.delenv(user_folders.ENGINES_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if sys.platform.startswith("linux"):
        assert RunSettings("m").engines == tmp_path / "xdg" / "upscaler" / "engines"
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert user_folders.engines_folder() == tmp_path / "home" / ".cache" / "upscaler" / "engines"
    monkeypatch.setenv(user_folders.CACHE_ENV, str(tmp_path / "all"))
    assert (user_folders.engines_folder(), user_folders.descriptors_folder()) == (tmp_path / "all" / "engines",
                                                                             tmp_path / "all" / "descriptors")
    monkeypatch.setenv(user_folders.ENGINES_ENV, str(tmp_path / "fast"))
    assert RunSettings("m").engines == tmp_path / "fast" and user_folders.descriptors_folder() == tmp_path / "all" / "descriptors"
