"""Commands that run no model answer without importing torch (checked with -X importtime in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from upscaler.cli.app import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def _imported(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    env = {**os.environ, "UPSCALER_MODELS": str(tmp_path / "models"), "UPSCALER_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "upscaler", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120, check=False)
    modules = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return done, modules


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["models"], ["models", "--json"], ["dir", "--help"],
                                  ["image", "--help"], ["models", "--help"], ["dir"], ["no-such-command"]])
def test_commands_that_run_no_model_import_no_torch(args: list[str], tmp_path: Path) -> None:
    done, modules = _imported(args, tmp_path)
    assert "upscaler.cli.app" in modules  # the measurement itself works
    assert "torch" not in modules, args
    assert "numpy" not in modules or args == ["dir"], args  # parsing and --help load no codec either (io/formats.py)
    if "--help" in args or args == ["--version"]:
        assert "pydantic" not in modules, args  # typer builds its first coercion adapter lazily (cli/app.py)
    assert done.returncode in (0, 2), done.stderr[-2000:]


def test_a_missing_input_is_a_usage_error_without_traceback(tmp_path: Path) -> None:
    done, _ = _imported(["image", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png")], tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr


def test_root_help_lists_each_command_with_its_own_first_help_line() -> None:
    import typer.main

    from upscaler.cli import app

    for name, (module, summary) in COMMANDS.items():
        __import__(f"upscaler.cli.{module}")
        command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
        assert (command.help or "").splitlines()[0].strip() == summary, name


def test_every_help_text_survives_rich_markup() -> None:
    """`[default: ...]` in a help text is a Rich tag unless escaped: the help then reads "Pixel loss ."."""
    import importlib

    import typer
    from rich.markup import render

    from upscaler.cli.app import app

    for module in {module for module, _ in COMMANDS.values()}:
        importlib.import_module(f"upscaler.cli.{module}")
    for name, command in typer.main.get_command(app).commands.items():  # type: ignore[attr-defined]
        for part, text in [("help", command.help), *((param.name, getattr(param, "help", None)) for param in command.params)]:
            assert render(text or "").plain == (text or "").replace("\\[", "["), (name, part, text)
