"""`Engine.identity`: it changes exactly when a setting changes pixels, and it keys video resume."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import photo_array, save_random_model
from tests.test_video import ffmpeg, upscale
from upscaler.engine.engine import Engine, open_engine
from upscaler.engine.settings import RunSettings
from upscaler.models.weights import load_model

FRAME = photo_array("coffee.png")[:60, :90]  # a real photo; 60x90 cut into tiles by --tile 16..48

_settings = st.fixed_dictionaries({
    "tile": st.sampled_from([None, 16, 24, 48]),
    "overlap": st.sampled_from([0, 4, 6]),
    "batch": st.sampled_from([1, 3]),
    "precision": st.sampled_from(["fp32", "bf16"]),
    "streams": st.sampled_from([1, 2, 5]),
    "memory_budget_mib": st.sampled_from([None, 64]),
    "scale": st.sampled_from([None, 2]),
})


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("identity")
    return [str(save_random_model(folder / f"m{seed}.safetensors", channels=8, blocks=1, seed=seed)) for seed in (0, 1)]


@functools.cache
def _engine(path: str, frozen: tuple[tuple[str, object], ...]) -> Engine:
    return open_engine(RunSettings(model=path, device="cpu", **dict(frozen)), load_model(path))


def _run(path: str, chosen: dict[str, object]) -> tuple[dict[str, object], np.ndarray]:
    engine = _engine(path, tuple(sorted(chosen.items())))
    return engine.identity(FRAME.shape[:2]), next(engine.stream([FRAME]))


@settings(max_examples=12, deadline=None)
@given(a=_settings, b=_settings, model_a=st.sampled_from([0, 1]), model_b=st.sampled_from([0, 1]))
def test_identity_changes_exactly_when_a_pixel_setting_does(models: list[str], a: dict[str, object], b: dict[str, object],
                                                          model_a: int, model_b: int) -> None:
    identity_a, pixels_a = _run(models[model_a], a)
    identity_b, pixels_b = _run(models[model_b], b)
    if identity_a == identity_b:  # the same key must mean the same pixels: a resume may splice them
        assert np.array_equal(pixels_a, pixels_b)
    # The model, precision, scale and tiling change pixels (the batch may, in reduced precision): another run.
    if model_a != model_b or any(a[k] != b[k] for k in ("tile", "overlap", "precision", "scale", "batch")):
        assert identity_a != identity_b
    # --streams changes no pixel; the memory budget only through the grid it chooses, which the key holds.
    if model_a == model_b and all(a[k] == b[k] for k in a if k not in ("streams", "memory_budget_mib")):
        assert (identity_a == identity_b) == (identity_a["grid"] == identity_b["grid"])


def test_identity_is_json_and_names_the_model_by_content(tmp_path: Path) -> None:
    first = save_random_model(tmp_path / "a.safetensors", channels=8, blocks=1, seed=3)
    moved = tmp_path / "elsewhere.safetensors"
    shutil.copy(first, moved)
    os.utime(moved, (1, 1))
    same = [open_engine(RunSettings(model=str(p), device="cpu")).identity((48, 64)) for p in (first, moved)]
    assert same[0] == same[1] and json.loads(json.dumps(same[0])) == same[0]
    assert same[0]["version"] == 1 and len(same[0]["model_sha256"]) == 64


def _killed_after_two_segments(command: list[str], work: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "upscaler", *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(work.glob("segment-*.packets"))) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (work / "manifest.json").is_file()


def test_a_pixel_setting_starts_afresh_and_streams_resume(tmp_path: Path) -> None:
    model = save_random_model(tmp_path / "m.safetensors", channels=8, blocks=1, seed=5)
    clip = tmp_path / "clip.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=12", "-frames:v", "24", "-c:v", "libx264", "-g", "3",
           "-pix_fmt", "yuv420p", clip)
    out, work = tmp_path / "out.mkv", tmp_path / ".upscale-work-out.mkv"
    command = ["video", str(clip), "-o", str(out), "--device", "cpu", "-m", str(model), "--segment-seconds", "0.2",
               "--tile", "24", "--overlap", "4"]
    _killed_after_two_segments(command, work)
    shutil.copytree(work, tmp_path / "kept")

    other_overlap = upscale(*command, "--overlap", "10")  # the reproduction: frames of two overlaps in one file
    assert other_overlap.returncode == 0, other_overlap.stderr
    assert "resuming:" not in other_overlap.stderr
    whole = tmp_path / "whole.mkv"
    fresh = upscale(*[str(whole) if c == str(out) else c for c in command], "--overlap", "10")
    assert fresh.returncode == 0, fresh.stderr
    assert _video_frames(out) == _video_frames(whole)

    out.unlink()
    shutil.copytree(tmp_path / "kept", work)
    # Streams change no pixel; a memory budget that leaves the same tiles (fixed at 24 here) neither.
    same_pixels = upscale(*command, "--streams", "4", "--memory-budget", "64")
    assert same_pixels.returncode == 0, same_pixels.stderr
    assert "resuming:" in same_pixels.stderr


def _video_frames(path: Path) -> list[bytes]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="yuv444p").tobytes() for f in container.decode(video=0)]


def test_the_video_job_key_names_the_chosen_video_stream(tmp_path: Path) -> None:
    """Two video streams in one file are two jobs: segments of one are never resumed into the other."""
    import dataclasses

    from upscaler.io.video import EncodeSettings, probe
    from upscaler.jobs.video import job_key

    clip = tmp_path / "clip.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=32x16:rate=5", "-frames:v", "2", "-c:v", "ffv1", clip)
    source = probe(clip)
    encoding = EncodeSettings("libx264", "yuv420p", {}, "matroska", global_header=True)
    key = job_key(source, encoding, {"model": "m"}, 1.0)
    assert key["stream"] == source.stream_index == 0
    assert job_key(dataclasses.replace(source, stream_index=1), encoding, {"model": "m"}, 1.0) != key
    assert job_key(probe(clip), encoding, {"model": "m"}, 1.0) == key  # and the same stream the same key
