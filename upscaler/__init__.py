"""upscaler: 4x super-resolution for photos and video with trained generators."""

import time

__version__ = "0.1.0"
# When the package was first imported (the process start, for `python -m upscaler` and the
# `upscale` script, but for the interpreter's own ~20 ms): summaries show start-up apart from work.
PROCESS_STARTED = time.perf_counter()
