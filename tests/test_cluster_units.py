"""The cluster runner's own logic in this process: addresses, actor placement, paths shipped to
workers, and the picture worker itself (a real engine on real files, no Ray in between).

tests/test_cluster.py runs the same through a real local Ray; a worker's code runs in Ray's own
processes there, so what a worker does is pinned here, where a broken line shows.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from upscaler.cluster.ray_runner import (
    MAX_RESTARTS,
    MAX_TASK_RETRIES,
    RAY_MISSING,
    READY_TIMEOUT_S,
    ActorSpec,
    ClusterError,
    ClusterRunner,
    PictureWorker,
    WorkerInfo,
    WorkerLost,
    WorkerPool,
    _absolute,
    check_address,
    import_ray,
    plan_actors,
    shared_settings,
    start_pool,
)
from upscaler.engine.settings import RunSettings
from upscaler.io.files import Job
from upscaler.jobs.pictures import Outcome

from .conftest import EXAMPLES, ROOT, assert_complete_images, numbered_copies

FAST = {"tile": 64, "overlap": 8, "device": "cpu"}


@pytest.mark.parametrize("address", ["local", "auto", "ray://head:10001", "ray://"])
def test_the_three_kinds_of_address_are_taken(address: str) -> None:
    check_address(address)


@pytest.mark.parametrize("address", ["", "Local", "head:10001", "ray:/head", "http://head:8265", " auto"])
def test_any_other_address_is_refused_naming_the_three(address: str) -> None:
    with pytest.raises(ClusterError) as caught:
        check_address(address)
    assert str(caught.value) == (f"--cluster {address}: use local (start Ray on this machine), "
                                 "auto (join this machine's cluster) or ray://HOST:PORT")


def test_without_ray_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ClusterError) as caught:
        import_ray()
    assert str(caught.value) == RAY_MISSING
    assert "pip install -e '.[cluster]'" in RAY_MISSING


def _node(node_id: str, cpus: float | None, gpus: float = 0, alive: bool | None = True) -> dict[str, object]:
    resources: dict[str, float] = {"memory": 1e9} | ({"CPU": cpus} if cpus is not None else {}) | ({"GPU": gpus} if gpus else {})
    return {"NodeID": node_id, "Resources": resources} | ({"Alive": alive} if alive is not None else {})


def test_gpu_actors_share_their_nodes_cpus_and_cpu_only_runs_leave_gpus_alone() -> None:
    nodes = [_node("a", 7, 2), _node("b", 1, 2), _node("c", 4.0), _node("gone", 8, 1, alive=False), _node("unknown", 8, 1, alive=None)]
    assert plan_actors(nodes, "cuda") == [ActorSpec(3, 1, "a")] * 2 + [ActorSpec(0, 1, "b")] * 2
    assert plan_actors(nodes, "auto") == plan_actors(nodes, "cuda")
    assert plan_actors(nodes, "cpu") == [ActorSpec(7, 0, "a"), ActorSpec(1, 0, "b"), ActorSpec(4, 0, "c")]


def test_a_gpu_node_that_reports_no_cpus_gives_its_gpu_actors_none() -> None:
    assert plan_actors([_node("g", None, 1), _node("h", None, 2)], "auto") == [ActorSpec(0, 1, "g")] + [ActorSpec(0, 1, "h")] * 2


def test_cpu_actors_are_at_most_one_per_cpu_and_a_node_without_cpus_gets_none() -> None:
    nodes = [_node("a", 6), _node("b", 2), _node("c", None), _node("d", 0.5)]
    assert plan_actors(nodes, "auto", actors_per_node=3) == [ActorSpec(2, 0, "a")] * 3 + [ActorSpec(1, 0, "b")] * 2
    assert plan_actors(nodes, "auto") == [ActorSpec(6, 0, "a"), ActorSpec(2, 0, "b")]
    assert plan_actors([], "auto") == [] and plan_actors([_node("x", 0)], "cpu") == []


def test_relative_model_and_engine_folders_travel_absolute(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(tiny_model, tmp_path / "m.safetensors")
    monkeypatch.chdir(tmp_path)
    shipped = shared_settings(RunSettings(model="m.safetensors", engines=Path("engines"), tile=32))
    assert shipped == RunSettings(model=str(tmp_path / "m.safetensors"), engines=tmp_path / "engines", tile=32)
    named = shared_settings(RunSettings(model="clean", engines=Path("/abs/engines")))
    assert (named.model, named.engines) == ("clean", Path("/abs/engines"))  # a name is looked up on the worker


def test_jobs_travel_with_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    job = Job(Path("in/a.png"), Path("out/a.png"), "PNG", root=Path("out"), tiff_compression="zstd")
    assert _absolute(job) == Job(tmp_path / "in/a.png", tmp_path / "out/a.png", "PNG", tmp_path / "out", "zstd")
    assert _absolute(Job(Path("a.png"), Path("b.png"), "PNG")).root is None


def _jobs(source: Path, out: Path) -> list[Job]:
    return [Job(p, out / p.name, "PNG", root=out) for p in sorted(source.iterdir())]


def test_a_worker_writes_its_chunk_and_says_what_it_runs(tmp_path: Path, tiny_model: Path) -> None:
    source, out = numbered_copies(tmp_path / "in", 3, photo="chelsea.png"), tmp_path / "out"
    out.mkdir()
    worker = PictureWorker(RunSettings(model=str(tiny_model), **FAST))  # type: ignore[arg-type]
    assert worker.engine is not None
    assert worker.describe() == WorkerInfo(worker.engine.model.source, worker.engine.description)
    assert worker.describe().model.endswith("tiny.safetensors") and worker.describe().error is None
    assert worker.identity((32, 48)) == worker.engine.identity((32, 48))
    jobs = _jobs(source, out)
    outcomes = worker.run(jobs)
    assert [o.job for o in outcomes] == jobs and all(o.ok for o in outcomes)
    assert all(o.input_pixels == 112 * 75 for o in outcomes)  # chelsea.png is 112x75
    assert_complete_images([job.target for job in jobs])


def test_a_worker_whose_engine_did_not_open_fails_each_job_with_the_reason(tmp_path: Path) -> None:
    worker = PictureWorker(RunSettings(model=str(tmp_path / "missing.safetensors"), **FAST))  # type: ignore[arg-type]
    assert worker.engine is None
    info = worker.describe()
    assert (info.model, info.backend) == ("", "") and info.error and "missing.safetensors" in info.error
    assert worker.identity((8, 8)) is None
    jobs = [Job(tmp_path / f"{n}.png", tmp_path / "out" / f"{n}.png", "PNG") for n in "ab"]
    outcomes = worker.run(jobs)
    assert [(o.job, o.error) for o in outcomes] == [(j, f"the Ray worker's engine did not open: {info.error}") for j in jobs]
    assert not (tmp_path / "out").exists()


def test_a_stopped_worker_takes_no_new_chunk(tmp_path: Path, tiny_model: Path) -> None:
    worker = PictureWorker(RunSettings(model=str(tiny_model), **FAST))  # type: ignore[arg-type]
    worker.stop()
    assert worker.run([Job(EXAMPLES / "chelsea.png", tmp_path / "c.png", "PNG")]) == []
    assert not (tmp_path / "c.png").exists()


def test_stop_mid_chunk_finishes_the_files_begun_and_starts_no_other(tmp_path: Path, tiny_model: Path) -> None:
    """`stop` arrives (from the actor's second thread) while the second picture is being upscaled."""
    source, out = numbered_copies(tmp_path / "in", 12, photo="chelsea.png"), tmp_path / "out"
    out.mkdir()
    worker = PictureWorker(RunSettings(model=str(tiny_model), **FAST))  # type: ignore[arg-type]
    assert worker.engine is not None
    launch, launched = worker.engine.launch, []

    def launch_and_stop_at_the_second(*args: object, **kwargs: object) -> object:
        launched.append(args)
        if len(launched) == 2:
            worker.stop()
        return launch(*args, **kwargs)

    worker.engine.launch = launch_and_stop_at_the_second  # type: ignore[method-assign]
    jobs = _jobs(source, out)
    outcomes = worker.run(jobs)
    assert 2 <= len(outcomes) < len(jobs) and all(o.ok for o in outcomes)
    assert [o.job for o in outcomes] == jobs[: len(outcomes)]
    assert sorted(os.listdir(out)) == [job.target.name for job in jobs[: len(outcomes)]]  # no temporaries either
    assert_complete_images([o.job.target for o in outcomes])
    assert worker.run(jobs[len(outcomes):]) == []  # and a stopped worker stays stopped


# -- the pool, on a real local Ray, with actors that say which process did a unit ----------------


class Doubler:
    """A worker for the pool: `run` doubles a number in this actor's process; -1 kills the process."""

    def run(self, unit: int) -> tuple[int, int]:
        if unit == -1:
            os._exit(1)
        return unit * 2, os.getpid()

    def describe(self) -> WorkerInfo:
        return WorkerInfo("doubler", str(os.getpid()))

    def stop(self) -> None:
        pass


@pytest.fixture(scope="module")
def ray() -> Iterator[ModuleType]:
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}})
    yield ray
    ray.shutdown()


