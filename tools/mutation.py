"""Mutation score of the core modules, one module at a time: `python tools/mutation.py [MODULE ...]`.

Each module is mutated by mutmut in its own scratch copy under build/mutation/, against only the
fast test files that pyproject.toml's [tool.upscaler.mutation] lists for it, so a run costs
minutes per module, not the whole suite per mutant. The score is killed / (all - equivalent):
mutants listed in tools/mutation_equivalent.txt change no behaviour any test could see and are
left out of the denominator (each entry says why). Not part of CI; run it on demand.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / "build" / "mutation"
EQUIVALENT = ROOT / "tools" / "mutation_equivalent.txt"
KILLED = {"killed", "timeout", "caught by type check"}


def targets() -> dict[str, list[str]]:
    """Module path -> the test files that exercise it, from pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["upscaler"]["mutation"]["modules"]


def equivalent_mutants() -> set[str]:
    """Names of mutants judged equivalent: the first word of each non-comment line."""
    lines = EQUIVALENT.read_text().splitlines() if EQUIVALENT.exists() else []
    return {line.split()[0] for line in lines if line.strip() and not line.startswith("#")}


def _scratch_config(module: str, tests: list[str]) -> str:
    quoted = ", ".join(f'"{t}"' for t in tests)
    return (
        "[tool.mutmut]\n"
        'source_paths = ["upscaler"]\n'
        f'only_mutate = ["{module}"]\n'
        'also_copy = ["examples"]\n'
        f"pytest_add_cli_args_test_selection = [{quoted}]\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:randomly", "-q"]\n'
        'process_isolation = "forkserver"\n'
        "use_git_change_detection = false\n"
        # mutmut's default (15x the covering tests' time, 30x in CPU seconds) lets each mutant that
        # loops forever hold a core for half an hour; 5x still leaves a loaded machine its margin.
        "timeout_multiplier = 5.0\n"
        "[tool.pytest.ini_options]\n"
        'filterwarnings = ["ignore:The given NumPy array is not writable"]\n'
    )


def _scratch(module: str) -> Path:
    return SCRATCH / module.replace("/", ".").removesuffix(".py")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the mutated copy must be what is imported
    env.setdefault("UPSCALER_DATASETS", str(ROOT.parent / "shared" / "datasets"))
    return env


def run_module(module: str, tests: list[str], jobs: int) -> None:
    """Mutate `module` in a fresh scratch copy, testing every mutant."""
    work = _scratch(module)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for folder in ("upscaler", "tests", "examples"):
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (work / "pyproject.toml").write_text(_scratch_config(module, tests))
    with (work / "mutmut.log").open("w") as out:
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)], cwd=work, env=_env(),
                       stdout=out, stderr=subprocess.STDOUT, check=False)


def retest_survivors(module: str, tests: list[str], jobs: int) -> None:
    """Test the last run's survivors again against the current tests (the module's source unchanged).

    A killed mutant stays killed when tests are added, so this gives the same score as a full run
    in a fraction of its time; after editing the module itself, run it in full.
    """
    work = _scratch(module)
    if (work / "upscaler").is_dir() and (ROOT / module).read_bytes() != (work / module).read_bytes():
        raise SystemExit(f"{module} changed since its last run: run it in full")
    survivors = [name for name, status in statuses_of(module).items() if status not in KILLED]
    shutil.rmtree(work / "tests")
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "pyproject.toml").write_text(_scratch_config(module, tests))
    (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)  # which tests cover what: collected afresh
    with (work / "mutmut.log").open("a") as out:
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *survivors], cwd=work,
                       env=_env(), stdout=out, stderr=subprocess.STDOUT, check=False)


def statuses_of(module: str) -> dict[str, str]:
    """Each mutant's status from the module's last run (mutants not reached yet are "not checked")."""
    work = _scratch(module)
    listing = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, env=_env(),
                             capture_output=True, text=True, check=False).stdout if work.is_dir() else ""
    statuses = dict(re.findall(r"^\s+(\S+__mutmut_\d+): (.+)$", listing, re.MULTILINE))
    if not statuses:
        print(f"{module}: no mutmut results; see {work / 'mutmut.log'}", file=sys.stderr)
    return statuses


def report(module: str, statuses: dict[str, str], equivalent: set[str], verbose: bool) -> tuple[int, int]:
    """Print the module's line and its survivors; return (killed, non-equivalent total)."""
    counted = {name: status for name, status in statuses.items() if name not in equivalent}
    killed = sum(status in KILLED for status in counted.values())
    total = len(counted)
    share = 100 * killed / total if total else 0.0
    tally = Counter(statuses.values())
    skipped = len(statuses) - total
    print(f"{module:32} {killed:4d} / {total:4d} killed  {share:5.1f} %   ({skipped} equivalent; {dict(tally)})", flush=True)
    if verbose:
        for name, status in sorted(counted.items()):
            if status not in KILLED:
                print(f"    {status:12} {name}")
    return killed, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module paths (default: all in pyproject.toml)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested in parallel")
    parser.add_argument("--results", action="store_true", help="only print the scores of the last run (no new run)")
    parser.add_argument("--survivors", action="store_true",
                        help="test only the last run's survivors again, against the current tests (module unchanged)")
    parser.add_argument("-v", "--verbose", action="store_true", help="list the surviving mutants (`mutmut show NAME` in the scratch folder)")
    args = parser.parse_args()
    config = targets()
    modules = args.modules or list(config)
    unknown = [m for m in modules if m not in config]
    if unknown:
        parser.error(f"not configured in pyproject.toml [tool.upscaler.mutation.modules]: {', '.join(unknown)}")
    equivalent = equivalent_mutants()
    below = []
    for module in modules:
        if args.survivors:
            retest_survivors(module, config[module], args.jobs)
        elif not args.results:
            run_module(module, config[module], args.jobs)
        killed, total = report(module, statuses_of(module), equivalent, args.verbose)
        if not total or killed < 0.8 * total:
            below.append(module)
    if below:
        print(f"below 80 %: {', '.join(below)}")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
