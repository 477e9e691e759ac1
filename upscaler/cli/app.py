"""The typer application, its console, the one way a command fails, and the one place errors become exit codes."""

from __future__ import annotations

import errno
import importlib
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from typer import _click as click  # typer 0.29 vendors click: its own classes, not the click package's
from typer.core import TyperCommand, TyperGroup, TyperOption

# Each command's module and its help's first line, in the order --help lists them. The module (and
# what it imports: torch for most) is loaded only when its command runs or shows its own --help;
# tests/test_startup.py checks these lines against the commands' own.
COMMANDS: dict[str, tuple[str, str]] = {
    "dir": ("upscale", "Upscale every image in a folder (PNG, JPEG, WebP, TIFF, BMP) into another folder."),
    "image": ("upscale", "Upscale one image; `upscale image - -o - --format png` works in a pipeline."),
    "video": ("video", "Upscale a video: audio, subtitles and attachments copied, timestamps, colour and rotation kept."),
    "pipe": ("video", ("Upscale frames from stdin to stdout: "
                       "`ffmpeg -i IN -f yuv4mpegpipe - | upscale pipe | ffmpeg -f yuv4mpegpipe -i - OUT`.")),
    "models": ("models", "List the built-in and imported models: scale, parameters, MACs per input pixel, scores, descriptor."),
    "import": ("models", "Check a foreign model and keep it in the user model folder, so `--model NAME` finds it."),
    "compare": ("compare", "A comparison sheet: the input (nearest x4), bicubic and each model, the same crops side by side, labelled."),
    "eval": ("evaluate", "PSNR/SSIM per image and mean, on the published protocol (Y channel, border = scale), and the JPEG grid."),
    "compile": ("compile", "Compile a model into an FP16 TensorRT engine, cached per model, GPU, TensorRT version and tile shape."),
    "bench": ("bench", "Latency (p50/p95) and throughput of the whole frame path on frames of one size."),
    "train": ("train", "Train a generator: a pixel loss (SRResNet on MSE, EDSR on L1), then SRGAN's adversarial stage."),
}


