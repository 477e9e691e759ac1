"""The typer application, its console, the one way a command fails, and the one place errors become exit codes."""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

app = typer.Typer(
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


@app.callback()
def _root() -> None:
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
    except Exception as exc:  # noqa: BLE001 (the last resort: logged with its traceback, named on one line)
        log = _crash_log(exc, args)
        error(f"unexpected {type(exc).__name__}: {exc}; the traceback is in {log}")
        return EXIT_FAILED
    return 0


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
