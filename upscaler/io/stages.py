"""Decode, engine and encode at once: a reader thread, the engine in the caller's thread, a writer thread.

Bounded queues between them keep memory flat however long the stream is, and keep the engine
busy while frames are decoded and encoded. A reader that fails (a truncated last frame) ends
the input, lets every frame before it through to the writer, and is re-raised at the end; a
writer that fails (downstream closed the pipe) stops everything at once.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar, cast

import numpy as np

M = TypeVar("M")
_END = object()
_POLL_S = 0.1
_READER_GRACE_S = 2.0
IO_NICENESS = 19  # decoders and encoders run at this niceness (Linux), the model's threads at the process's


def yield_to_the_model() -> None:
    """Lower the calling decode/encode thread's priority: it takes the cores the model leaves idle.

    On a CPU the model's threads fill every core and meet at a barrier after each operation, so an
    encoder that preempts one of them stalls them all; at a lower priority it runs in their gaps
    and, once its queue is full, while the model waits for it. Linux keeps niceness per thread;
    elsewhere the call would renice the whole process, so it does nothing there.
    """
    if sys.platform != "linux":
        return
    thread = threading.get_native_id()
    os.setpriority(os.PRIO_PROCESS, thread, max(os.getpriority(os.PRIO_PROCESS, thread), IO_NICENESS))


class Stages(Generic[M]):
    """One run of frames, each carrying metadata `M` (timestamps...) past the engine to the writer."""

    def __init__(self, depth: int = 4) -> None:
        self._stop = threading.Event()
        self._inbox: queue.Queue[object] = queue.Queue(depth)
        self._outbox: queue.Queue[object] = queue.Queue(depth)
        self._reader_error: BaseException | None = None
        self._writer_error: BaseException | None = None

    def run(
        self,
        source: Iterable[tuple[M, np.ndarray]],
        upscale: Callable[[Iterable[np.ndarray]], Iterator[np.ndarray]],
        sink: Callable[[M, np.ndarray], None],
    ) -> None:
        """Every frame of `source` through `upscale` into `sink`, in order; errors raised here."""
        reader = threading.Thread(target=self._read, args=(source,), name="decode", daemon=True)
        writer = threading.Thread(target=self._write, args=(sink,), name="encode", daemon=True)
        reader.start()
        writer.start()
        meta: deque[M] = deque()
        try:
            for frame in upscale(self._frames(meta)):
                if not self._put(self._outbox, (meta.popleft(), frame)):
                    break
            self._put(self._outbox, _END)
            writer.join()
        except _WriterFailed:
            pass
        finally:
            self._stop.set()
            reader.join(_READER_GRACE_S)  # a reader blocked on an idle pipe is a daemon; leave it
            writer.join()
        if self._writer_error is not None:
            raise self._writer_error
        if self._reader_error is not None:
            raise self._reader_error

    def _frames(self, meta: deque[M]) -> Iterator[np.ndarray]:
        while True:
            try:
                item = self._inbox.get(timeout=_POLL_S)
            except queue.Empty:
                if self._writer_error is not None:
                    raise _WriterFailed() from None
                continue
            if item is _END:
                return
            info, frame = cast(tuple[M, np.ndarray], item)
            meta.append(info)
            yield frame

    def _read(self, source: Iterable[tuple[M, np.ndarray]]) -> None:
        yield_to_the_model()
        try:
            for item in source:
                if not self._put(self._inbox, item):
                    return
        except Exception as exc:  # noqa: BLE001 - raised in the caller's thread once earlier frames are out
            self._reader_error = exc
        self._put(self._inbox, _END)

    def _write(self, sink: Callable[[M, np.ndarray], None]) -> None:
        yield_to_the_model()
        while not self._stop.is_set():
            try:
                item = self._outbox.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _END:
                return
            info, frame = cast(tuple[M, np.ndarray], item)
            try:
                sink(info, frame)
            except Exception as exc:  # noqa: BLE001 - raised in the caller's thread
                self._writer_error = exc
                self._stop.set()
                return

    def _put(self, box: queue.Queue[object], item: object) -> bool:
        """Block until there is room; False once everything is stopping."""
        while not self._stop.is_set():
            try:
                box.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False


class _WriterFailed(Exception):
    """The writer stopped on an error; that error is raised instead."""