class LazyGroup(TyperGroup):
    """The root command: a command's module is imported when that command is looked up, not before."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, summary = COMMANDS[cmd_name]
        if self._listing:  # the root --help: a line per command, no module loaded
            return TyperCommand(cmd_name, help=summary, short_help=summary)
        importlib.import_module(f"upscaler.cli.{module}")
        command: click.Command = typer.main.get_command(app).commands[cmd_name]  # type: ignore[attr-defined]
        _absent_help_is_false(command.get_help_option(ctx))
        return command

    def get_help_option(self, ctx: click.Context) -> TyperOption | None:
        return _absent_help_is_false(super().get_help_option(ctx))

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def _absent_help_is_false(option: TyperOption | None) -> TyperOption | None:
    """A --help that reads False (not None) when absent.

    typer 0.29 coerces a None flag through a pydantic adapter, and building the first one imports
    pydantic: 0.17 s of `upscale dir --help`'s 0.36 s (cProfile).
    """
    if option is not None:
        option.default = False
    return option


app = typer.Typer(
    cls=LazyGroup,
    help="Make photos and video four times sharper with trained super-resolution generators.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
# Usage errors: typer (0.29 on) vendors click; its ClickException family derives from TyperException.
_USAGE_ERRORS = (typer.TyperException,)

# C0/C1 controls (escape sequences, newlines), bidirectional overrides, and the surrogates that
# stand for undecodable bytes of a file name.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _print_version(value: bool) -> None:
    if value:
        from upscaler import __version__

        typer.echo(f"upscale {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                           help="Print the version and exit.")] = False,
) -> None:
    """Make photos and video four times sharper with trained super-resolution generators."""
    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler], force=True)


def printable(text: str) -> str:
    """`text` with every control character escaped (\\x1b, \\n, \\u202e...): a file name cannot drive the terminal."""
    return _UNPRINTABLE.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match[0])
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a name, as os.fsdecode keeps it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def error(message: str) -> None:
    """One `error:` line; names in it are escaped."""
    console.print(f"[red]error:[/] {escape(printable(message))}", highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(printable(message))}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    error(message)
    return typer.Exit(code)


class ClosedStdout(OSError):
    """A write to a standard output the caller closed (`>&-`); see cli.ClosedOutput."""

    def __init__(self) -> None:
        super().__init__(errno.EBADF, "standard output is closed")


class Interrupts:
    """Ctrl-C during a batch: the first is acknowledged and counted, the next exits at once.

    Raised as KeyboardInterrupt, a Ctrl-C can land anywhere: between taking a finished write off
    the queue and reporting it (a file on disk that the summary does not count), or inside a thread
    pool's condition wait, where it comes out as "RuntimeError: cannot release un-acquired lock"
    and is reported as a failed file (both seen in CI). So by default the first one only counts,
    and the caller stops between outcomes; `raises` keeps KeyboardInterrupt for waits that only an
    exception ends (Ray's). The second exits from the handler: writes it abandons stay under
    temporary names, which the next run into the folder removes.
    """

    def __init__(self, raises: bool = False) -> None:
        self.raises, self.count = raises, 0
        self._previous: signal.Handlers | Callable[[int, FrameType | None], object] | int | None = None

    def __enter__(self) -> Interrupts:  # noqa: PYI034 (typing.Self needs 3.11; never subclassed)
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self._previous = signal.signal(signal.SIGINT, self._interrupted)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _interrupted(self, _signum: int, _frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            console.print("interrupted: finishing the images being written (Ctrl-C again to stop at once)", highlight=False)
            if self.raises:
                raise KeyboardInterrupt
            return
        if console.is_terminal:
            console.show_cursor(True)  # the progress bar hid it
        error("interrupted")
        flush_standard_streams()
        os._exit(EXIT_INTERRUPTED)


def flush_standard_streams() -> None:
    """Flush stdout and stderr before an exit that skips finalisation; a closed or vanished reader is no error."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def run(args: list[str]) -> int:
    """Run one command line and return its exit code; no traceback ever reaches the user.

    Ctrl-C anywhere (a second one too) is one line and 130; an unexpected exception is one line
    naming a log file that holds its traceback, and 1.
    """
    command = typer.main.get_command(app)
    try:
        with command.make_context("upscale", args) as ctx:
            command.invoke(ctx)
    except typer.Exit as exc:
        return exc.exit_code
    except _USAGE_ERRORS as exc:
        exc.show()  # type: ignore[attr-defined]  # every TyperException raised is a ClickException
        return exc.exit_code  # type: ignore[attr-defined]
    except (KeyboardInterrupt, typer.Abort):
        error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        error("the output pipe was closed before the image was written")
        return EXIT_FAILED
    except ClosedStdout:
        error("standard output is closed: nothing could be written there")
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 (the last resort: logged with its traceback, named on one line)
        return _crashed(exc, args)
    return 0


def _crashed(exc: Exception, args: list[str]) -> int:
    log = _crash_log(exc, args)
    error(f"unexpected {type(exc).__name__}: {exc}; the traceback is in {log}")
    return EXIT_FAILED


def _crash_log(exc: Exception, args: list[str]) -> Path:
    """Write the traceback to $XDG_STATE_HOME/upscaler (else the temp folder); return the file."""
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    text = f"upscale {' '.join(args)}\n\n{''.join(traceback.format_exception(exc))}"
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (Path(state) / "upscaler", Path(tempfile.gettempdir())):
        try:
            from upscaler.io.files import write_bytes_atomically

            write_bytes_atomically(folder / name, text.encode())
            return folder / name
        except OSError:
            continue
    sys.stderr.write(text)
    return Path("(standard error: no folder was writable)")
