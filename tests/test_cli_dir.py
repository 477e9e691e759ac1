"""`upscale dir` / `upscale image` end to end on real files: careful with every file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from upscaler.cli import app

from .conftest import (
    EXAMPLES,
    assert_interrupted_cleanly,
    interrupt_at_first_output,
    numbered_copies,
    save_random_model,
)

FAST = ["--tile", "64", "--overlap", "8", "--device", "cpu"]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Real photos, one in a sub-folder, plus files that are not images."""
    folder = tmp_path / "in"
    (folder / "trip" / "day1").mkdir(parents=True)
    shutil.copy(EXAMPLES / "astronaut.png", folder / "astronaut.png")
    shutil.copy(EXAMPLES / "rocket.jpg", folder / "trip" / "day1" / "rocket.jpg")
    shutil.copy(EXAMPLES / "chelsea.png", folder / "trip" / "chelsea.png")
    return folder


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_dir_upscales_a_tree_keeping_relative_paths(runner: CliRunner, photos: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["dir", str(photos), "-o", str(out), "--scale", "4", "--model", str(tiny_model), *FAST])
    assert result.exit_code == 0, result.output
    assert _files(out) == ["astronaut.png", "trip/chelsea.png", "trip/day1/rocket.jpg"]
    with Image.open(out / "trip" / "chelsea.png") as img:
        assert img.size == (448, 300)
    with Image.open(out / "trip" / "day1" / "rocket.jpg") as img:
        assert img.format == "JPEG" and img.size == (640, 424)
    assert "written" in result.output and "images/s" in result.output


def test_no_recursive_and_format_and_scale(runner: CliRunner, photos: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["dir", str(photos), "-o", str(out), "--no-recursive", "--format", "webp", "--scale", "2", "--model", str(tiny_model), *FAST]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert _files(out) == ["astronaut.webp"]
    with Image.open(out / "astronaut.webp") as img:
        assert img.format == "WEBP" and img.size == (256, 256)


def test_bad_files_are_named_and_the_batch_goes_on(runner: CliRunner, photos: Path, tiny_model: Path, tmp_path: Path) -> None:
    (photos / "empty.png").write_bytes(b"")
    (photos / "notes.jpg").write_text("not a photo")
    (photos / "cut.png").write_bytes((EXAMPLES / "coffee.png").read_bytes()[:5000])
    out = tmp_path / "out"
    result = runner.invoke(app, ["dir", str(photos), "-o", str(out), "--model", str(tiny_model), *FAST])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 3
    assert any(str(photos / "empty.png") in e and "empty file" in e for e in errors)
    assert any(str(photos / "notes.jpg") in e and "not a readable image" in e for e in errors)
    assert any(str(photos / "cut.png") in e and "truncated" in e for e in errors)
    assert _files(out) == ["astronaut.png", "trip/chelsea.png", "trip/day1/rocket.jpg"]



def test_json_summary_carries_the_counts_the_split_and_every_failure(photos: Path, tiny_model: Path, tmp_path: Path) -> None:
    import json

    (photos / "notes.jpg").write_text("not a photo")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["dir", str(photos), "-o", str(out), "--model", str(tiny_model), *FAST, "--json"])
    assert result.exit_code == 1  # one failure: the code says so with --json too
    report = json.loads(result.stdout)
    assert (report["written"], report["failed"], report["skipped"]) == (3, 1, 0)
    assert report["failures"] == [{"file": str(photos / "notes.jpg"), "error": report["failures"][0]["error"]}]
    assert "not a readable image" in report["failures"][0]["error"]
    assert report["startup_s"] >= 0 and report["work_s"] > 0 and report["images_per_s"] > 0
    assert "upscale summary" not in result.output  # the table gives way to the JSON
    piped = CliRunner().invoke(app, ["image", str(EXAMPLES / "chelsea.png"), "-o", "-", "--json"])
    assert piped.exit_code == 2 and "--json needs -o FILE" in piped.output


def test_skip_existing_leaves_outputs_alone(runner: CliRunner, photos: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "trip").mkdir(parents=True)
    done = (EXAMPLES / "coffee.png").read_bytes()  # a complete PNG stands for an earlier run's output
    (out / "trip" / "chelsea.png").write_bytes(done)
    args = ["dir", str(photos), "-o", str(out), "--skip-existing", "--model", str(tiny_model), *FAST]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "trip" / "chelsea.png").read_bytes() == done
    assert (out / "astronaut.png").is_file()


