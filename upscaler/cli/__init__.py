"""The `upscale` command line: one module per command, loaded when its command is looked up (see app.COMMANDS)."""

import io
import os
import sys

from upscaler.cli.app import EXIT_INTERRUPTED, ClosedStdout, app, run


class ClosedOutput(io.TextIOBase):
    """Stands for a standard output the caller closed (`>&-`): a write is an error the command reports.

    Python leaves `sys.stdout` None then, and the first print would be an AttributeError traceback.
    """

    @property
    def buffer(self) -> "ClosedOutput":
        return self

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        raise ClosedStdout

    def flush(self) -> None:
        pass


def _stand_in_for_closed_streams() -> None:
    """Closed stdin reads as empty, closed stderr swallows messages (the caller's choice), closed stdout refuses."""
    if sys.stdin is None:
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 (lives as long as the process)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    if sys.stdout is None:
        sys.stdout = ClosedOutput()


def main() -> None:
    _stand_in_for_closed_streams()
    code = run(sys.argv[1:])
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass  # the reader went away, or the stream was closed: the code says how the work went
    if code == EXIT_INTERRUPTED:
        # Stop now, even after a second Ctrl-C: writes still in flight are abandoned under their
        # temporary names, which the next run into the same folder removes.
        os._exit(code)
    sys.exit(code)


__all__ = ["app", "main"]
