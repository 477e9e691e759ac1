"""The read -> upscale -> write pipeline overlaps I/O with compute and stays bounded."""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from PIL import Image

from upscaler.engine.errors import FrameError
from upscaler.io.files import Job
from upscaler.io.images import Picture
from upscaler.io.stages import IO_NICENESS, Stages
from upscaler.jobs import pictures as pipeline

from .conftest import EXAMPLES, assert_complete_images


def at_once(upscale: Callable[[Picture, str], Picture]) -> pipeline.Launch:
    """A model call as a launch that does the work at once, as the CPU engine's does."""

    def launch(picture: Picture, out_format: str) -> Callable[[], Picture]:
        result = upscale(picture, out_format)
        return lambda: result

    return launch


def _unchanged(picture: Picture, _format: str) -> Callable[[], Picture]:
    return lambda: picture


def _jobs(tmp_path: Path, count: int) -> list[Job]:
    jobs = []
    for i in range(count):
        source = tmp_path / f"{i:03d}.png"
        shutil.copy(EXAMPLES / "chelsea.png", source)
        jobs.append(Job(source, tmp_path / "out" / source.name, "PNG"))
    return jobs


def test_reads_run_ahead_of_the_model_on_worker_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's first call waits for the second file's decode: it can only finish if reads run ahead, in parallel."""
    second_read = threading.Event()
    real_read = pipeline.read_picture

    threads: set[str] = set()

    def read(path: Path) -> Picture:
        threads.add(threading.current_thread().name)
        picture = real_read(path)
        if path.stem == "001":
            second_read.set()
        return picture

    def upscale(picture: Picture, _format: str) -> Picture:
        assert second_read.wait(timeout=30), "the second file was not decoded while the model worked on the first"
        return picture

    real_write = pipeline._write

    def write(job: Job, picture: Picture) -> None:
        threads.add(threading.current_thread().name)
        real_write(job, picture)

    monkeypatch.setattr(pipeline, "read_picture", read)
    monkeypatch.setattr(pipeline, "_write", write)
    outcomes = list(pipeline.run_jobs(_jobs(tmp_path, 6), at_once(upscale), lookahead=3))
    assert [o.job.source.stem for o in outcomes] == [f"{i:03d}" for i in range(6)]  # in order
    assert all(o.ok for o in outcomes) and [o.input_pixels for o in outcomes] == [112 * 75] * 6
    readers = {name for name in threads if name.startswith("read_")}
    writers = {name for name in threads if name.startswith("write_")}
    assert readers and writers and readers | writers == threads  # named for the debugger and py-spy


class Immediate(Executor):
    """Runs each task as it is submitted: a read is decoded the moment the runner asks for it."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = _Lazy(lambda: fn(*args, **kwargs))
        future.result()
        return future


