"""How every command shows long work: one progress bar, one rate, one summary table."""

from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from upscaler.cli.app import console, printable


class Rate:
    """Items done and items per second since the start, for the progress bar and the summary."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.items = 0

    def tick(self, items: int = 1) -> float:
        self.items += items
        return self.items / max(self.elapsed, 1e-9)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def progress(unit: str, per_second: str) -> Progress:
    """A bar with done/total `unit` and the rate as `per_second` (e.g. "frames", "fps"), on stderr."""
    columns = (
        TextColumn("[bold]upscale[/]"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
        TextColumn(f"{{task.fields[rate]:.2f}} {per_second}"), TimeElapsedColumn(), TimeRemainingColumn(),
    )
    return Progress(*columns, console=console, transient=False)


def print_summary(title: str, rows: list[tuple[str, str]], seconds: float, done: int, per_second: str, input_pixels: int) -> None:
    """The command's own rows, then wall time, `per_second` (e.g. images/s) and input megapixels/s of the work."""
    rows = [*rows, ("wall time", f"{seconds:.2f} s")]
    if seconds > 0 and done:
        rows += [(per_second, f"{done / seconds:.2f}"), ("input megapixels/s", f"{input_pixels / 1e6 / seconds:.3f}")]
    table = Table(title=title, show_header=False)
    for key, value in rows:
        table.add_row(key, printable(value))
    console.print(table)