def _doublers(ray: ModuleType, count: int, restarts: int) -> list[object]:
    remote = ray.remote(max_concurrency=2)(Doubler)
    return [remote.options(num_cpus=0.1, max_restarts=restarts, max_task_retries=MAX_TASK_RETRIES).remote()
            for _ in range(count)]


def test_the_pool_gives_every_actor_one_unit_at_a_time_and_returns_each_unit_once(ray: ModuleType) -> None:
    pool: WorkerPool[int] = WorkerPool(ray, _doublers(ray, 2, restarts=0), "run")
    seen = []
    for unit, (doubled, _pid) in pool.map(range(8)):
        assert len(pool.in_flight) <= len(pool.actors) == 2  # never a unit queued behind another on one actor
        seen.append((unit, doubled))
    assert sorted(seen) == [(u, 2 * u) for u in range(8)]
    pids = {pid for _, (_, pid) in pool.map(range(8))}
    assert len(pids) == 2, pids  # both actors work
    pool.close()
    assert pool.actors == {}


def test_a_unit_that_kills_its_worker_is_given_up_and_the_restarted_worker_goes_on(ray: ModuleType) -> None:
    pool: WorkerPool[int] = WorkerPool(ray, _doublers(ray, 1, restarts=4), "run")
    results = dict(pool.map([1, -1, 2, 3]))
    lost = results.pop(-1)
    assert isinstance(lost, WorkerLost)
    died = re.fullmatch(r"its Ray worker died 2 times on it \((\w+)\); given up", lost.message)
    assert died, lost.message
    named = getattr(ray.exceptions, died.group(1), None)  # the error Ray raised, by its own name
    assert isinstance(named, type) and issubclass(named, ray.exceptions.RayActorError), lost.message
    assert {u: r[0] for u, r in results.items()} == {1: 2, 2: 4, 3: 6}
    assert len(pool.actors) == 1 and not pool.probing and not pool.in_flight
    pool.close()


