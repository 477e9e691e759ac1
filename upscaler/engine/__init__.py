"""The frame engine: run plan, tiling, backends, CUDA streams, and the batch pipeline around them."""
