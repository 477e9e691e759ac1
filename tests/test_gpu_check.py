"""benchmarks/gpu_check.py's plan and report on the CPU (a tiny frame, a tiny budget), and gpu_kit.sh's wheel list."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from importlib.metadata import packages_distributions
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
assert _spec and _spec.loader
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check
_spec.loader.exec_module(gpu_check)


def test_dry_run_writes_sections_that_fit_and_marks_the_rest(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, size in enumerate([(12, 8), (8, 10)]):
        Image.new("RGB", size, (40 * i, 90, 160)).save(photos / f"p{i}.png")
    ctx = gpu_check.Context(torch.device("cpu"), width=16, height=8, frames=1, photos=photos)
    sections = [replace(s, estimate_s=0.0) for s in gpu_check.plan()]
    sections = [replace(s, estimate_s=1e6) if s.key == "6" else s for s in sections]  # cannot fit any budget
    report = gpu_check.Report(tmp_path / "out", "dry run")
    outcomes = {o.key: o for o in gpu_check.run_plan(sections, ctx, 60.0, report)}
    assert [outcomes[k].status for k in "12345678"] == ["skipped", "ok", "ok", "skipped", "skipped", "skipped",
                                                        "skipped", "skipped"]
    assert "needs about 1000000 s" in outcomes["6"].lines[0] and "needs a CUDA device" in outcomes["4"].lines[0]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## 2. fp16 streamed vs CPU fp32 [ok" in text and "| srresnet (random weights) | 4 |" in text
    assert "## 6. pictures of many sizes" in text and "skipped: needs about" in text
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["key"] for s in data["sections"]] == list("12345678")


def test_budget_skips_a_section_once_time_has_run_out(tmp_path: Path) -> None:
    now = [0.0]
    ran: list[str] = []

    def takes_50_s(ctx: object, key: str) -> list[str]:
        ran.append(key)
        now[0] += 50.0
        return [key]

    sections = [gpu_check.Section(k, k, 40, lambda ctx, k=k: takes_50_s(ctx, k)) for k in "abc"]
    report = gpu_check.Report(tmp_path, "budget")
    outcomes = gpu_check.run_plan(sections, gpu_check.Context(torch.device("cpu")), 60.0, report, clock=lambda: now[0])
    assert ran == ["a"] and [o.status for o in outcomes] == ["ok", "skipped", "skipped"]


def test_a_failing_section_is_reported_and_the_rest_runs(tmp_path: Path) -> None:
    def broken(ctx: object) -> list[str]:
        raise ValueError("boom")

    sections = [gpu_check.Section("a", "a", 0, broken), gpu_check.Section("b", "b", 0, lambda ctx: ["fine"])]
    outcomes = gpu_check.run_plan(sections, gpu_check.Context(torch.device("cpu")), 10.0, gpu_check.Report(tmp_path, "x"))
    assert [o.status for o in outcomes] == ["failed", "ok"] and "boom" in "".join(outcomes[0].lines)


def test_cuda_test_ids_are_found_by_reading_the_tests() -> None:
    ids = gpu_check.cuda_test_ids()
    assert "tests/test_streams_cuda.py" in ids and any(i.startswith("tests/test_pipe.py::") for i in ids)


def _module_files(name: str) -> list[Path]:
    path = ROOT / Path(*name.split("."))
    return [p for p in (path.with_suffix(".py"), path / "__init__.py") if p.is_file()]


def _third_party_reachable(starts: list[Path]) -> set[str]:
    """Top-level third-party names imported at module level by the files, following upscaler's modules."""
    seen: set[Path] = set()
    todo, found = list(starts), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "upscaler":
                    parts = name.split(".")
                    todo += [f for i in range(1, len(parts) + 1) for f in _module_files(".".join(parts[:i]))]
                elif top not in sys.stdlib_module_names and top not in ("tests", "conftest"):
                    found.add(top)
    return found


def test_gpu_kit_carries_every_third_party_import_the_check_reaches() -> None:
    """Test files needing a package neither carried nor present are left out of section 1 by name (cuda_test_ids)."""
    starts = [ROOT / "benchmarks" / "gpu_check.py", ROOT / "benchmarks" / "video_pipe.py", ROOT / "tests" / "conftest.py",
              ROOT / "upscaler" / "__main__.py"]
    starts += list((ROOT / "upscaler" / "cli").glob("*.py"))  # `upscale dir`/`pipe`/`video` in subprocesses
    kit = ROOT / "benchmarks" / "gpu_kit.sh"
    listed = {line.split("==")[0].lower().replace("_", "-")
              for what in ("wheels", "present")
              for line in subprocess.run(["bash", str(kit), what], capture_output=True, text=True, check=True).stdout.split()}
    dists = packages_distributions()
    missing = {name for name in _third_party_reachable(starts)
               if not {d.lower().replace("_", "-") for d in dists.get(name, [name])} & listed}
    assert not missing, f"gpu_kit.sh carries no wheel for {sorted(missing)}"
