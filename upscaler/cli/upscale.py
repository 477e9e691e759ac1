"""`upscale dir` and `upscale image`: pictures through the engine, safely onto disk (or a pipe)."""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from upscaler.cli.app import EXIT_FAILED, EXIT_INTERRUPTED, Interrupts, app, error, fail, warn
from upscaler.cli.options import (
    ClusterOption,
    FormatOption,
    JsonOption,
    OutputFormat,
    SkipOption,
    TiffCompression,
    TiffCompressionOption,
    open_engine_or_fail,
    run_options,
)
from upscaler.cli.report import Rate, print_summary, progress
from upscaler.engine.settings import RunSettings
from upscaler.io.files import (
    Job,
    clashes,
    discover,
    ignores_case,
    is_complete,
    plan_jobs,
    prepare_folder,
    same_file,
    write_atomically,
)
from upscaler.io.formats import DEFAULT_TIFF_COMPRESSION, FORMATS, SUFFIX_FORMATS

if TYPE_CHECKING:  # torch loads when a model opens, not for --help or a usage error
    from upscaler.cluster.ray_runner import ClusterRunner
    from upscaler.engine.engine import Engine
    from upscaler.jobs.pictures import JobRunner, Outcome, Summary

STDIO = Path("-")  # `-` for SOURCE or -o: standard input or output


def _prepare_output(folder: Path, recursive: bool) -> None:
    """OUT made and proven writable before any image is upscaled (after the model opened: a bad model leaves no OUT)."""
    try:
        prepare_folder(folder, recursive)
    except OSError as exc:
        raise fail(f"{folder}: cannot write there ({exc.strerror or exc})") from None


def _run_batch(jobs: list[Job], settings: RunSettings, skipped: int, prepare: Callable[[], None],
               cluster: str | None = None, as_json: bool = False) -> None:
    """Upscale `jobs` with a progress bar, report each failure on one line, summarise, set the exit code.

    `prepare` (making OUT) runs once the model or cluster is open: a bad model leaves no OUT behind.
    """
    from upscaler.jobs.pictures import JobRunner

    with ExitStack() as resources:
        try:
            if cluster is None:
                local = JobRunner(jobs)
                local.prefetch()  # the first pictures decode while torch and the model load
                engine = _open_or_cancel(settings, local)
                local.attach(engine.launch, engine.depth)
                runner: JobRunner | ClusterRunner = local
                model, backend = engine.model.source, engine.description
            else:
                from upscaler.cluster.ray_runner import cluster_runner

                runner, info = resources.enter_context(cluster_runner(cluster, jobs, settings))
                model, backend = info.model, info.backend
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:  # while the model loads or a cluster starts: nothing was written yet
            raise fail("interrupted before any image was started", EXIT_INTERRUPTED) from None
        prepare()
        _report_batch(jobs, runner, skipped, model, backend, as_json)


def _open_or_cancel(settings: RunSettings, runner: JobRunner) -> Engine:
    """Open the engine (torch loads here); if it cannot open, the decodes started for it stop."""
    from upscaler.engine.engine import open_engine

    try:
        return open_engine(settings)
    except BaseException:
        runner.cancel()
        raise


