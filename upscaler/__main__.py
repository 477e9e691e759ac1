"""`python -m upscaler` and the `upscale` script.

The command line's modules load torch, which takes seconds; a Ctrl-C meanwhile is one line and
exit 130 like one at any other moment, not a traceback from inside an import. Settings that
torch's OpenMP runtime reads only when it loads are made here, before it does.
"""

import os
import sys

from upscaler.engine.openmp import wait_passively


def main() -> None:
    wait_passively(sys.argv[1] if len(sys.argv) > 1 else None)
    try:
        from upscaler.cli import main as run_command_line
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.stderr.flush()
        os._exit(130)
    run_command_line()


if __name__ == "__main__":
    main()
