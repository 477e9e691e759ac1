"""The `upscale` command line: one module per command, loaded when its command is looked up (see app.COMMANDS)."""

import os
import sys

from upscaler.cli.app import EXIT_INTERRUPTED, app, run


def main() -> None:
    code = run(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    if code == EXIT_INTERRUPTED:
        # Stop now, even after a second Ctrl-C: writes still in flight are abandoned under their
        # temporary names, which the next run into the same folder removes.
        os._exit(code)
    sys.exit(code)


__all__ = ["app", "main"]
