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
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from upscaler.cluster.ray_runner import (
    MAX_TASK_RETRIES,
    RAY_MISSING,
    ActorSpec,
    ClusterError,
    PictureWorker,
    WorkerInfo,
    WorkerLost,
    WorkerPool,
    _absolute,
    check_address,
    import_ray,
    plan_actors,
    shared_settings,
)
from upscaler.engine.settings import RunSettings
from upscaler.io.files import Job

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
    assert re.fullmatch(r"its Ray worker died 2 times on it \(\w+\); given up", lost.message), lost.message
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
