"""The frame engine: run plan, tiling on the device, backends, CUDA streams."""
