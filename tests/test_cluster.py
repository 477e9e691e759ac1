"""`upscale dir --cluster`: a real local Ray (2 CPUs), started once for the module, against the local run."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from upscaler.cli import app
from upscaler.cluster.ray_runner import ActorSpec, plan_actors

from .conftest import (
    EXAMPLES,
    ROOT,
    assert_complete_images,
    assert_interrupted_cleanly,
    interrupt_at_first_output,
    numbered_copies,
    save_random_model,
)

FAST = ["--tile", "64", "--overlap", "8", "--device", "cpu"]


def die_on_crash_files() -> None:
    """Ray worker setup hook: reading `crash-once*` kills the worker process the first time, `crash-always*` every time."""
    from upscaler.jobs import pictures as pipeline

    read = pipeline.read_picture

    def read_or_die(path: Path):  # type: ignore[no-untyped-def]
        marker = path.with_name(path.name + ".died")
        if path.name.startswith("crash-always") or (path.name.startswith("crash-once") and not marker.exists()):
            marker.touch()
            os._exit(1)
        return read(path)

    pipeline.read_picture = read_or_die


@pytest.fixture(scope="module")
def local_ray() -> Iterator[ModuleType]:
    """One Ray for the module (starting it costs seconds on 2 cores); `--cluster local` uses it as it is."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": f"{__name__}.die_on_crash_files",
                          # workers import this module by name wherever pytest was started
                          "env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}})
    yield ray
    ray.shutdown()


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    (folder / "trip").mkdir(parents=True)
    shutil.copy(EXAMPLES / "astronaut.png", folder / "astronaut.png")
    shutil.copy(EXAMPLES / "rocket.jpg", folder / "trip" / "rocket.jpg")
    shutil.copy(EXAMPLES / "chelsea.png", folder / "trip" / "chelsea.png")
    return folder


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _counts(output: str) -> dict[str, int]:
    """The summary table's counts, as printed."""
    rows = re.findall(r"│ (written|skipped \(already there\)|failed)\s+│ (\d+)", output)
    return {name: int(value) for name, value in rows}


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_without_ray_cluster_says_how_to_install_it(runner: CliRunner, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as on a machine without it
    result = runner.invoke(app, ["dir", str(photos), "-o", str(tmp_path / "out"), "--cluster", "local", *FAST])
    assert result.exit_code == 2
    assert _errors(result.output) == ["error: --cluster needs Ray, which is not installed: pip install -e '.[cluster]' in this checkout (or its wheel with [cluster])"]
    assert len(result.output.strip().splitlines()) == 1
    bad = runner.invoke(app, ["dir", str(photos), "-o", str(tmp_path / "out"), "--cluster", "http://head:8265", *FAST])
    assert bad.exit_code == 2 and "--cluster http://head:8265: use local (start Ray" in bad.output


def _node(node_id: str, cpus: int, gpus: int = 0, alive: bool = True) -> dict[str, object]:
    resources = {"CPU": float(cpus), "memory": 1e9} | ({"GPU": float(gpus)} if gpus else {})
    return {"NodeID": node_id, "Alive": alive, "Resources": resources}


def test_actors_one_per_gpu_else_per_node() -> None:
    gpu_nodes = [_node("a", 16, 2), _node("b", 8, 1), _node("c", 64), _node("dead", 8, 4, alive=False)]
    assert plan_actors(gpu_nodes, "auto") == [ActorSpec(8, 1, "a")] * 2 + [ActorSpec(8, 1, "b")]
    assert plan_actors(gpu_nodes, "cpu") == [ActorSpec(16, 0, "a"), ActorSpec(8, 0, "b"), ActorSpec(64, 0, "c")]
    cpu_nodes = [_node("a", 2), _node("b", 1), _node("empty", 0)]
    assert plan_actors(cpu_nodes, "auto") == [ActorSpec(2, 0, "a"), ActorSpec(1, 0, "b")]
    assert plan_actors(cpu_nodes, "auto", actors_per_node=2) == [ActorSpec(1, 0, "a")] * 2 + [ActorSpec(1, 0, "b")]


def test_cluster_writes_what_the_local_run_writes(local_ray: ModuleType, runner: CliRunner, photos: Path, tiny_model: Path, tmp_path: Path) -> None:
    args = ["dir", str(photos), "--model", str(tiny_model), *FAST]
    local = runner.invoke(app, [*args, "-o", str(tmp_path / "local")])
    cluster = runner.invoke(app, [*args, "-o", str(tmp_path / "cluster"), "--cluster", "local"])
    assert local.exit_code == 0, local.output
    assert cluster.exit_code == 0, cluster.output
    assert "1 Ray worker(s)" in cluster.output
    assert _counts(cluster.output) == _counts(local.output) == {"written": 3, "skipped (already there)": 0, "failed": 0}
    assert _files(tmp_path / "cluster") == _files(tmp_path / "local") == ["astronaut.png", "trip/chelsea.png", "trip/rocket.jpg"]
    for name in _files(tmp_path / "local"):
        with Image.open(tmp_path / "local" / name) as a, Image.open(tmp_path / "cluster" / name) as b:
            assert a.format == b.format and a.size == b.size and a.mode == b.mode
            difference = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
            if a.format == "PNG":
                assert difference.max() <= 1, name
            else:  # JPEG: a level of difference before encoding may move a block's coefficients a little more
                assert difference.mean() <= 0.5, name


def test_skip_existing_and_a_bad_file_as_locally(local_ray: ModuleType, runner: CliRunner, photos: Path, tiny_model: Path, tmp_path: Path) -> None:
    (photos / "notes.jpg").write_text("not a photo")
    results = {}
    for run, extra in (("local", []), ("cluster", ["--cluster", "local"])):
        out = tmp_path / run
        (out / "trip").mkdir(parents=True)
        shutil.copy(EXAMPLES / "coffee.png", out / "trip" / "chelsea.png")  # a complete image: kept as it is
        results[run] = runner.invoke(app, ["dir", str(photos), "-o", str(out), "--skip-existing", "--model", str(tiny_model), *FAST, *extra])
        assert (out / "trip" / "chelsea.png").read_bytes() == (EXAMPLES / "coffee.png").read_bytes()
        assert _files(out) == ["astronaut.png", "trip/chelsea.png", "trip/rocket.jpg"]
    local, cluster = results["local"], results["cluster"]
    assert cluster.exit_code == local.exit_code == 1
    assert _errors(cluster.output) == _errors(local.output)
    assert len(_errors(cluster.output)) == 1 and f"{photos / 'notes.jpg'}: not a readable image" in cluster.output
    assert _counts(cluster.output) == _counts(local.output) == {"written": 2, "skipped (already there)": 1, "failed": 1}


def test_a_model_the_workers_cannot_open_is_one_usage_error(local_ray: ModuleType, runner: CliRunner, photos: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["dir", str(photos), "-o", str(tmp_path / "out"), "--model", "nonesuch", *FAST, "--cluster", "local"])
    assert result.exit_code == 2
    assert len(_errors(result.output)) == 1 and "no built-in model of that name" in result.output


def test_a_worker_that_dies_is_replaced_and_one_that_always_dies_is_given_up(local_ray: ModuleType, runner: CliRunner, tiny_model: Path, tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    names = ["a.png", "crash-once.png", "b.png", "crash-always.png", "c.png", "d.png"]
    for name in names:
        shutil.copy(EXAMPLES / "chelsea.png", source / name)
    out = tmp_path / "out"
    result = runner.invoke(app, ["dir", str(source), "-o", str(out), "--model", str(tiny_model), *FAST, "--cluster", "local"])
    assert (source / "crash-once.png.died").exists() and (source / "crash-always.png.died").exists()  # both really died
    assert result.exit_code == 1, result.output
    errors = _errors(result.output)
    assert len(errors) == 1 and errors[0].startswith(f"error: {source / 'crash-always.png'}: its Ray worker died 2 times")
    assert _files(out) == sorted(set(names) - {"crash-always.png"})  # crash-once.png retried and written; no temporaries
    assert _counts(result.output) == {"written": 5, "skipped (already there)": 0, "failed": 1}
    assert_complete_images([out / name for name in _files(out)])


def test_ctrl_c_on_the_driver_stops_the_cluster_cleanly(local_ray: ModuleType, tmp_path: Path) -> None:
    source = numbered_copies(tmp_path / "in", 16)
    model = save_random_model(tmp_path / "m.safetensors", channels=24, blocks=3)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "upscaler", "dir", str(source), "-o", str(out), "--model", str(model), *FAST, "--cluster", "auto"]
    env = os.environ | {"RAY_ADDRESS": local_ray.get_runtime_context().gcs_address}  # join the module's Ray
    returncode, output = interrupt_at_first_output(command, out, "frame*.png", env)
    written = assert_interrupted_cleanly(returncode, output, out, 16)
    assert _counts(output)["written"] == len(written)
    left = int(re.search(r"interrupted with (\d+) image", output).group(1))  # type: ignore[union-attr]
    assert left == 16 - len(written)
