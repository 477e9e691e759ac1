"""`upscale dir --cluster local` with 1 and 2 actors against the local path, in one run, same files.

local:      the `upscale dir` data path in this process (engine opened outside the timing), with
            torch's default threads (one per core) and with one thread: on a machine whose cores
            other work also wants, fewer threads than cores can win, so both are shown.
ray xN:     N actors on a local Ray, the node's CPUs split between them (engines opened outside
            the timing; Ray's start and the pool's start are reported apart).
Then what limits scaling on a real cluster: the driver's planning per file, the round trip of
one Ray call, and the filesystem traffic each image costs (read + written bytes).

    python benchmarks/cluster_dir.py ../shared/datasets/Set14/LR_bicubic/X4 --model default
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import ray
import torch

from upscaler.cluster.ray_runner import cluster_runner
from upscaler.engine.engine import open_engine
from upscaler.engine.settings import RunSettings
from upscaler.io.files import Job, discover, plan_jobs
from upscaler.jobs.pictures import Outcome, run_jobs, skip_existing


def plan(folder: Path, out: Path) -> list[Job]:
    """What `upscale dir --skip-existing` does on the driver before any work is shipped."""
    return skip_existing(plan_jobs(discover(folder, out, True).sources, folder, out, "keep"))[0]


def check(outcomes: list[Outcome], count: int) -> None:
    failed = [o for o in outcomes if not o.ok]
    if failed or len(outcomes) != count:
        raise SystemExit(f"{len(failed)} failed of {len(outcomes)}/{count}: {failed[0].error if failed else ''}")


def local(settings: RunSettings, folder: Path, threads: int) -> float:
    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        engine = open_engine(settings)
        with tempfile.TemporaryDirectory() as out:
            jobs = plan(folder, Path(out))
            start = time.perf_counter()
            check(list(run_jobs(jobs, engine.launch, depth=engine.depth)), len(jobs))
            return time.perf_counter() - start
    finally:
        torch.set_num_threads(default)


def on_ray(settings: RunSettings, folder: Path, actors_per_node: int) -> tuple[float, float]:
    """(seconds to start the pool, seconds to upscale the folder on it)."""
    with tempfile.TemporaryDirectory() as out:
        jobs = plan(folder, Path(out))
        start = time.perf_counter()
        with cluster_runner("local", jobs, settings, actors_per_node) as (runner, _):
            ready = time.perf_counter()
            check(list(runner), len(jobs))
            return ready - start, time.perf_counter() - ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", default="default")
    parser.add_argument("--copies", type=int, default=2, help="copies of the folder's images, for a longer run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, interleaved; the best is reported")
    args = parser.parse_args()

    settings = RunSettings(model=args.model, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for source in discover(args.folder, Path(tmp) / "nowhere", recursive=False).sources:
            for copy in range(args.copies):
                shutil.copy(source, folder / f"{copy}-{source.name}")
        count = len(list(folder.iterdir()))
        in_bytes = sum(p.stat().st_size for p in folder.iterdir())

        started = time.perf_counter()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - started

        best: dict[str, float] = {}
        pool_start: dict[str, float] = {}
        for _ in range(args.repeat):
            for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
                name = f"local, {threads} torch thread(s)"
                best[name] = min(best.get(name, float("inf")), local(settings, folder, threads))
            for actors in (1, 2):
                name = f"ray x{actors}"
                startup, seconds = on_ray(settings, folder, actors)
                best[name] = min(best.get(name, float("inf")), seconds)
                pool_start[name] = min(pool_start.get(name, float("inf")), startup)

        round_trip = measure_round_trip()
        with tempfile.TemporaryDirectory() as out:
            check(list(run_jobs(plan(folder, Path(out)), open_engine(settings).launch)), count)
            out_bytes = sum(p.stat().st_size for p in Path(out).iterdir())
        planning = measure_planning(Path(tmp))
        ray.shutdown()

    print(f"{count} images ({in_bytes / 1e6:.1f} MB in, {out_bytes / 1e6:.1f} MB out), model {args.model}, "
          f"{os.cpu_count()} CPUs; Ray start {ray_start:.1f} s")
    print("| path | wall s | images/s | pool start s |")
    print("|---|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.2f} | {count / seconds:.2f} | {pool_start.get(name, 0.0):.1f} |")
    print(f"driver planning: {planning * 1e6:.0f} us per file; one Ray actor call round trip: {round_trip * 1e3:.2f} ms")
    per_image = (in_bytes + out_bytes) / count
    print(f"filesystem traffic: {per_image / 1e6:.2f} MB per image (read + written); "
          f"at the best rate here that is {per_image * count / min(best.values()) / 1e6:.1f} MB/s")


def measure_planning(tmp: Path, files: int = 5000) -> float:
    """Seconds per file for the driver's planning (discover, names, skip-existing) on a folder of empty files."""
    folder = tmp / "plan"
    folder.mkdir()
    for i in range(files):
        (folder / f"{i:05d}.png").touch()
    start = time.perf_counter()
    plan(folder, tmp / "plan-out")
    return (time.perf_counter() - start) / files


@ray.remote
class _Echo:
    def echo(self, value: object) -> object:
        return value


def measure_round_trip(calls: int = 200) -> float:
    """Seconds for one call to an actor and its answer, carrying a chunk's worth of paths."""
    actor = _Echo.remote()  # type: ignore[attr-defined]
    chunk = [Job(Path(f"/shared/in/{i:06d}.png"), Path(f"/shared/out/{i:06d}.png"), "PNG") for i in range(8)]
    ray.get(actor.echo.remote(chunk))
    start = time.perf_counter()
    for _ in range(calls):
        ray.get(actor.echo.remote(chunk))
    seconds = (time.perf_counter() - start) / calls
    ray.kill(actor)
    return seconds


if __name__ == "__main__":
    main()
