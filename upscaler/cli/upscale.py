"""`upscale dir` and `upscale image`: pictures through the engine, safely onto disk."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from upscaler.cli.app import EXIT_FAILED, EXIT_INTERRUPTED, app, console, fail
from upscaler.cli.options import ClusterOption, FormatOption, OutputFormat, SkipOption, run_options
from upscaler.cluster.ray_runner import ClusterRunner, cluster_runner
from upscaler.engine.engine import open_engine
from upscaler.engine.pipeline import JobRunner, Outcome, Summary, skip_existing
from upscaler.engine.settings import RunSettings
from upscaler.io.files import Job, discover, output_format, target_path


def _run_batch(jobs: list[Job], settings: RunSettings, skipped: int, cluster: str | None = None) -> None:
    """Upscale `jobs` with a progress bar, report each failure on one line, summarise, set the exit code."""
    with ExitStack() as resources:
        try:
            if cluster is None:
                engine = open_engine(settings)
                runner: JobRunner | ClusterRunner = JobRunner(jobs, engine.upscale)
                model, backend = engine.model.source, engine.description
            else:
                runner, info = resources.enter_context(cluster_runner(cluster, jobs, settings))
                model, backend = info.model, info.backend
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:  # while the model loads or a cluster starts: nothing was written yet
            raise fail("interrupted before any image was started", EXIT_INTERRUPTED) from None
        _report_batch(jobs, runner, skipped, model, backend)


def _report_batch(jobs: list[Job], runner: JobRunner | ClusterRunner, skipped: int, model: str, backend: str) -> None:
    summary = Summary(skipped=skipped)
    columns = (
        TextColumn("[bold]upscale[/]"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.2f} img/s"), TimeElapsedColumn(), TimeRemainingColumn(),
    )
    started = time.perf_counter()
    interrupted = False
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("upscale", total=len(jobs), rate=0.0)

        def report(outcome: Outcome) -> None:
            summary.add(outcome)
            if not outcome.ok:
                progress.console.print(f"[red]error:[/] {escape(f'{outcome.job.source}: {outcome.error}')}", highlight=False, soft_wrap=True)
            elapsed = time.perf_counter() - started
            progress.update(task, advance=1, rate=(summary.done + summary.failed) / max(elapsed, 1e-9))

        try:
            for outcome in runner:
                report(outcome)
        except KeyboardInterrupt:
            interrupted = True
        for outcome in runner.drain():
            report(outcome)
    summary.seconds = time.perf_counter() - started
    _print_summary(summary, model, backend)
    if interrupted:
        left = len(jobs) - summary.done - summary.failed
        raise fail(f"interrupted with {left} image(s) left; re-run with --skip-existing to finish", EXIT_INTERRUPTED)
    if summary.failed:
        raise typer.Exit(EXIT_FAILED)


def _print_summary(summary: Summary, model: str, backend: str = "") -> None:
    table = Table(title="upscale summary", show_header=False)
    table.add_row("model", model)
    if backend:
        table.add_row("backend", backend)
    table.add_row("written", str(summary.done))
    table.add_row("skipped (already there)", str(summary.skipped))
    table.add_row("failed", f"[red]{summary.failed}[/]" if summary.failed else "0")
    table.add_row("wall time", f"{summary.seconds:.2f} s")
    if summary.seconds > 0 and summary.done:
        table.add_row("images/s", f"{summary.done / summary.seconds:.2f}")
        table.add_row("input megapixels/s", f"{summary.input_pixels / 1e6 / summary.seconds:.3f}")
    console.print(table)


@app.command("dir")
@run_options
def upscale_dir(
    in_dir: Annotated[Path, typer.Argument(help="Folder of images to upscale.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder; relative paths are kept under it.")],
    settings: RunSettings,
    format: FormatOption = OutputFormat.keep,
    skip_existing_outputs: SkipOption = False,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Descend into sub-folders.")] = True,
    cluster: ClusterOption = None,
) -> None:
    """Upscale every image in a folder (PNG, JPEG, WebP, TIFF, BMP) into another folder.

    Outputs are written under a temporary name and renamed, so OUT never holds a partial file;
    a bad input is reported on one line and the rest goes on; the exit code is 1 if any failed.
    """
    if not in_dir.is_dir():
        raise fail(f"{in_dir}: not a folder")
    sources = discover(in_dir, out, recursive)
    try:
        jobs = [Job(src, target_path(src, in_dir, out, fmt), fmt) for src in sources for fmt in [output_format(src, format.value)]]
    except ValueError as exc:
        raise fail(str(exc)) from None
    skipped: list[Path] = []
    if skip_existing_outputs:
        jobs, skipped = skip_existing(jobs)
    if not sources:
        console.print(f"[yellow]no images found in {in_dir}[/]")
    _run_batch(jobs, settings, len(skipped), cluster)


@app.command("image")
@run_options
def upscale_image(
    source: Annotated[Path, typer.Argument(help="Image to upscale.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output file; its suffix picks the format unless --format says otherwise.")],
    settings: RunSettings,
    format: FormatOption = OutputFormat.keep,
    skip_existing_outputs: SkipOption = False,
) -> None:
    """Upscale one image."""
    from upscaler.io.images import SUFFIX_FORMATS

    if not source.is_file():
        raise fail(f"{source}: no such file")
    if format is not OutputFormat.keep:
        fmt = output_format(source, format.value)
    else:
        fmt = SUFFIX_FORMATS.get(out.suffix.lower()) or SUFFIX_FORMATS.get(source.suffix.lower(), "PNG")
    if skip_existing_outputs and out.exists():
        _print_summary(Summary(skipped=1), settings.model)
        return
    _run_batch([Job(source, out, fmt)], settings, 0)