def _report_batch(jobs: list[Job], runner: JobRunner | ClusterRunner, skipped: int, model: str, backend: str,
                  as_json: bool) -> None:
    from upscaler import PROCESS_STARTED
    from upscaler.jobs.pictures import JobRunner, Summary

    summary = Summary(skipped=skipped)
    rate = Rate()
    with Interrupts(raises=not isinstance(runner, JobRunner)) as interrupts, progress("images", "img/s") as bar:
        task = bar.add_task("upscale", total=len(jobs), rate=0.0)

        def report(outcome: Outcome) -> None:
            summary.add(outcome)
            if not outcome.ok:
                error(f"{outcome.job.source}: {outcome.error}")
            bar.update(task, advance=1, rate=rate.tick())

        outcomes = iter(runner)
        try:
            for outcome in outcomes:
                report(outcome)
                if interrupts.count:
                    break
        except KeyboardInterrupt:
            pass  # a cluster's Ctrl-C, acknowledged by `interrupts`
        outcomes.close()  # type: ignore[attr-defined]  # both runners iterate as generators
        for outcome in runner.drain():
            report(outcome)
    interrupted = interrupts.count > 0
    summary.seconds, summary.startup_seconds = rate.elapsed, rate.started - PROCESS_STARTED
    _print_summary(summary, model, backend, as_json)
    if interrupted:
        left = len(jobs) - summary.done - summary.failed
        raise fail(f"interrupted with {left} image(s) left; re-run with --skip-existing to finish", EXIT_INTERRUPTED)
    if summary.failed:
        raise typer.Exit(EXIT_FAILED)


def _print_summary(done: Summary, model: str, backend: str = "", as_json: bool = False) -> None:
    """The summary table on stderr, or with --json the same facts (and each failure) as JSON on stdout."""
    if as_json:
        typer.echo(json.dumps(done.to_json(model, backend), indent=2))
        return
    rows = [("model", model), *([("backend", backend)] if backend else []), ("written", str(done.done)),
            ("skipped (already there)", str(done.skipped)), ("failed", f"[red]{done.failed}[/]" if done.failed else "0"),
            ("start-up", f"{done.startup_seconds:.2f} s (imports, model, plan)")]
    print_summary("upscale summary", rows, done.seconds, done.done, "images/s", done.input_pixels)


@app.command("dir")
@run_options
def upscale_dir(
    in_dir: Annotated[Path, typer.Argument(help="Folder of images to upscale.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder; relative paths are kept under it.")],
    settings: RunSettings,
    format: FormatOption = OutputFormat.keep,
    tiff_compression: TiffCompressionOption = TiffCompression.deflate,
    skip_existing_outputs: SkipOption = False,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Descend into sub-folders.")] = True,
    cluster: ClusterOption = None,
    as_json: JsonOption = False,
) -> None:
    """Upscale every image in a folder (PNG, JPEG, WebP, TIFF, BMP) into another folder.

    Outputs are written under a temporary name and renamed, so OUT never holds a partial file;
    a bad input is reported on one line and the rest goes on; the exit code is 1 if any failed.
    """
    if out == STDIO:
        raise fail("dir writes a folder; -o - (standard output) is for `upscale image`")
    if not in_dir.is_dir():
        raise fail(f"{in_dir}: not a folder")
    if same_file(in_dir, out):
        raise fail(f"{out}: OUT is the input folder itself; the outputs would replace the inputs; choose another -o")
    try:
        found = discover(in_dir, out, recursive)
    except OSError as exc:
        raise fail(f"{in_dir}: cannot list the folder ({exc.strerror})") from None
    for path, reason in found.passed_over:
        warn(f"{path}: {reason}")
    jobs = plan_jobs(found.sources, in_dir, out, format.value, tiff_compression.value)
    problems = clashes(jobs, fold_case=ignores_case(out))
    if problems:
        for problem in problems[:-1]:
            error(problem)
        raise fail(problems[-1])
    if not found.sources:
        warn(f"no images found in {in_dir}")
        return
    skipped: list[Path] = []
    if skip_existing_outputs:
        from upscaler.jobs.pictures import skip_existing

        jobs, skipped = skip_existing(jobs)
    _run_batch(jobs, settings, len(skipped), lambda: _prepare_output(out, recursive), cluster, as_json)


def _file_format(out: Path, requested: OutputFormat) -> str:
    """Pillow's format to write to the file `out`: its suffix must name one, and agree with --format."""
    by_suffix = SUFFIX_FORMATS.get(out.suffix.lower())
    if by_suffix is None:
        known = ", ".join(sorted(SUFFIX_FORMATS))
        raise fail(f"{out}: no image format has the suffix {out.suffix or '(none)'!r}; use one of {known}")
    if requested is not OutputFormat.keep and FORMATS[requested.value] != by_suffix:
        raise fail(f"{out}: the suffix says {by_suffix} but --format says {requested.value}; make them agree")
    return by_suffix


