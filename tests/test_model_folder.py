"""The user model folder under hostile conditions: dangling links, control characters, built-in names, files and
read-only folders in the way. Real files, real subprocesses; each case one clear line and the right exit code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from upscaler.cli import app
from upscaler.models.weights import BASELINE_MODEL, BUILTIN_ALIASES, builtin_models

from .conftest import upscale_command

CLEAN = builtin_models()["clean"]


def upscale(*args: str | Path, models: Path, unprivileged: bool = False) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(upscale_command(args, unprivileged), capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "UPSCALER_MODELS": str(models), "COLUMNS": "200"})
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr, done.stderr
    return done


def test_a_dangling_link_and_a_hostile_name_leave_the_rest_listed(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "gone.safetensors").symlink_to(tmp_path / "nowhere.safetensors")
    shutil.copy(CLEAN, models / "e\x1b[31mvil.safetensors")
    listed = upscale("models", models=models)
    assert listed.returncode == 0
    warnings = [line for line in listed.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: skipped {models / 'gone.safetensors'}: No such file or directory"]
    assert "\x1b" not in listed.stdout + listed.stderr and "e\\x1b[31mvil" in listed.stdout
    as_json = upscale("models", "--json", models=models)
    assert as_json.returncode == 0
    assert [row["name"] for row in json.loads(as_json.stdout)] == ["clean", "photo", "e\x1b[31mvil"]


def test_import_refuses_the_names_of_built_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process (a subprocess each costs seconds, and the case above already runs real processes)."""
    monkeypatch.setenv("UPSCALER_MODELS", str(tmp_path / "models"))
    for name in sorted({*builtin_models(), *BUILTIN_ALIASES, BASELINE_MODEL}):
        refused = CliRunner().invoke(app, ["import", str(CLEAN), "--name", name])
        assert refused.exit_code == 2, name
        assert " ".join(refused.output.split()) == f"error: model name {name!r} is a built-in model's; choose another with --name"
    assert list((tmp_path / "models").iterdir()) == []


def test_a_file_or_a_read_only_folder_in_the_way(tmp_path: Path) -> None:
    a_file = tmp_path / "models"
    a_file.write_text("not a folder")
    listed = upscale("models", models=a_file)
    assert listed.returncode == 0 and "clean" in listed.stdout
    assert listed.stderr.strip() == f"warning: {a_file}: the model folder is not a folder; only the built-in models are listed"
    into_file = upscale("import", CLEAN, "--name", "mine", models=a_file)
    assert into_file.returncode == 2
    assert into_file.stderr.strip() == f"error: {a_file}: the model folder is a file, not a folder"
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o555)
    denied = upscale("import", CLEAN, "--name", "mine", models=read_only, unprivileged=True)
    assert denied.returncode == 2 and denied.stderr.strip() == f"error: {read_only}: cannot keep models there (Permission denied)"
    assert list(read_only.iterdir()) == []