def test_a_worker_that_cannot_restart_leaves_the_pool_and_its_units_go_to_the_others(ray: ModuleType) -> None:
    pool: WorkerPool[int] = WorkerPool(ray, _doublers(ray, 2, restarts=0), "run")
    results = list(pool.map([-1, 5, 6, 7]))
    assert sorted(u for u, _ in results) == [-1, 5, 6, 7]
    assert isinstance(dict(results)[-1], WorkerLost)
    assert {u: r[0] for u, r in results if u != -1} == {5: 10, 6: 12, 7: 14}
    assert len(pool.actors) == 1 and not pool.probing
    assert [u for u, _ in pool.map([8])] == [8]  # the survivor takes new work
    pool.close()


def test_units_left_when_no_worker_is_left_come_back_lost(ray: ModuleType) -> None:
    pool: WorkerPool[int] = WorkerPool(ray, _doublers(ray, 1, restarts=0), "run")
    results = list(pool.map([-1, 1, 2]))
    assert results[0][0] == -1 and isinstance(results[0][1], WorkerLost)
    assert [(u, r) for u, r in results[1:]] == [(1, WorkerLost("no Ray worker left to take it")),
                                                (2, WorkerLost("no Ray worker left to take it"))]
    assert pool.actors == {}


class Waiter:
    """A worker whose units (but 0) run until it is told to stop, as a long file would."""

    def __init__(self) -> None:
        self.stopping = threading.Event()

    def run(self, unit: int) -> tuple[str, int]:
        if unit and not self.stopping.wait(timeout=20):
            return "ran to the end", unit
        return ("stopped" if unit else "done"), unit

    def describe(self) -> WorkerInfo:
        return WorkerInfo("waiter")

    def stop(self) -> None:
        self.stopping.set()