class Deferred(Executor):
    """Runs each task when its result is first asked for: a write stays in flight until the runner awaits it."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return _Lazy(lambda: fn(*args, **kwargs))


class _Lazy(Future):  # type: ignore[type-arg]
    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__()
        self._call = call

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            try:
                self.set_result(self._call())
            except Exception as exc:  # noqa: BLE001 (handed to the caller, as a Future does)
                self.set_exception(exc)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return None if not self.done() else super().exception(timeout)


def _stepwise(jobs: list[Job], lookahead: int, max_bytes: int = pipeline.DEFAULT_LOOKAHEAD_BYTES,
              failing: int | None = None) -> tuple[pipeline.JobRunner, list[tuple[int, int]]]:
    """A runner that reads at once and writes only when it awaits a write; records (pictures read ahead, writes queued)
    per model call. The model call numbered `failing` raises, as a picture the model cannot handle."""
    queued: list[tuple[int, int]] = []

    def upscale(picture: Picture, _format: str) -> Picture:
        queued.append((len(runner.reads) + 1, len(runner.writes)))
        if len(queued) - 1 == failing:
            raise FrameError("not finite")
        return picture

    runner = pipeline.JobRunner(jobs, at_once(upscale), lookahead=lookahead, max_bytes=max_bytes)
    runner.readers.shutdown()
    runner.writers.shutdown()
    runner.readers, runner.writers = Immediate(), Deferred()  # type: ignore[assignment]
    return runner, queued


@pytest.mark.parametrize("lookahead", [2, 3])
def test_reads_ahead_and_writes_queued_are_bounded_by_the_lookahead_exactly(tmp_path: Path, lookahead: int) -> None:
    runner, queued = _stepwise(_jobs(tmp_path, 8), lookahead)
    outcomes = list(runner)
    assert [o.job.source.stem for o in outcomes] == [f"{i:03d}" for i in range(8)] and all(o.ok for o in outcomes)
    assert max(ahead for ahead, _ in queued) == lookahead
    assert max(writes for _, writes in queued) == lookahead  # one more and the oldest is awaited first
    assert len(list((tmp_path / "out").iterdir())) == 8


@pytest.mark.parametrize("alpha", [False, True])
def test_lookahead_is_bounded_in_bytes_exactly(tmp_path: Path, alpha: bool) -> None:
    """Room for two decoded pictures: two are held (read ahead or waiting to be written), never three."""
    jobs = _jobs(tmp_path, 8)
    if alpha:  # the alpha plane counts too
        rgba = Image.open(EXAMPLES / "chelsea.png").convert("RGBA")
        for job in jobs:
            rgba.save(job.source)
    first = pipeline.read_picture(jobs[0].source)
    size = first.color.nbytes + (first.alpha.nbytes if first.alpha is not None else 0)
    runner, queued = _stepwise(jobs, lookahead=8, max_bytes=2 * size)
    assert all(o.ok for o in runner) and len(queued) == 8
    assert max(ahead + writes for ahead, writes in queued) == 2
    runner, queued = _stepwise(jobs, lookahead=8, max_bytes=3 * size)
    assert all(o.ok for o in runner)
    assert max(ahead + writes for ahead, writes in queued) == 3


def test_at_the_byte_bound_a_write_still_overlaps_the_next_picture(tmp_path: Path) -> None:
    """Room for exactly two pictures: one waiting to be written and one upscaling fill it; nothing waits early."""
    size = pipeline.read_picture(_jobs(tmp_path, 1)[0].source).color.nbytes
    runner, queued = _stepwise(_jobs(tmp_path, 6), lookahead=8, max_bytes=2 * size)
    assert all(o.ok for o in runner)
    assert queued == [(2, 0), (1, 1)] * 3


def test_a_picture_that_failed_holds_no_bytes(tmp_path: Path) -> None:
    """Its place in the write queue costs nothing: the read it leaves room for starts at once."""
    size = pipeline.read_picture(_jobs(tmp_path, 1)[0].source).color.nbytes
    runner, queued = _stepwise(_jobs(tmp_path, 4), lookahead=8, max_bytes=3 * size, failing=1)
    assert [o.ok for o in runner] == [True, False, True, True]
    assert queued[2] == (2, 2)  # the third picture, with the fourth read beside it and [written, failed] queued


def test_lookahead_must_be_positive() -> None:
    with pytest.raises(ValueError, match="^lookahead must be at least 1$"):
        pipeline.JobRunner([], _unchanged, lookahead=0)
    assert list(pipeline.run_jobs([], _unchanged, lookahead=1)) == []


def test_defaults_reach_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[int, int, int, int]] = []

    class Recording(pipeline.JobRunner):
        def __init__(self, jobs: list[Job], launch: pipeline.Launch, lookahead: int, workers: int, max_bytes: int,
                     depth: int) -> None:
            made.append((lookahead, workers, max_bytes, depth))
            super().__init__(jobs, launch, lookahead, workers, max_bytes, depth)

    default = pipeline.JobRunner([], _unchanged)
    assert (default.lookahead, default.max_bytes, default.readers._max_workers, default.writers._max_workers, default.depth) == (4, 512 << 20, 2, 2, 0)
    monkeypatch.setattr(pipeline, "JobRunner", Recording)
    list(pipeline.run_jobs([], _unchanged))
    list(pipeline.run_jobs([], _unchanged, 2, 3, 1000, 1))
    assert made == [(4, 2, 512 << 20, 0), (2, 3, 1000, 1)]


def test_before_any_size_is_known_reads_start_one_at_a_time(tmp_path: Path) -> None:
    """A read not yet finished counts as the whole byte budget: no second decode starts until a size is known."""
    runner, queued = _stepwise(_jobs(tmp_path, 3), lookahead=4)
    runner.readers = Deferred()  # type: ignore[assignment]  # decodes wait until awaited: sizes stay unknown
    assert all(o.ok for o in runner)
    assert queued[0][0] == 1


def test_the_format_written_is_the_jobs_not_the_names(tmp_path: Path) -> None:
    """The job's format reaches the writer and the engine (which lays the pixels out for that format's encoder)."""
    source = _jobs(tmp_path, 1)[0].source
    told: list[str] = []

    def upscale(picture: Picture, fmt: str) -> Picture:
        told.append(fmt)
        return picture

    outcomes = list(pipeline.run_jobs([Job(source, tmp_path / "out" / "000.img", "TIFF")], at_once(upscale)))
    assert outcomes[0].ok and told == ["TIFF"]
    with Image.open(tmp_path / "out" / "000.img") as img:
        assert img.format == "TIFF"


def test_closing_early_waits_for_the_writes_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last write is held back until well after close() is called: close() must wait for it, not leave it."""
    release = threading.Event()
    real_write = pipeline._write

    def write(job: Job, picture: Picture) -> None:
        if job.source.stem == "001":
            assert release.wait(timeout=30)
        real_write(job, picture)

    monkeypatch.setattr(pipeline, "_write", write)
    outcomes = cast(Generator[pipeline.Outcome, None, None], pipeline.run_jobs(_jobs(tmp_path, 2), _unchanged, lookahead=4))
    assert next(outcomes).ok  # the first is on disk; the second write has been handed to a writer and waits
    timer = threading.Timer(0.3, release.set)
    timer.start()
    outcomes.close()  # run_jobs' finally: close() waits for every write already started
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["000.png", "001.png"]  # the held-back write finished before close() returned; no temporary
    assert_complete_images([tmp_path / "out" / name for name in names])
    timer.join()


