"""The TensorRT executor: a deserialized plan, one execution context per CUDA stream."""

from __future__ import annotations

import tensorrt as trt
import torch

from upscaler.compile.onnx import FLAGS_NAME, INPUT_NAME, OUTPUT_NAME


class TensorRTExecutor:
    """Runs a plan on bound device buffers with `execute_async_v3` and bound tensor addresses.

    With `cuda_graphs`, each context's enqueue is captured once into a CUDA graph (after the
    warm-up enqueue TensorRT needs) and replayed, which removes the per-launch CPU overhead.
    """

    def __init__(self, plan: bytes, cuda_graphs: bool = False) -> None:
        self.cuda_graphs = cuda_graphs
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the plan (built for another GPU or version?)")
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if names - {FLAGS_NAME} != {INPUT_NAME, OUTPUT_NAME}:
            raise RuntimeError(f"engine has tensors {sorted(names)}, expected {INPUT_NAME!r}, {OUTPUT_NAME!r} (and {FLAGS_NAME!r})")
        self.has_flags = FLAGS_NAME in names  # engines built from foreign ONNX graphs have no bad-tile flags
        if self.engine.get_tensor_mode(INPUT_NAME) != trt.TensorIOMode.INPUT:
            raise RuntimeError(f"engine tensor {INPUT_NAME!r} is not an input")
        self.contexts: list[trt.IExecutionContext] = []

    def input_shape(self) -> tuple[int, ...]:
        dims = self.engine.get_tensor_shape(INPUT_NAME)
        return tuple(dims[i] for i in range(len(dims)))

    def bind(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor], streams: list[torch.cuda.Stream],
             flags: list[torch.Tensor] | None = None) -> None:
        """Adds one context per (input, output, stream[, flags]); later calls add slots after the earlier ones."""
        first = len(self.contexts)
        for index, (device_in, device_out) in enumerate(zip(inputs, outputs)):
            if tuple(device_in.shape) != self.input_shape():
                raise RuntimeError(f"staging shape {tuple(device_in.shape)} but engine input {self.input_shape()}")
            context = self.engine.create_execution_context()
            context.set_tensor_address(INPUT_NAME, device_in.data_ptr())
            context.set_tensor_address(OUTPUT_NAME, device_out.data_ptr())
            if self.has_flags:
                if flags is None:
                    raise RuntimeError(f"the engine has a {FLAGS_NAME!r} output: bind a flags buffer for it")
                context.set_tensor_address(FLAGS_NAME, flags[index].data_ptr())
            self.contexts.append(context)
        if self.cuda_graphs:
            for slot, stream in enumerate(streams, start=first):
                self._enqueue(slot, stream)  # TensorRT's first enqueue may allocate; never inside a capture
                stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    self._enqueue(slot, stream)
                self.graphs.append(graph)

    def launch(self, slot: int, stream: torch.cuda.Stream) -> None:
        if self.graphs:
            with torch.cuda.stream(stream):
                self.graphs[slot].replay()
        else:
            self._enqueue(slot, stream)

    def _enqueue(self, slot: int, stream: torch.cuda.Stream) -> None:
        if not self.contexts[slot].execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