def test_drain_stops_every_busy_worker_and_collects_all_they_finish(ray: ModuleType) -> None:
    remote = ray.remote(max_concurrency=2)(Waiter)
    actors = [remote.options(num_cpus=0.1).remote() for _ in range(3)]
    pool: WorkerPool[int] = WorkerPool(ray, actors, "run")
    results = pool.map([0, 1, 2, 3])
    assert next(results) == (0, ("done", 0))  # units 1 and 2 run; 3 waits for the first free worker
    assert sorted(pool.drain()) == [(1, ("stopped", 1)), (2, ("stopped", 2))]  # and never starts
    assert not pool.in_flight and not pool.pending
    assert list(results) == []
    pool.close()


def test_a_pool_closed_mid_run_kills_its_actors_for_good_and_answers_for_every_unit(ray: ModuleType) -> None:
    """Closing (an interrupt that skips drain) leaves nothing to ask: the unit running comes back lost, the rest unstarted."""
    remote = ray.remote(max_concurrency=2)(Waiter)
    actors = [remote.options(num_cpus=0.1, max_restarts=4, max_task_retries=MAX_TASK_RETRIES).remote() for _ in range(2)]
    pool: WorkerPool[int] = WorkerPool(ray, actors, "run")
    results = pool.map([0, 1, 2, 3])
    assert next(results) == (0, ("done", 0))  # unit 1 is running on the second actor and waits for `stop`
    assert [unit for unit, _ in pool.in_flight.values()] == [1]
    pool.close()
    assert pool.actors == {}
    rest = list(results)
    assert [u for u, _ in rest] == [1, 2, 3]
    assert isinstance(rest[0][1], WorkerLost) and rest[0][1].message.startswith("its Ray worker died")  # not retried
    assert [r for _, r in rest[1:]] == [WorkerLost("no Ray worker left to take it")] * 2
    assert not pool.in_flight and not pool.probing
    for actor in actors:
        with pytest.raises(ray.exceptions.RayActorError):  # killed for good, though Ray could have restarted it 4 times
            ray.get(actor.describe.remote(), timeout=60)


def test_a_probe_still_out_when_the_pool_closes_is_dropped_quietly(ray: ModuleType) -> None:
    pool: WorkerPool[int] = WorkerPool(ray, _doublers(ray, 1, restarts=0), "run")
    results = pool.map([-1])
    unit, lost = next(results)  # the actor died on it; the pool has asked the actor to describe itself
    assert unit == -1 and isinstance(lost, WorkerLost) and pool.probing == {0}
    pool.close()
    assert pool.drain() == [] and not pool.in_flight and not pool.probing and pool.actors == {}


# -- start_pool: the actors it asks Ray for --------------------------------------------------------


class Reporter:
    """A worker that says what it was built with and what Ray gave its process."""

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings

    def describe(self) -> WorkerInfo:
        import ray

        resources = ray.get_runtime_context().get_assigned_resources()
        return WorkerInfo(self.settings.device, ",".join(f"{k}={v:g}" for k, v in sorted(resources.items())))

    def run(self, unit: int) -> tuple[str, str, int]:
        import ray

        return ray.get_runtime_context().get_node_id(), self.settings.model, unit

    def stop(self) -> None:
        pass


