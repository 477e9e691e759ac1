"""The `upscale` command line: one module per command, loaded when its command is looked up (see app.COMMANDS)."""

import atexit
import io
import os
import sys
import threading

from upscaler.cli.app import EXIT_INTERRUPTED, ClosedStdout, app, flush_standard_streams, run


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
    flush_standard_streams()  # a reader gone or a stream closed is no error: the code says how the work went
    if code == EXIT_INTERRUPTED:
        # Stop now, even after a second Ctrl-C: writes still in flight are abandoned under their
        # temporary names, which the next run into the same folder removes.
        os._exit(code)
    if "torch" in sys.modules and sys.argv[1:2] != ["train"]:
        _exit_without_finalising(code)
    sys.exit(code)


def _exit_without_finalising(code: int) -> None:
    """Exit as the interpreter would, less the tearing down of torch's modules: 0.57 s of `upscale image`'s wall
    time here (benchmarks/RESULTS.md, "Start-up"), more than the model's work on a small image.

    What finalisation does that matters runs first, in its order: threads are joined (thread pools
    drained), then atexit handlers (logging's flush among them). Every output is closed, synced and
    renamed before a command returns. `train` keeps the normal exit (torchrun's process group, its writers).
    """
    threading._shutdown()  # type: ignore[attr-defined]  # the interpreter's own first step at exit
    atexit._run_exitfuncs()
    flush_standard_streams()
    os._exit(code)


__all__ = ["app", "main"]
