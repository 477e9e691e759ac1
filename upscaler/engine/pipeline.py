"""The batch data path: read -> upscale -> write, with decoding and encoding beside inference.

Readers decode up to `lookahead` pictures ahead on worker threads while the model runs in
the calling thread; writers encode on worker threads, at most `lookahead` at a time, so
memory stays bounded however large the folder is. Pillow, ffmpeg and torch all release the
GIL while they work, so the threads really do overlap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from upscaler.io.files import Job, write_atomically
from upscaler.io.images import Picture, PictureError, encode_picture, read_picture

Upscale = Callable[[Picture], Picture]


@dataclass
class Outcome:
    job: Job
    error: str | None = None
    input_pixels: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def _read(job: Job) -> Picture:
    return read_picture(job.source)


def _write(job: Job, picture: Picture) -> None:
    write_atomically(job.target, lambda tmp: encode_picture(picture, job.format, tmp))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PictureError):
        return str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"{type(exc).__name__}: {exc}"


def run_jobs(jobs: list[Job], upscale: Upscale, lookahead: int = 4, workers: int = 2) -> Generator[Outcome, None, None]:
    """Yield one Outcome per job as its output is safely on disk (or has failed), in order.

    A failure of one job never stops the others. Closing the generator early (Ctrl-C)
    cancels the reads that have not started and lets the queued writes finish; each write
    is atomic, so every output name holds a complete file or nothing.
    """
    with ThreadPoolExecutor(workers, thread_name_prefix="read") as readers, ThreadPoolExecutor(
        workers, thread_name_prefix="write"
    ) as writers:
        reads: deque[tuple[Job, Future[Picture]]] = deque()
        writes: deque[tuple[Outcome, Future[None]]] = deque()
        pending = iter(jobs)
        try:
            for job in pending:
                reads.append((job, readers.submit(_read, job)))
                if len(reads) >= lookahead:
                    break
            while reads or writes:
                if reads:
                    job, future = reads.popleft()
                    next_job = next(pending, None)
                    if next_job is not None:
                        reads.append((next_job, readers.submit(_read, next_job)))
                    outcome = Outcome(job)
                    try:
                        picture = future.result()
                        outcome.input_pixels = picture.size[0] * picture.size[1]
                        writes.append((outcome, writers.submit(_write, job, upscale(picture))))
                    except Exception as exc:  # noqa: BLE001 (one bad file must not stop the batch)
                        outcome.error = _describe(exc)
                        writes.append((outcome, _done()))
                # Emit finished outcomes in order; block only when too many writes are in flight.
                while writes and (writes[0][1].done() or len(writes) > lookahead or not reads):
                    outcome, write = writes.popleft()
                    try:
                        write.result()
                    except Exception as exc:  # noqa: BLE001 (reported per file)
                        outcome.error = _describe(exc)
                    yield outcome
        finally:
            for _, future in reads:
                future.cancel()


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
    seconds: float = 0.0

    def add(self, outcome: Outcome) -> None:
        if outcome.ok:
            self.done += 1
            self.input_pixels += outcome.input_pixels
        else:
            self.failed += 1


def skip_existing(jobs: list[Job]) -> tuple[list[Job], list[Path]]:
    """Split into jobs still to do and targets already on disk (complete, thanks to atomic writes)."""
    todo: list[Job] = []
    present: list[Job] = []
    for job in jobs:
        (present if job.target.exists() else todo).append(job)
    return todo, [job.target for job in present]