def test_start_pool_on_local_ray_gives_its_actor_the_nodes_cpus_and_the_run_settings(ray: ModuleType) -> None:
    settings = RunSettings(model="clean", tile=64, device="cpu")
    pool, info = start_pool(ray, Reporter, settings, "run")
    try:
        assert len(pool.actors) == 1  # one node, no GPU: one actor
        assert info == WorkerInfo("cpu", "CPU=2")  # all the node's CPUs (the fixture's Ray has 2), no GPU
        assert list(pool.map([7])) == [(7, (ray.get_runtime_context().get_node_id(), "clean", 7))]
        actor = pool.actors[0]
    finally:
        pool.close()
    with pytest.raises(ray.exceptions.RayActorError):  # closed for good, despite its MAX_RESTARTS
        ray.get(actor.describe.remote(), timeout=60)


class _Ref:
    """A fake Ray's object ref: the call it stands for, made when asked for."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.call = call


class _Actor:
    """A fake Ray's actor: the worker itself, in this process, with the options it was started with."""

    def __init__(self, worker: Any, options: dict[str, Any], late: bool) -> None:
        self.worker, self.options, self.late = worker, options, late

    def __getattr__(self, name: str) -> SimpleNamespace:
        method = getattr(self.worker, name)
        return SimpleNamespace(remote=lambda *args: _Ref(lambda: method(*args)))


class FakeRay:
    """Enough of Ray for `start_pool`, recording what it is asked; the first `late` actors never answer."""

    exceptions = SimpleNamespace(RayActorError=RuntimeError)

    def __init__(self, nodes: list[dict[str, object]], late: int = 0) -> None:
        self._nodes, self.late = nodes, late
        self.decorated: list[dict[str, Any]] = []
        self.started: list[_Actor] = []
        self.killed: list[tuple[_Actor, bool]] = []
        self.timeouts: list[float | None] = []

    def nodes(self) -> list[dict[str, object]]:
        return self._nodes

    def remote(self, **options: Any) -> Callable[[type], SimpleNamespace]:
        self.decorated.append(options)

        def decorate(cls: type) -> SimpleNamespace:
            def start(**placement: Any) -> SimpleNamespace:
                def construct(*args: Any) -> _Actor:
                    actor = _Actor(cls(*args), placement, late=len(self.started) < self.late)
                    self.started.append(actor)
                    return actor

                return SimpleNamespace(remote=construct)

            return SimpleNamespace(options=start)

        return decorate

    def wait(self, refs: list[_Ref], num_returns: int, timeout: float | None = None) -> tuple[list[_Ref], list[_Ref]]:
        self.timeouts.append(timeout)
        late = {id(ref) for ref, actor in zip(refs, self.started) if actor.late}
        ready = [ref for ref in refs if id(ref) not in late]
        return ready[:num_returns], [ref for ref in refs if id(ref) in late]

    def get(self, refs: _Ref | list[_Ref]) -> Any:
        return [ref.call() for ref in refs] if isinstance(refs, list) else refs.call()

    def kill(self, actor: _Actor, *, no_restart: bool = True) -> None:
        self.killed.append((actor, no_restart))


class Built:
    """A worker that keeps the settings it was built with; its engine 'fails' if the model is named so."""

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings

    def describe(self) -> WorkerInfo:
        return WorkerInfo(self.settings.model, self.settings.device, "no such model" if self.settings.model == "bad" else None)


A, B = "a" * 56, "b" * 56  # node ids as Ray writes them (hex)


def _affinity(node_id: str) -> dict[str, object]:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return vars(NodeAffinitySchedulingStrategy(node_id, soft=True))


