"""TensorRT: engine cache (pure Python) and the builder and runtime (need the `tensorrt` extra)."""
