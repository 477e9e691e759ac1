"""`upscale video --cluster`: a real local Ray (2 CPUs) against the local run, and resume across a cluster restart."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from typer.testing import CliRunner

from upscaler.cli import app
from upscaler.io.video import VideoError, probe
from upscaler.jobs.video import plan_segments

from .test_video import decoded, ffmpeg, packets

SEGMENTS = ["--segment-seconds", "0.2"]  # a keyframe every 3 frames at 12 fps: one segment per keyframe


@pytest.fixture(scope="module")
def local_ray() -> Iterator[ModuleType]:
    """One Ray for the module (starting it costs seconds on 2 cores); `--cluster local` uses it as it is."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seconds of H.264 (keyframe every 3 frames) with AAC audio and an SRT subtitle."""
    folder = tmp_path_factory.mktemp("clips")
    (folder / "subs.srt").write_text("1\n00:00:00,100 --> 00:00:01,600\nhello\n")
    clip = folder / "clip.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=12", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000",
           "-i", folder / "subs.srt", "-frames:v", "24", "-t", "2", "-map", "0", "-map", "1", "-map", "2",
           "-c:v", "libx264", "-g", "3", "-pix_fmt", "yuv420p", "-c:a", "aac", "-c:s", "srt", clip)
    return clip


@pytest.fixture(scope="module")
def local_result(clip: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out.mkv"
    result = CliRunner().invoke(app, ["video", str(clip), "-o", str(out), "--device", "cpu", "-m", str(tiny_model), *SEGMENTS])
    assert result.exit_code == 0, result.output
    return out


def _failing_mux(*_: object) -> None:
    raise VideoError("the final mux fails (test)")


def _row(output: str, name: str) -> str:
    found = re.search(rf"│ {name}\s+│ ([^│]+?)\s+│", output)
    assert found, output
    return found.group(1)


def assert_same_video(out: Path, expected: Path) -> None:
    """Same frame count and timestamps, audio and subtitle packets byte for byte, pixels within 2 levels."""
    frames_out, pts_out = decoded(out)
    frames_expected, pts_expected = decoded(expected)
    assert len(frames_out) == len(frames_expected) == 24
    assert pts_out == pts_expected
    for kind in ("audio", "subtitle"):
        assert packets(out, kind) == packets(expected, kind)
    assert _worst(frames_out, frames_expected) <= 2


def _worst(frames: list[np.ndarray], expected: list[np.ndarray]) -> int:
    return max(int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(frames, expected, strict=True))


def test_segments_are_planned_at_keyframes_from_packets(clip: Path) -> None:
    plan = plan_segments(probe(clip), 0.2)
    assert [p.first_pts for p in plan] == [None, *range(250, 2000, 250)]  # ms timestamps, keyframes every 0.25 s
    assert [p.next_pts for p in plan] == [*range(250, 2000, 250), None]
    assert len(plan_segments(probe(clip), 0.6)) == 3  # the first keyframe at least 0.6 s after the last cut


def test_cluster_run_matches_the_local_run(local_ray: ModuleType, clip: Path, local_result: Path, tiny_model: Path,
                                           tmp_path: Path) -> None:
    out = tmp_path / "out.mkv"
    result = CliRunner().invoke(app, ["video", str(clip), "-o", str(out), "--device", "cpu", "-m", str(tiny_model),
                                      *SEGMENTS, "--cluster", "local"])
    assert result.exit_code == 0, result.output
    assert "Ray worker(s)" in _row(result.output, "backend")
    assert _row(result.output, "segments encoded this run") == "8 of 8"
    assert not list(tmp_path.glob(".upscale-*")), "the work folder is removed once OUT is complete"
    assert_same_video(out, local_result)


def test_rerun_after_an_interrupted_cluster_run_redoes_only_the_missing_segment(
        local_ray: ModuleType, clip: Path, local_result: Path, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.mkv"
    command = ["video", str(clip), "-o", str(out), "--device", "cpu", "-m", str(tiny_model), *SEGMENTS, "--cluster", "local"]
    monkeypatch.setattr("upscaler.jobs.video.mux", _failing_mux)  # every segment is encoded, the work folder stays
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 1, first.output
    work = tmp_path / f".upscale-work-{out.name}"
    assert len(list(work.glob("segment-*.packets"))) == 8
    monkeypatch.undo()
    (work / "segment-00003.packets").unlink()  # as if the worker encoding it had been lost with the cluster
    # A fresh process and a fresh Ray (`local` starts its own): the cluster restarted.
    rerun = subprocess.run([sys.executable, "-m", "upscaler", *command], capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming: 7 segment(s), 21 frame(s) already done" in rerun.stderr
    assert _row(rerun.stderr, "segments encoded this run") == "1 of 8"
    assert_same_video(out, local_result)


def test_open_gop_segments_encoded_apart_match_one_straight_run(tmp_path: Path, tiny_model: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Leading B-frames of an open GOP follow their keyframe in decode order: they stay with the segment before."""
    clip = tmp_path / "open.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=12", "-frames:v", "36", "-c:v", "libx264", "-pix_fmt", "yuv420p",
           "-x264-params", "open-gop=1:keyint=6:min-keyint=6:scenecut=0:bframes=3", clip)
    command = ["video", str(clip), "--device", "cpu", "-m", str(tiny_model), "--segment-seconds", "0.4"]
    straight, apart = tmp_path / "straight.mkv", tmp_path / "apart.mkv"
    assert CliRunner().invoke(app, [*command, "-o", str(straight)]).exit_code == 0
    monkeypatch.setattr("upscaler.jobs.video.mux", _failing_mux)  # the first run's mux fails: its segments stay
    assert CliRunner().invoke(app, [*command, "-o", str(apart)]).exit_code == 1
    monkeypatch.undo()
    work = tmp_path / f".upscale-work-{apart.name}"
    for index in (1, 3):
        (work / f"segment-0000{index}.packets").unlink()
    result = CliRunner().invoke(app, [*command, "-o", str(apart)])
    assert result.exit_code == 0, result.output
    assert _row(result.output, "segments encoded this run") == "2 of 6"
    frames_apart, pts_apart = decoded(apart)
    frames_straight, pts_straight = decoded(straight)
    assert pts_apart == pts_straight == decoded(clip)[1]
    assert _worst(frames_apart, frames_straight) <= 2