def _placements(fake: FakeRay) -> list[tuple[float, float, str | dict[str, object]]]:
    """(CPUs, GPUs, scheduling strategy) of each actor started, after checking what every actor shares."""
    for actor in fake.started:
        assert sorted(actor.options) == ["max_restarts", "max_task_retries", "num_cpus", "num_gpus", "scheduling_strategy"]
        assert (actor.options["max_restarts"], actor.options["max_task_retries"]) == (MAX_RESTARTS, MAX_TASK_RETRIES) == (8, 1)
    assert fake.decorated == [{"max_concurrency": 2}]  # `stop` must run beside `run`
    strategy = [a.options["scheduling_strategy"] for a in fake.started]
    return [(a.options["num_cpus"], a.options["num_gpus"], s if isinstance(s, str) else vars(s))
            for a, s in zip(fake.started, strategy)]


def test_start_pool_asks_ray_for_one_actor_per_gpu_with_cuda_settings_pinned_softly_to_its_node() -> None:
    pytest.importorskip("ray")
    fake = FakeRay([_node(A, 8, 2), _node(B, 3)])
    settings = RunSettings(model="clean", tile=64)
    pool, info = start_pool(fake, Built, settings, "run")  # type: ignore[arg-type]
    assert _placements(fake) == [(4, 1, _affinity(A))] * 2  # the CPU-only node is left out while GPUs exist
    assert [actor.worker.settings for actor in fake.started] == [replace(settings, device="cuda")] * 2
    assert info == WorkerInfo("clean", "cuda") and fake.timeouts == [READY_TIMEOUT_S] == [600.0]
    assert list(pool.actors.values()) == fake.started and pool.method == "run" and fake.killed == []


def test_start_pool_on_cpus_keeps_the_settings_and_places_actors_per_node() -> None:
    pytest.importorskip("ray")
    fake = FakeRay([_node(A, 8, 2), _node(B, 3)])
    settings = RunSettings(model="clean", device="cpu")
    pool, info = start_pool(fake, Built, settings, "run")  # type: ignore[arg-type]
    assert _placements(fake) == [(8, 0, _affinity(A)), (3, 0, _affinity(B))]  # --device cpu: GPUs left alone
    assert all(actor.worker.settings is settings for actor in fake.started) and info == WorkerInfo("clean", "cpu")
    fake = FakeRay([_node(B, 3), _node(None, 2)])  # type: ignore[arg-type]
    pool, _ = start_pool(fake, Built, settings, "describe", actors_per_node=2)  # type: ignore[arg-type]
    assert _placements(fake) == [(1, 0, _affinity(B))] * 2 + [(1, 0, "DEFAULT")] * 2  # no node id: Ray's own choice
    assert len(pool.actors) == 4 and pool.method == "describe"


def test_start_pool_drops_late_actors_and_fails_on_an_engine_error_or_when_none_is_ready() -> None:
    pytest.importorskip("ray")
    fake = FakeRay([_node(A, 4), _node(B, 4)], late=1)
    pool, info = start_pool(fake, Built, RunSettings(model="clean", device="cpu"), "run")  # type: ignore[arg-type]
    assert list(pool.actors.values()) == fake.started[1:] and fake.killed == [(fake.started[0], True)]
    assert info == WorkerInfo("clean", "cpu")
    fake = FakeRay([_node(A, 4), _node(B, 4)])
    with pytest.raises(ClusterError, match="^no such model$"):
        start_pool(fake, Built, RunSettings(model="bad", device="cpu"), "run")  # type: ignore[arg-type]
    assert fake.killed == [(actor, True) for actor in fake.started] and len(fake.started) == 2  # the pool is closed
    fake = FakeRay([_node(A, 4), _node(B, 4)], late=2)
    with pytest.raises(ClusterError, match=r"^no Ray worker started within 600 s \(is the cluster busy\?\)$"):
        start_pool(fake, Built, RunSettings(model="clean", device="cpu"), "run")  # type: ignore[arg-type]
    assert fake.killed == [(actor, True) for actor in fake.started]
    fake = FakeRay([_node(A, 0), _node(B, 4, alive=False)])
    with pytest.raises(ClusterError, match="^the Ray cluster has no node with a CPU or GPU to run on$"):
        start_pool(fake, Built, RunSettings(model="clean"), "run")  # type: ignore[arg-type]
    assert fake.started == [] and fake.decorated == []