def test_a_failed_write_leaves_nothing_behind(runner: CliRunner, photos: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from upscaler.jobs import pictures as pipeline

    real_encode = pipeline.encode_picture

    with Image.open(EXAMPLES / "chelsea.png") as img:
        chelsea_upscaled = (img.height * 4, img.width * 4)

    def encode_then_crash(picture, fmt, stream, *options):  # type: ignore[no-untyped-def]
        real_encode(picture, fmt, stream, *options)  # the temporary file is complete on disk...
        if picture.size == chelsea_upscaled:
            raise OSError(28, "No space left on device")  # ...then the disk fills

    monkeypatch.setattr(pipeline, "encode_picture", encode_then_crash)
    out = tmp_path / "out"
    result = runner.invoke(app, ["dir", str(photos), "-o", str(out), "--model", str(tiny_model), *FAST])
    assert result.exit_code == 1
    assert "chelsea.png: No space left on device" in result.output
    assert _files(out) == ["astronaut.png", "trip/day1/rocket.jpg"]  # no partial, no temporary


def test_output_inside_input_is_not_read_back(runner: CliRunner, photos: Path, tiny_model: Path) -> None:
    out = photos / "upscaled"
    for _ in range(2):
        result = runner.invoke(app, ["dir", str(photos), "-o", str(out), "--model", str(tiny_model), *FAST])
        assert result.exit_code == 0, result.output
    assert _files(out) == ["astronaut.png", "trip/chelsea.png", "trip/day1/rocket.jpg"]


def test_image_command_and_clear_usage_errors(runner: CliRunner, tiny_model: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["image", str(EXAMPLES / "coffee.png"), "-o", str(tmp_path / "c.jpg"), "--model", str(tiny_model), *FAST])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "c.jpg") as img:
        assert img.format == "JPEG" and img.size == (600, 400)
    missing = runner.invoke(app, ["dir", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "not a folder" in missing.output
    bad_model = runner.invoke(app, ["image", str(EXAMPLES / "coffee.png"), "-o", str(tmp_path / "x.png"), "--model", "nonesuch"])
    assert bad_model.exit_code == 2 and "no built-in model of that name" in bad_model.output
    bad_overlap = runner.invoke(app, ["image", str(EXAMPLES / "coffee.png"), "-o", str(tmp_path / "x.png"), "--model", str(tiny_model), "--tile", "32", "--overlap", "16"])
    assert bad_overlap.exit_code == 2 and "under half the tile" in bad_overlap.output


def test_module_entry_point_has_help() -> None:
    result = subprocess.run([sys.executable, "-m", "upscaler", "dir", "--help"], capture_output=True, text=True, check=True)
    for flag in ("--scale", "--model", "--tile", "--overlap", "--device", "--precision", "--format", "--skip-existing", "--recursive"):
        assert flag in result.stdout


def test_ctrl_c_stops_cleanly_and_skip_existing_finishes(tmp_path: Path) -> None:
    source = numbered_copies(tmp_path / "in", 20)
    model = save_random_model(tmp_path / "m.safetensors", channels=24, blocks=3)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "upscaler", "dir", str(source), "-o", str(out), "--model", str(model), *FAST]
    returncode, output = interrupt_at_first_output(command, out, "frame*.png")
    assert_interrupted_cleanly(returncode, output, out, 20)
    finish = subprocess.run([*command, "--skip-existing"], capture_output=True, text=True, check=False)
    assert finish.returncode == 0, finish.stdout + finish.stderr
    assert len(list(out.iterdir())) == 20


def test_the_first_pictures_decode_while_the_model_opens(runner: CliRunner, photos: Path, tiny_model: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Start-up overlaps work: a decode finishes inside open_engine, which waits for it (no timing assumed)."""
    import threading

    from upscaler.engine import engine as engine_module
    from upscaler.jobs import pictures

    decoded = threading.Event()
    real_read, real_open = pictures.read_picture, engine_module.open_engine
    seen_inside: list[bool] = []

    def read(path: Path):  # type: ignore[no-untyped-def]
        picture = real_read(path)
        decoded.set()
        return picture

    def open_while_decoding(settings):  # type: ignore[no-untyped-def]
        seen_inside.append(decoded.wait(timeout=60))  # the model "loads" until a picture is decoded beside it
        return real_open(settings)

    monkeypatch.setattr(pictures, "read_picture", read)
    monkeypatch.setattr(engine_module, "open_engine", open_while_decoding)
    result = runner.invoke(app, ["dir", str(photos), "-o", str(tmp_path / "out"), "--model", str(tiny_model), *FAST])
    assert result.exit_code == 0, result.output
    assert seen_inside == [True] and len(_files(tmp_path / "out")) == 3

    def refuse(settings):  # type: ignore[no-untyped-def]
        decoded.wait(timeout=60)
        raise ValueError("no such model")

    monkeypatch.setattr(engine_module, "open_engine", refuse)
    failed = runner.invoke(app, ["dir", str(photos), "-o", str(tmp_path / "never"), "--model", "x", *FAST])
    assert failed.exit_code == 2 and "no such model" in failed.output and not (tmp_path / "never").exists()
