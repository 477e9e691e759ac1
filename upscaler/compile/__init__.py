"""Ahead-of-time compilation: ONNX export and TensorRT engines with their cache."""