# -- ClusterRunner: jobs in chunks, outcomes named as planned --------------------------------------


class ScriptedPool:
    """A pool that answers each chunk as `answer` says, and `drain` with what `settled` holds."""

    def __init__(self, actors: int, answer: Callable[[list[Job]], Any] = lambda chunk: [Outcome(j) for j in chunk]) -> None:
        self.actors = dict.fromkeys(range(actors))
        self.answer = answer
        self.mapped: list[list[Job]] = []
        self.settled: list[tuple[list[Job], Any]] = []

    def map(self, units: Iterable[list[Job]]) -> Iterator[tuple[list[Job], Any]]:
        for chunk in units:
            self.mapped.append(chunk)
            yield chunk, self.answer(chunk)

    def drain(self) -> list[tuple[list[Job], Any]]:
        return self.settled


def _numbered_jobs(count: int) -> list[Job]:
    return [Job(Path(f"in/{n}.png"), Path(f"out/{n}.png"), "PNG") for n in range(count)]


@pytest.mark.parametrize(("jobs", "actors", "sizes"), [
    (0, 1, []),
    (3, 1, [1, 1, 1]),  # fewer than four jobs per actor: one at a time
    (8, 1, [2] * 4),
    (10, 1, [2] * 5),
    (20, 1, [5] * 4),
    (100, 1, [8] * 12 + [4]),  # never more than CHUNK_FILES
    (8, 2, [1] * 8),
    (16, 2, [2] * 8),
    (40, 3, [3] * 13 + [1]),
    (9, 0, [2] * 4 + [1]),  # no actor (yet) counts as one
])
def test_jobs_go_in_chunks_of_a_quarter_per_actor_at_most_eight(jobs: int, actors: int, sizes: list[int]) -> None:
    planned = _numbered_jobs(jobs)
    runner = ClusterRunner(ScriptedPool(actors), planned)  # type: ignore[arg-type]
    assert [len(chunk) for chunk in runner.chunks] == sizes
    assert [job for chunk in runner.chunks for job in chunk] == [_absolute(job) for job in planned]  # each once, in order


def test_outcomes_name_the_jobs_as_planned_and_a_lost_chunk_fails_each_of_its_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    planned = _numbered_jobs(8)  # one actor: chunks of 2

    def answer(chunk: list[Job]) -> list[Outcome] | WorkerLost:
        if chunk[0].source.name == "2.png":
            return WorkerLost("its Ray worker died")
        return [Outcome(job, input_pixels=10 + int(job.source.stem)) for job in reversed(chunk)]

    pool = ScriptedPool(1, answer)
    runner = ClusterRunner(pool, planned)  # type: ignore[arg-type]
    assert runner.chunks == [[_absolute(planned[i]), _absolute(planned[i + 1])] for i in range(0, 8, 2)]
    assert all(job.source.is_absolute() for chunk in runner.chunks for job in chunk)  # what the workers get
    assert list(runner) == [Outcome(planned[1], input_pixels=11), Outcome(planned[0], input_pixels=10),
                            Outcome(planned[2], error="its Ray worker died"), Outcome(planned[3], error="its Ray worker died"),
                            Outcome(planned[5], input_pixels=15), Outcome(planned[4], input_pixels=14),
                            Outcome(planned[7], input_pixels=17), Outcome(planned[6], input_pixels=16)]
    assert pool.mapped == runner.chunks
    pool.settled = [(runner.chunks[1], [Outcome(_absolute(planned[3]), error="bad file")]),
                    (runner.chunks[2], WorkerLost("no Ray worker left to take it"))]
    assert runner.drain() == [Outcome(planned[3], error="bad file"), Outcome(planned[4], error="no Ray worker left to take it"),
                              Outcome(planned[5], error="no Ray worker left to take it")]