@app.command("image")
@run_options
def upscale_image(
    source: Annotated[Path, typer.Argument(help="Image to upscale; - reads it from standard input.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output file (its suffix picks the format); - writes to standard output.")],
    settings: RunSettings,
    format: FormatOption = OutputFormat.keep,
    tiff_compression: TiffCompressionOption = TiffCompression.deflate,
    skip_existing_outputs: SkipOption = False,
    as_json: JsonOption = False,
) -> None:
    """Upscale one image; `upscale image - -o - --format png` works in a pipeline."""
    if source != STDIO and not source.is_file():
        raise fail(f"{source}: no such file")
    if out == STDIO:
        if as_json:
            raise fail("--json needs -o FILE: standard output carries the image")
        _run_piped(source, out, None if format is OutputFormat.keep else FORMATS[format.value], settings,
                   tiff_compression=tiff_compression.value)
        return
    fmt = _file_format(out, format)
    if same_file(source, out):
        raise fail(f"{out}: is the input itself; write the result elsewhere")
    if source == STDIO:
        _run_piped(source, out, fmt, settings, as_json, tiff_compression.value)
        return
    if skip_existing_outputs and is_complete(out):
        from upscaler.jobs.pictures import Summary

        _print_summary(Summary(skipped=1), settings.model, as_json=as_json)
        return
    _run_batch([Job(source, out, fmt, tiff_compression=tiff_compression.value)], settings, 0, lambda: _prepare_output(out.parent, recursive=False), as_json=as_json)


def _run_piped(source: Path, out: Path, fmt: str | None, settings: RunSettings, as_json: bool = False,
               tiff_compression: str = DEFAULT_TIFF_COMPRESSION) -> None:
    """One image from standard input and/or to standard output, whole in memory; `fmt` None: the input's format."""
    from upscaler.engine.errors import FrameError
    from upscaler.io.images import PictureError, encode_picture, read_picture, read_picture_bytes
    from upscaler.jobs.pictures import Summary

    if source == STDIO and sys.stdin.isatty():
        raise fail("standard input is a terminal; pipe an image in (upscale image - -o out.png < in.jpg)")
    if out == STDIO and sys.stdout.isatty():
        raise fail("standard output is a terminal; pipe it on or redirect it (upscale image in.png -o - > out.png)")
    name = "standard input" if source == STDIO else str(source)
    try:
        picture = read_picture_bytes(sys.stdin.buffer.read()) if source == STDIO else read_picture(source)
    except (PictureError, OSError) as exc:
        raise fail(f"{name}: {exc}", EXIT_FAILED) from None
    engine = open_engine_or_fail(settings)
    if out != STDIO:
        _prepare_output(out.parent, recursive=False)
    started = time.perf_counter()
    fmt = fmt or picture.format
    try:
        result = engine.upscale(picture, fmt)
    except FrameError as exc:
        raise fail(f"{name}: {exc}", EXIT_FAILED) from None
    if out == STDIO:
        encoded = io.BytesIO()  # seekable, as TIFF needs; a pipe is not
        encode_picture(result, fmt, encoded, tiff_compression)
        sys.stdout.buffer.write(encoded.getvalue())
        sys.stdout.buffer.flush()
    else:
        write_atomically(out, lambda stream: encode_picture(result, fmt, stream, tiff_compression))
    from upscaler import PROCESS_STARTED

    summary = Summary(done=1, input_pixels=picture.size[0] * picture.size[1], seconds=time.perf_counter() - started,
                      startup_seconds=started - PROCESS_STARTED)
    _print_summary(summary, engine.model.source, engine.description, as_json)