def test_nothing_is_written_through_a_link_out_of_the_output_folder(tmp_path: Path) -> None:
    """A folder link planted inside OUT fails that file: the job's root, not the target's folder, is the limit."""
    job = _jobs(tmp_path, 1)[0]
    outside, out = tmp_path / "outside", tmp_path / "out"
    outside.mkdir()
    out.mkdir()
    (out / "sub").symlink_to(outside, target_is_directory=True)
    outcomes = list(pipeline.run_jobs([Job(job.source, out / "sub" / "000.png", "PNG", root=out)], _unchanged))
    assert not outcomes[0].ok and outcomes[0].error
    assert list(outside.iterdir()) == []


def test_skip_existing_splits_by_what_is_on_disk(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path, 3)
    (tmp_path / "out").mkdir()
    shutil.copy(jobs[1].source, jobs[1].target)  # a complete output
    jobs[2].target.write_bytes(b"")  # what a power cut can leave: redone
    todo, present = pipeline.skip_existing(jobs)
    assert todo == [jobs[0], jobs[2]] and present == [jobs[1].target]


def test_an_exception_in_the_model_fails_only_that_file(tmp_path: Path) -> None:
    calls = 0

    def flaky(picture: Picture, _format: str) -> Picture:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("CUDA error: an illegal memory access")
        return picture

    outcomes = list(pipeline.run_jobs(_jobs(tmp_path, 4), at_once(flaky)))
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

    def upscale(picture: Picture, _format: str) -> Picture:
        nonlocal live
        with lock:
            live -= 1
        return picture

    monkeypatch.setattr(pipeline, "read_picture", tracked_read)
    size = real_read(EXAMPLES / "chelsea.png").color.nbytes
    outcomes = list(pipeline.run_jobs(_jobs(tmp_path, 12), at_once(upscale), lookahead=8, max_bytes=2 * size))
    assert all(o.ok for o in outcomes) and len(outcomes) == 12
    assert max(held) <= 2


def test_interrupted_runs_count_every_write_that_finished(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path, 6)
    runner = pipeline.JobRunner(jobs, _unchanged, lookahead=3)
    seen = []
    for outcome in runner:
        seen.append(outcome)
        if len(seen) == 1:
            break  # as Ctrl-C would, while later writes are in flight
    seen += runner.drain()
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert [o.job.target.name for o in seen if o.ok] == written and len(written) >= 1


def test_an_interruption_finishes_exactly_the_writes_already_queued(tmp_path: Path) -> None:
    runner, queued = _stepwise(_jobs(tmp_path, 8), lookahead=3)
    iterator = cast(Generator[pipeline.Outcome, None, None], iter(runner))
    first = next(iterator)  # the fourth write queued forced the first one out
    assert first.ok and first.job.source.stem == "000" and queued[-1] == (3, 3)
    iterator.close()  # as Ctrl-C would, with three writes queued and reads decoded ahead
    rest = runner.drain()
    assert [o.job.source.stem for o in rest] == ["001", "002", "003"] and all(o.ok for o in rest)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000.png", "001.png", "002.png", "003.png"]
    assert runner.drain() == []


