"""`upscale video --cluster`: the planned keyframe segments encoded by Ray actors, joined by the driver.

The driver plans the segments from the source's keyframe packets, skips those complete in the
work folder, and hands each missing one - a path and two timestamps, never pixels - to the
actor pool of `upscale dir --cluster`. An actor keeps its engine open, seeks to the segment's
keyframe, upscales and encodes it into the work folder under a temporary name and renames it
when complete; the driver alone records it in the manifest and, once all are there, muxes OUT
with the source's audio, subtitles and attachments. The source, OUT's folder and the model must
be on a filesystem every worker sees. A re-run after any interruption, even of the whole
cluster, encodes only the segments whose files are missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from upscaler.cluster.ray_runner import (
    ClusterError,
    PictureWorker,
    WorkerInfo,
    WorkerLost,
    WorkerPool,
    connected,
    shared_settings,
    start_pool,
)
from upscaler.engine.settings import RunSettings
from upscaler.io.video import VideoError
from upscaler.jobs.video import (
    PlannedSegment,
    RunStats,
    Segment,
    SegmentJob,
    WorkFolder,
    converter_for,
    encode_run,
)


@dataclass(frozen=True)
class SegmentResult:
    index: int
    segment: Segment | None  # None: failed (error says why) or skipped after `stop`
    extradata: bytes | None = None
    decoded: int = 0
    error: str | None = None


class SegmentWorker(PictureWorker):
    """A Ray actor's engine, kept open, encoding one planned segment per call."""

    def encode(self, unit: tuple[SegmentJob, PlannedSegment]) -> SegmentResult:
        job, planned = unit
        if self.stopping.is_set():
            return SegmentResult(planned.index, None)
        if self.engine is None:
            return SegmentResult(planned.index, None, error=f"the Ray worker's engine did not open: {self.info.error}")
        stats = RunStats()
        done: list[SegmentResult] = []

        def finished(index: int, segment: Segment, extradata: bytes | None) -> None:
            done.append(SegmentResult(index, segment, extradata))

        try:
            converter = converter_for(job.source, job.settings, job.scale, self.engine.device)
            encode_run(job.source, job.folder, [planned], job.settings, self.engine.stream, job.scale, converter,
                       finished, lambda: None, stats)
        except VideoError as exc:
            return SegmentResult(planned.index, None, decoded=stats.decoded, error=str(exc))
        except OSError as exc:
            return SegmentResult(planned.index, None, decoded=stats.decoded,
                                 error=f"{exc.filename or job.folder}: {exc.strerror or exc}")
        result = done[0]
        return SegmentResult(result.index, result.segment, result.extradata, stats.decoded)


class SegmentPool:
    """The started actors of one video run."""

    def __init__(self, pool: WorkerPool[tuple[SegmentJob, PlannedSegment]], info: WorkerInfo) -> None:
        self.pool, self.info = pool, info

    @classmethod
    @contextmanager
    def started(cls, address: str, settings: RunSettings) -> Iterator[SegmentPool]:
        """Connect to Ray and start one actor per GPU (or per CPU node), each with its engine open."""
        with connected(address) as ray:
            pool, info = start_pool(ray, SegmentWorker, shared_settings(settings), "encode")
            try:
                yield cls(pool, info)
            finally:
                pool.close()

    def identity(self, frame: tuple[int, int]) -> dict[str, Any]:
        """The workers' engine identity for frames of that size (they open one engine from the same settings)."""
        actor = next(iter(self.pool.actors.values()))
        identity = self.pool.ray.get(actor.identity.remote(frame))
        if identity is None:
            raise ClusterError("the Ray worker's engine did not open")
        return identity

    @property
    def workers(self) -> int:
        return len(self.pool.actors)

    def encode(self, job: SegmentJob, work: WorkFolder, plan: list[PlannedSegment],
               on_frames: Callable[[int], None]) -> RunStats:
        """Every planned segment the work folder lacks, in parallel; VideoError naming the first that failed.

        On Ctrl-C the actors finish their current segments, which are recorded before it propagates.
        """
        stats = RunStats(resumed_frames=work.frames, resumed_segments=len(work.segments))
        errors: list[str] = []

        def record(planned: PlannedSegment, result: SegmentResult | WorkerLost) -> None:
            if isinstance(result, WorkerLost):
                errors.append(f"{job.source.path}: segment {planned.index}: {result.message}")
                return
            stats.decoded += result.decoded
            if result.error is not None:
                errors.append(result.error)
            elif result.segment is not None:
                work.add(result.index, result.segment, result.extradata)
                stats.upscaled += result.segment.frames
                stats.encoded_segments += 1
                on_frames(result.segment.frames)

        try:
            for (_, planned), result in self.pool.map((job, planned) for planned in work.missing(plan)):
                record(planned, result)
        except KeyboardInterrupt:
            for (_, planned), result in self.pool.drain():
                record(planned, result)
            raise
        if errors:
            more = f" (and {len(errors) - 1} other segment(s) failed)" if len(errors) > 1 else ""
            raise VideoError(errors[0] + more)
        return stats
