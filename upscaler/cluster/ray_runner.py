"""`upscale dir --cluster`: the driver's jobs, upscaled by a pool of Ray actors that each keep one engine warm.

The driver plans (names, collisions, skip-existing) exactly as the local run and ships jobs -
paths, never pixels - so IN, OUT and the model must be on a filesystem every worker sees. An
actor runs the local data path (`JobRunner`: decoding and encoding beside inference, atomic
writes) over a small chunk of jobs per call, so a retried chunk can only rewrite whole files.
Ray places the actors (one per GPU, else one per node), restarts an actor whose process dies
and retries the chunks it held, both bounded; a file that fails by itself is an `Outcome` error,
reported once like the local run's.

`WorkerPool` knows nothing of pictures: it hands opaque units of work to an actor method, so
another command (video segments) needs only its own worker method and unit adapter.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar

from upscaler.engine.engine import Engine, open_engine
from upscaler.engine.settings import RunSettings
from upscaler.io.files import Job
from upscaler.jobs.pictures import JobRunner, Outcome

RAY_MISSING = "--cluster needs Ray, which is not installed: pip install -e '.[cluster]' in this checkout (or its wheel with [cluster])"
ADDRESSES = "local (start Ray on this machine), auto (join this machine's cluster) or ray://HOST:PORT"
MAX_RESTARTS = 8  # deaths of one actor's process that Ray repairs before giving the actor up
MAX_TASK_RETRIES = 1  # a unit that kills its worker twice is given up (one death may be the node's fault)
CHUNK_FILES = 8  # most jobs per call: enough to overlap decode/encode, little to redo after a death
READY_TIMEOUT_S = 600.0

U = TypeVar("U")


class ClusterError(RuntimeError):
    """The cluster cannot run this at all (no Ray, bad address, no worker started): a usage error."""


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise ClusterError(RAY_MISSING) from None
    return ray


def check_address(address: str) -> None:
    if address not in ("local", "auto") and not address.startswith("ray://"):
        raise ClusterError(f"--cluster {address}: use {ADDRESSES}")


@contextmanager
def connected(address: str) -> Iterator[ModuleType]:
    """Ray, connected to `address`; a Ray this process started is shut down on the way out.

    An already initialised Ray (a program embedding this one) is used as it is and left running.
    """
    check_address(address)
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        if address == "local":  # a new instance even if someone else's runs on this machine
            options["num_cpus"] = os.cpu_count()
        try:
            with warnings.catch_warnings():  # Ray Client warns before it raises; the error line says it all
                warnings.simplefilter("ignore")
                ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            raise ClusterError(f"--cluster {address}: cannot start or reach Ray: {exc}") from None
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class ActorSpec:
    num_cpus: float
    num_gpus: float
    node_id: str | None = None  # preferred node (soft: a restart may land elsewhere)


def plan_actors(nodes: list[dict[str, Any]], device: str, actors_per_node: int = 1) -> list[ActorSpec]:
    """One actor per GPU (its share of the node's CPUs for decoding), else `actors_per_node` per CPU node.

    `nodes` is `ray.nodes()`; `device` the run's --device (cpu keeps GPUs out of it).
    """
    alive = [node for node in nodes if node.get("Alive")]
    specs: list[ActorSpec] = []
    if device != "cpu":
        for node in alive:
            gpus, cpus = int(node["Resources"].get("GPU", 0)), int(node["Resources"].get("CPU", 0))
            specs += [ActorSpec(cpus // gpus, 1, node["NodeID"])] * gpus if gpus else []
    if specs:
        return specs
    for node in alive:
        cpus = int(node["Resources"].get("CPU", 0))
        count = min(actors_per_node, cpus)
        specs += [ActorSpec(cpus // count, 0, node["NodeID"])] * count if count else []
    return specs


@dataclass(frozen=True)
class WorkerInfo:
    model: str = ""
    backend: str = ""
    error: str | None = None  # why the engine did not open


class PictureWorker:
    """An engine opened once and kept warm; upscales chunks of jobs and writes them itself."""

    def __init__(self, settings: RunSettings) -> None:
        self.stopping = threading.Event()
        self.engine: Engine | None = None
        self.info = WorkerInfo()
        try:
            self.engine = open_engine(settings)
            self.info = WorkerInfo(self.engine.model.source, self.engine.description)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            self.info = WorkerInfo(error=str(exc))

    def describe(self) -> WorkerInfo:
        return self.info

    def identity(self, frame: tuple[int, int]) -> dict[str, Any] | None:
        """This worker's `Engine.identity` for frames of that size; None if its engine did not open."""
        return None if self.engine is None else self.engine.identity(frame)

    def stop(self) -> None:
        """Finish the file in progress and its writes, start no other (runs on the actor's second thread)."""
        self.stopping.set()

    def run(self, jobs: list[Job]) -> list[Outcome]:
        """Outcomes of the jobs done, in order; after `stop`, only those finished before it."""
        if self.stopping.is_set():
            return []
        if self.engine is None:  # a restart whose engine did not open (the first start's failure stops the run)
            return [Outcome(job, error=f"the Ray worker's engine did not open: {self.info.error}") for job in jobs]
        runner = JobRunner(jobs, self.engine.launch, depth=self.engine.depth)
        done: list[Outcome] = []
        outcomes = iter(runner)
        for outcome in outcomes:
            done.append(outcome)
            if self.stopping.is_set():
                break
        outcomes.close()  # type: ignore[attr-defined]
        return done + runner.drain()


@dataclass(frozen=True)
class WorkerLost:
    """A unit whose worker died more often than Ray retries it (or no worker was left to take it)."""

    message: str


_PROBE = object()


class WorkerPool(Generic[U]):
    """Live actors and the unit each is working on, refilled as units finish.

    One unit per actor: a unit queued behind one that kills the process would share its deaths
    (and its retries), so an innocent chunk could be given up with a poisoned one.

    A unit whose task fails after Ray's retries comes back as `WorkerLost`; its actor is then
    asked to describe itself, and rejoins the pool if Ray restarted it or leaves it if not.
    """

    def __init__(self, ray: ModuleType, actors: list[Any], method: str) -> None:
        self.ray, self.method = ray, method
        self.actors: dict[int, Any] = dict(enumerate(actors))
        self.pending: deque[U] = deque()
        self.in_flight: dict[Any, tuple[int, Any]] = {}  # object ref -> (actor key, unit or _PROBE)
        self.probing: set[int] = set()

    def map(self, units: Iterable[U]) -> Iterator[tuple[U, Any]]:
        """(unit, result or WorkerLost) in order of completion."""
        self.pending.extend(units)
        for key in list(self.actors):
            self._fill(key)
        while self.in_flight:
            ready, _ = self.ray.wait(list(self.in_flight), num_returns=1)
            yield from self._settle(ready[0])
        while self.pending:
            yield self.pending.popleft(), WorkerLost("no Ray worker left to take it")

    def _fill(self, key: int) -> None:
        if self.pending and key not in self.probing and all(k != key for k, _ in self.in_flight.values()):
            unit = self.pending.popleft()
            self.in_flight[getattr(self.actors[key], self.method).remote(unit)] = (key, unit)

    def _settle(self, ref: Any) -> Iterator[tuple[U, Any]]:
        key, unit = self.in_flight.pop(ref)
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            if unit is _PROBE:
                self.actors.pop(key, None)
                self.probing.discard(key)
                return
            result = WorkerLost(f"its Ray worker died {MAX_TASK_RETRIES + 1} times on it ({type(exc).__name__}); given up")
            if key not in self.probing and key in self.actors:
                self.probing.add(key)
                self.in_flight[self.actors[key].describe.remote()] = (key, _PROBE)
        if unit is _PROBE:
            self.probing.discard(key)
        else:
            yield unit, result
        if key in self.actors:
            self._fill(key)

    def drain(self) -> list[tuple[U, Any]]:
        """After an interruption: stop every actor after its current file and collect what was finished."""
        self.pending.clear()
        busy = {key for key, unit in self.in_flight.values() if unit is not _PROBE}
        for key in busy:
            self.actors[key].stop.remote()
        settled: list[tuple[U, Any]] = []
        while self.in_flight:
            settled += self._settle(next(iter(self.in_flight)))
        return settled

    def close(self) -> None:
        for actor in self.actors.values():
            self.ray.kill(actor, no_restart=True)
        self.actors.clear()


def start_pool(ray: ModuleType, worker: type, settings: RunSettings, method: str, actors_per_node: int = 1) -> tuple[WorkerPool[Any], WorkerInfo]:
    """Actors placed as `plan_actors` says, each with its engine open; ClusterError if none can work."""
    specs = plan_actors(ray.nodes(), settings.device, actors_per_node)
    if not specs:
        raise ClusterError("the Ray cluster has no node with a CPU or GPU to run on")
    remote = ray.remote(max_concurrency=2)(worker)  # `stop` runs beside `run`; the pool sends one unit at a time
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actors = []
    for spec in specs:
        strategy = NodeAffinitySchedulingStrategy(spec.node_id, soft=True) if spec.node_id else "DEFAULT"
        own = replace(settings, device="cuda") if spec.num_gpus else settings  # Ray shows each actor its GPU as cuda:0
        actors.append(remote.options(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, max_restarts=MAX_RESTARTS,
                                     max_task_retries=MAX_TASK_RETRIES, scheduling_strategy=strategy).remote(own))
    pool: WorkerPool[Any] = WorkerPool(ray, actors, method)
    try:
        info = _ready_info(ray, pool)
    except BaseException:
        pool.close()
        raise
    return pool, info


def _ready_info(ray: ModuleType, pool: WorkerPool[Any]) -> WorkerInfo:
    """Wait for the actors to open their engines; keep those that did in time, fail on any engine error."""
    asked = {actor.describe.remote(): key for key, actor in pool.actors.items()}
    ready, late = ray.wait(list(asked), num_returns=len(asked), timeout=READY_TIMEOUT_S)
    for ref in late:
        ray.kill(pool.actors.pop(asked[ref]), no_restart=True)
    infos: list[WorkerInfo] = ray.get(ready)
    errors = [info.error for info in infos if info.error]
    if errors:
        raise ClusterError(errors[0])
    if not infos:
        raise ClusterError(f"no Ray worker started within {READY_TIMEOUT_S:.0f} s (is the cluster busy?)")
    return infos[0]


class ClusterRunner:
    """Yields one Outcome per job as the cluster finishes it (completion order), like `JobRunner`.

    Jobs travel with absolute paths (a worker's working folder is not the driver's); outcomes
    come back naming the jobs as the driver planned them, so messages read as in a local run.
    """

    def __init__(self, pool: WorkerPool[list[Job]], jobs: list[Job]) -> None:
        self.pool = pool
        self.planned = {_absolute(job): job for job in jobs}
        size = max(1, min(CHUNK_FILES, len(jobs) // (4 * max(1, len(pool.actors)))))
        shipped = list(self.planned)
        self.chunks = [shipped[i:i + size] for i in range(0, len(shipped), size)]

    def __iter__(self) -> Iterator[Outcome]:
        for chunk, result in self.pool.map(self.chunks):
            yield from self._outcomes(chunk, result)

    def drain(self) -> list[Outcome]:
        """Stop the workers after their current files; outcomes of everything that finished."""
        return [outcome for chunk, result in self.pool.drain() for outcome in self._outcomes(chunk, result)]

    def _outcomes(self, chunk: list[Job], result: list[Outcome] | WorkerLost) -> list[Outcome]:
        if isinstance(result, WorkerLost):
            return [Outcome(self.planned[job], error=result.message) for job in chunk]
        return [replace(outcome, job=self.planned[outcome.job]) for outcome in result]


def _absolute(job: Job) -> Job:
    return replace(job, source=job.source.absolute(), target=job.target.absolute(),
                   root=None if job.root is None else job.root.absolute())


def shared_settings(settings: RunSettings) -> RunSettings:
    """A model or engine folder given as a relative path, made absolute for workers elsewhere."""
    model = Path(settings.model)
    return replace(settings, model=str(model.absolute()) if model.is_file() else settings.model,
                   engines=settings.engines.absolute())


@contextmanager
def cluster_runner(address: str, jobs: list[Job], settings: RunSettings, actors_per_node: int = 1) -> Iterator[tuple[ClusterRunner, WorkerInfo]]:
    """Connect, start the pool, and yield a runner for `jobs` with the workers' model and backend."""
    with connected(address) as ray:
        pool, info = start_pool(ray, PictureWorker, shared_settings(settings), "run", actors_per_node)
        try:
            yield ClusterRunner(pool, jobs), replace(info, backend=f"{info.backend}; {len(pool.actors)} Ray worker(s)")
        finally:
            pool.close()
