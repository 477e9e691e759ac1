"""The read -> upscale -> write pipeline overlaps I/O with compute and stays bounded."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from upscaler.engine import pipeline
from upscaler.io.files import Job
from upscaler.io.images import Picture

from .conftest import EXAMPLES


def _jobs(tmp_path: Path, count: int) -> list[Job]:
    jobs = []
    for i in range(count):
        source = tmp_path / f"{i:03d}.png"
        shutil.copy(EXAMPLES / "chelsea.png", source)
        jobs.append(Job(source, tmp_path / "out" / source.name, "PNG"))
    return jobs


def test_bounded_lookahead_and_overlapped_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = threading.Lock()
    state = {"decoded": 0, "consumed": 0, "max_ahead": 0}
    events: list[str] = []
    real_read = pipeline.read_picture

    def counting_read(path: Path) -> Picture:
        picture = real_read(path)
        with lock:
            state["decoded"] += 1
            state["max_ahead"] = max(state["max_ahead"], state["decoded"] - state["consumed"])
            events.append(f"read {path.stem}")
        return picture

    def slow_upscale(picture: Picture) -> Picture:
        with lock:
            state["consumed"] += 1
        time.sleep(0.02)  # the model working
        with lock:
            events.append("upscaled")
        return picture

    monkeypatch.setattr(pipeline, "read_picture", counting_read)
    outcomes = list(pipeline.run_jobs(_jobs(tmp_path, 24), slow_upscale, lookahead=3))
    assert [o.job.source.stem for o in outcomes] == [f"{i:03d}" for i in range(24)]  # in order
    assert all(o.ok for o in outcomes)
    assert state["max_ahead"] <= 3
    # Decoding ran ahead of the model: later files were read before earlier ones finished.
    first_upscaled = events.index("upscaled")
    assert sum(e.startswith("read") for e in events[:first_upscaled]) >= 2


def test_an_exception_in_the_model_fails_only_that_file(tmp_path: Path) -> None:
    calls = 0

    def flaky(picture: Picture) -> Picture:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("CUDA error: an illegal memory access")
        return picture

    outcomes = list(pipeline.run_jobs(_jobs(tmp_path, 4), flaky))
    assert [o.ok for o in outcomes] == [True, False, True, True]
    assert "illegal memory access" in (outcomes[1].error or "")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000.png", "002.png", "003.png"]


def test_lookahead_is_bounded_in_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With room for two decoded pictures, no more than two are ever held, whatever the count limit."""
    held: list[int] = []
    live = 0
    lock = threading.Lock()
    real_read = pipeline.read_picture

    def tracked_read(path: Path) -> Picture:
        nonlocal live
        picture = real_read(path)
        with lock:
            live += 1
            held.append(live)
        return picture

    def upscale(picture: Picture) -> Picture:
        nonlocal live
        with lock:
            live -= 1
        return picture

    monkeypatch.setattr(pipeline, "read_picture", tracked_read)
    size = real_read(EXAMPLES / "chelsea.png").color.nbytes
    outcomes = list(pipeline.run_jobs(_jobs(tmp_path, 12), upscale, lookahead=8, max_bytes=2 * size))
    assert all(o.ok for o in outcomes) and len(outcomes) == 12
    assert max(held) <= 2


def test_interrupted_runs_count_every_write_that_finished(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path, 6)
    runner = pipeline.JobRunner(jobs, lambda picture: picture, lookahead=3)
    seen = []
    for outcome in runner:
        seen.append(outcome)
        if len(seen) == 1:
            break  # as Ctrl-C would, while later writes are in flight
    seen += runner.drain()
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert [o.job.target.name for o in seen if o.ok] == written and len(written) >= 1
