"""The batch data path: read -> upscale -> write, with decoding and encoding beside inference.

Readers decode ahead on worker threads while the model runs in the calling thread; on CUDA the
next pictures are launched before the previous one is collected, so the device stays busy
across picture boundaries; writers encode on worker threads behind it. Readers and writers run
at a lower priority than the model's threads (`yield_to_the_model`). Pillow, ffmpeg, ISA-L and
torch all release the GIL while they work, so the threads really do overlap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from upscaler.engine.errors import FrameError
from upscaler.io.files import Job, is_complete, write_atomically
from upscaler.io.images import Picture, PictureError, encode_picture, read_picture
from upscaler.io.stages import yield_to_the_model

Launch = Callable[[Picture, str], Callable[[], Picture]]  # (picture, the format it will be written as) -> collect


@dataclass
class Outcome:
    job: Job
    error: str | None = None
    input_pixels: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def _write(job: Job, picture: Picture) -> None:
    write_atomically(job.target, lambda stream: encode_picture(picture, job.format, stream, job.tiff_compression), job.root)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (PictureError, FrameError)):
        return str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"{type(exc).__name__}: {exc}"


DEFAULT_LOOKAHEAD_BYTES = 512 << 20


class JobRunner:
    """Yields one Outcome per job as its output is safely on disk (or has failed), in order.

    Reads run ahead of the model on worker threads, at most `lookahead` pictures and at most
    `max_bytes` of decoded pixels held; `launch` starts each picture, and up to `depth` launched
    pictures stay uncollected (see `Engine.depth`); writes run behind within the same two bounds, so
    memory stays bounded however large the folder or its images. A failure of one job never
    stops the others. After an interruption (Ctrl-C inside or outside the iteration), `drain()`
    finishes the writes already started and returns their outcomes, so the summary counts
    every file that reached the disk; reads not yet started are cancelled and pictures launched
    but not collected are dropped. `launch` may come later (`attach`): `prefetch` starts the
    first decodes while the model is still loading.
    """

    def __init__(self, jobs: list[Job], launch: Launch | None = None, lookahead: int = 4, workers: int = 2,
                 max_bytes: int = DEFAULT_LOOKAHEAD_BYTES, depth: int = 0) -> None:
        if lookahead < 1:
            raise ValueError("lookahead must be at least 1")
        self.launch, self.lookahead, self.max_bytes, self.depth = launch, lookahead, max_bytes, depth
        self.pending = iter(jobs)  # shared by prefetch and the iteration: each job is read once
        self.readers = ThreadPoolExecutor(workers, thread_name_prefix="read", initializer=yield_to_the_model)
        self.writers = ThreadPoolExecutor(workers, thread_name_prefix="write", initializer=yield_to_the_model)
        self.reads: deque[tuple[Job, Future[Picture]]] = deque()
        self.launched: deque[tuple[Outcome, Callable[[], Picture] | None, int]] = deque()  # None: failed at launch
        self.writes: deque[tuple[Outcome, Future[None], int]] = deque()
        self.largest = 0  # bytes of the largest decoded picture so far

    def _held_bytes(self) -> int:
        """Decoded pixels held or being decoded (a read under way counts as the largest picture so far)."""
        held = 0
        for _, future in self.reads:
            if future.done() and future.exception() is None:
                self.largest = max(self.largest, _nbytes(future.result()))
                held += _nbytes(future.result())
            elif not future.done():
                held += self.largest or self.max_bytes  # size unknown before the first picture: one at a time
        return held + sum(size for _, _, size in self.launched) + sum(size for _, _, size in self.writes)

    def prefetch(self) -> None:
        """Start the first decodes now, within the bounds: before the model opens, they overlap its loading."""
        self._start_reads(self.pending)

    def attach(self, launch: Launch, depth: int) -> None:
        """The engine, once open: what starts each picture and how many may stay uncollected."""
        self.launch, self.depth = launch, depth

    def cancel(self) -> None:
        """Stop without running anything more (the model failed to open): decodes under way are dropped."""
        self._stop_reads()
        self.writers.shutdown(wait=True)

    def _stop_reads(self) -> None:
        for _, future in self.reads:
            future.cancel()
        self.reads.clear()
        self.launched.clear()
        self.readers.shutdown(wait=False, cancel_futures=True)

    def __iter__(self) -> Iterator[Outcome]:
        if self.launch is None:
            raise RuntimeError("JobRunner: attach() the engine before iterating")
        pending = self.pending
        try:
            while True:
                self._start_reads(pending)
                if not self.reads and not self.launched and not self.writes:
                    return
                if self.reads:
                    self.reads[0][1].exception()  # wait for the next picture, however its decode ends:
                    self._start_reads(pending)  # its size may let more decodes start before the model runs
                    self._launch_next()
                elif self.launched:
                    self._collect_next()  # no pictures left to launch
                while self.writes and (self.writes[0][1].done() or not self.reads or len(self.writes) > self.lookahead
                                       or self._held_bytes() > self.max_bytes):
                    yield self._settle(*self.writes.popleft())
        finally:
            self._stop_reads()

    def _start_reads(self, pending: Iterator[Job]) -> None:
        """Start decodes while both bounds allow; a picture of unknown size counts as the whole byte budget."""
        while len(self.reads) < self.lookahead and (not self.reads or self._held_bytes() + (self.largest or self.max_bytes) <= self.max_bytes):
            job = next(pending, None)
            if job is None:
                return
            self.reads.append((job, self.readers.submit(read_picture, job.source)))

    def _launch_next(self) -> None:
        job, future = self.reads.popleft()
        outcome = Outcome(job)
        try:
            picture = future.result()
            outcome.input_pixels = picture.size[0] * picture.size[1]
            assert self.launch is not None  # __iter__ checked
            self.launched.append((outcome, self.launch(picture, job.format), _nbytes(picture)))
        except Exception as exc:  # noqa: BLE001 (one bad file must not stop the batch)
            outcome.error = _describe(exc)
            self.launched.append((outcome, None, 0))
        while len(self.launched) > self.depth:
            self._collect_next()

    def _collect_next(self) -> None:
        """Wait for the oldest launched picture and start writing it."""
        outcome, collect, _ = self.launched.popleft()
        if collect is not None:
            try:
                result = collect()
                self.writes.append((outcome, self.writers.submit(_write, outcome.job, result), _nbytes(result)))
                return
            except Exception as exc:  # noqa: BLE001 (one bad file must not stop the batch)
                outcome.error = _describe(exc)
        self.writes.append((outcome, _done(), 0))

    def _settle(self, outcome: Outcome, write: Future[None], _size: int) -> Outcome:
        try:
            write.result()
        except Exception as exc:  # noqa: BLE001 (reported per file)
            outcome.error = _describe(exc)
        return outcome

    def drain(self) -> list[Outcome]:
        """Finish the writes in flight and return their outcomes (after an interruption)."""
        outcomes = [self._settle(*entry) for entry in self.writes]
        self.writes.clear()
        self.writers.shutdown(wait=True)
        return outcomes

    def close(self) -> None:
        self.writers.shutdown(wait=True)


def _nbytes(picture: Picture) -> int:
    return picture.color.nbytes + (0 if picture.alpha is None else picture.alpha.nbytes)


def run_jobs(jobs: list[Job], launch: Launch, lookahead: int = 4, workers: int = 2,
             max_bytes: int = DEFAULT_LOOKAHEAD_BYTES, depth: int = 0) -> Iterator[Outcome]:
    """All outcomes of `JobRunner`, in order, for callers that need no interruption handling."""
    runner = JobRunner(jobs, launch, lookahead, workers, max_bytes, depth)
    try:
        yield from runner
    finally:
        runner.close()


def _done() -> Future[None]:
    future: Future[None] = Future()
    future.set_result(None)
    return future


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    input_pixels: int = 0
    seconds: float = 0.0  # the work: from the first image started to the last one written
    startup_seconds: float = 0.0  # before it: imports, the model, the plan
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, why)

    def add(self, outcome: Outcome) -> None:
        if outcome.ok:
            self.done += 1
            self.input_pixels += outcome.input_pixels
        else:
            self.failed += 1
            self.failures.append((str(outcome.job.source), outcome.error or ""))

    def to_json(self, model: str, backend: str) -> dict[str, object]:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        return {"model": model, "backend": backend, "written": self.done, "skipped": self.skipped, "failed": self.failed,
                "startup_s": round(self.startup_seconds, 3), "work_s": round(self.seconds, 3), "images_per_s": rate,
                "input_megapixels_per_s": self.input_pixels / 1e6 / self.seconds if self.seconds > 0 else 0.0,
                "failures": [{"file": f, "error": e} for f, e in self.failures]}


def skip_existing(jobs: list[Job]) -> tuple[list[Job], list[Path]]:
    """Split into jobs still to do and targets already complete on disk.

    An empty or cut-short file under an output name (another program's, or one written before
    writes were synced) is not done: it is redone.
    """
    todo: list[Job] = []
    present: list[Job] = []
    for job in jobs:
        (present if is_complete(job.target) else todo).append(job)
    return todo, [job.target for job in present]