def test_each_failure_is_one_line_for_its_file(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path, 5)
    jobs[1].source.write_bytes(b"not a picture")
    (tmp_path / "blocked").write_text("a file where a folder should be")
    jobs[2] = Job(jobs[2].source, tmp_path / "blocked" / "002.png", "PNG")

    def upscale(picture: Picture, _format: str) -> Picture:
        if picture.color[0, 0, 0] == 0:
            raise ValueError("a model that refuses black")
        if picture.color[0, 0, 0] == 1:
            raise OSError("device lost")
        return picture

    jobs[3].source.write_bytes(b"")
    shutil.copy(EXAMPLES / "chelsea.png", jobs[4].source)
    black = pipeline.read_picture(jobs[4].source)
    black.color[0, 0, 0] = 0
    pipeline.encode_picture(black, "PNG", jobs[4].source)
    (tmp_path / "more").mkdir()
    lost = _jobs(tmp_path / "more", 2)
    black.color[0, 0, 0] = 1
    pipeline.encode_picture(black, "PNG", lost[1].source)
    outcomes = list(pipeline.run_jobs(jobs + lost, at_once(upscale)))
    assert [o.error for o in outcomes] == [
        None,
        "not a readable image (unknown or corrupt format)",
        "File exists",  # the OSError's own words (mkdir of the folder), not its repr
        "empty file",
        "ValueError: a model that refuses black",
        None,
        "device lost",  # an OSError without an errno: its message
    ]
    assert [o.input_pixels for o in outcomes] == [112 * 75, 0, 112 * 75, 0, 112 * 75, 112 * 75, 112 * 75]
    summary = pipeline.Summary()
    for outcome in outcomes:
        summary.add(outcome)
    assert (summary.done, summary.failed, summary.input_pixels) == (2, 5, 2 * 112 * 75)


def test_an_interruption_does_not_wait_for_reads_in_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while a big file is still decoding: the runner lets go at once, the decode finishes on its own."""
    reading, release = threading.Event(), threading.Event()
    real_read = pipeline.read_picture

    def read(path: Path) -> Picture:
        if path.stem == "001":
            reading.set()
            release.wait(timeout=60)
        return real_read(path)

    def upscale(picture: Picture, _format: str) -> Picture:
        assert reading.wait(timeout=60)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "read_picture", read)
    watchdog = threading.Timer(30, release.set)  # only a runner that waits for the read ever gets this far
    watchdog.start()
    runner = pipeline.JobRunner(_jobs(tmp_path, 4), at_once(upscale), lookahead=2)
    try:
        with pytest.raises(KeyboardInterrupt):
            list(runner)
        assert not release.is_set(), "the interrupted runner waited for a read in progress"
    finally:
        release.set()
        watchdog.cancel()
        runner.close()


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="niceness is per thread on Linux only")
def test_decoders_and_encoders_run_below_the_models_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both the batch pipeline's and the video stages' I/O threads yield the cores to the model's thread."""
    seen: dict[str, int] = {}
    real_read, real_write = pipeline.read_picture, pipeline._write

    def read(path: Path) -> Picture:
        seen["read"] = _niceness()
        return real_read(path)

    def write(job: Job, picture: Picture) -> None:
        seen["write"] = _niceness()
        real_write(job, picture)

    def upscale(picture: Picture, _format: str) -> Picture:
        seen["model"] = _niceness()
        return picture

    monkeypatch.setattr(pipeline, "read_picture", read)
    monkeypatch.setattr(pipeline, "_write", write)
    model = _niceness()
    assert all(o.ok for o in pipeline.run_jobs(_jobs(tmp_path, 2), at_once(upscale)))

    def frames() -> Iterator[tuple[None, np.ndarray]]:
        seen["decode"] = _niceness()
        yield None, np.zeros((2, 2, 3), np.uint8)

    def sink(_info: None, _frame: np.ndarray) -> None:
        seen["encode"] = _niceness()

    Stages[None]().run(frames(), lambda batch: iter(batch), sink)
    expected = max(model, IO_NICENESS)
    assert seen == {"read": expected, "write": expected, "model": model, "decode": expected, "encode": expected}
    assert _niceness() == model


def _recording_launch(events: list[str], failing: int | None = None) -> pipeline.Launch:
    """Records each launch and collect; the picture numbered `failing` fails when collected, as a device error would."""

    def launch(picture: Picture, _format: str) -> Callable[[], Picture]:
        index = sum(event.startswith("launch") for event in events)
        events.append(f"launch {index}")

        def collect() -> Picture:
            events.append(f"collect {index}")
            if index == failing:
                raise FrameError("the model's output is not finite (NaN or infinity) even in fp32; nothing was written")
            return picture

        return collect

    return launch


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_up_to_depth_pictures_stay_launched_while_the_oldest_is_collected(tmp_path: Path, depth: int) -> None:
    """On CUDA the next pictures are queued before the host waits for the oldest: the device never idles between pictures."""
    events: list[str] = []
    outcomes = list(pipeline.run_jobs(_jobs(tmp_path, 5), _recording_launch(events), lookahead=3, depth=depth))
    assert [o.job.source.stem for o in outcomes] == [f"{i:03d}" for i in range(5)] and all(o.ok for o in outcomes)
    in_flight, most = 0, 0
    for event in events:
        in_flight += 1 if event.startswith("launch") else -1
        most = max(most, in_flight)
    assert most == depth + 1 and in_flight == 0
    assert [e for e in events if e.startswith("collect")] == [f"collect {i}" for i in range(5)]
    assert events.index("collect 0") == events.index(f"launch {depth}") + 1  # collected as soon as `depth` are behind it
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i:03d}.png" for i in range(5)]


def test_a_failure_when_collected_fails_only_that_file(tmp_path: Path) -> None:
    events: list[str] = []
    outcomes = list(pipeline.run_jobs(_jobs(tmp_path, 4), _recording_launch(events, failing=1), depth=2))
    assert [o.ok for o in outcomes] == [True, False, True, True]
    assert outcomes[1].error == "the model's output is not finite (NaN or infinity) even in fp32; nothing was written"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000.png", "002.png", "003.png"]


def test_an_interruption_drops_launched_pictures_and_finishes_started_writes(tmp_path: Path) -> None:
    """Ctrl-C with pictures launched but not collected: those are never written, every started write completes."""
    events: list[str] = []
    recording = _recording_launch(events)

    def launch(picture: Picture, out_format: str) -> Callable[[], Picture]:
        if len(events) == 6:  # launches 0-3 and collects 0-1 done: pictures 2 and 3 are in flight
            raise KeyboardInterrupt
        return recording(picture, out_format)

    runner = pipeline.JobRunner(_jobs(tmp_path, 6), launch, lookahead=2, depth=2)
    seen: list[pipeline.Outcome] = []
    with pytest.raises(KeyboardInterrupt):
        for outcome in runner:
            seen.append(outcome)  # noqa: PERF402 - one at a time: the iteration is interrupted midway
    finished = seen + runner.drain()
    assert [o.job.source.stem for o in finished] == ["000", "001"] and all(o.ok for o in finished)
    assert events[-1] == "collect 1" and not runner.launched
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000.png", "001.png"]  # no temporaries either


@pytest.mark.parametrize("failing", [None, 1])
def test_launched_pictures_hold_their_bytes_and_a_failed_one_holds_none(tmp_path: Path, failing: int | None) -> None:
    """With room for three pictures and one launched ahead of the one collected: reads ahead, launched pictures and
    queued writes together never pass three; a picture that failed at launch holds nothing while it waits its turn."""
    jobs = _jobs(tmp_path, 8)
    size = pipeline.read_picture(jobs[0].source).color.nbytes
    held: list[int] = []

    def launch(picture: Picture, _format: str) -> Callable[[], Picture]:
        nbytes = [f.result().color.nbytes for _, f in runner.reads] + [s for _, _, s in runner.launched] + [
            s for _, _, s in runner.writes]
        held.append(sum(nbytes) + picture.color.nbytes)
        if len(held) - 1 == failing:
            raise FrameError("the model's output is not finite (NaN or infinity) even in fp32; nothing was written")
        return lambda: picture

    runner = pipeline.JobRunner(jobs, launch, lookahead=8, max_bytes=3 * size, depth=1)
    runner.readers.shutdown()
    runner.writers.shutdown()
    runner.readers, runner.writers = Immediate(), Deferred()  # type: ignore[assignment]
    assert [o.ok for o in runner] == [i != failing for i in range(8)]
    # at each launch, in pictures: full to the bound; the failed picture, waiting in line, takes no room
    assert held == [3 * size] * 7 + [(3 if failing else 2) * size]
