"""ONNX export at one fixed tile shape, with precision and byte I/O inside the graph.

TensorRT 11 networks are strongly typed: the precision an engine runs in is the precision
the ONNX graph declares, so an FP16 engine needs FP16 weights and casts in the file itself.
Input and output are uint8 (NHWC or NCHW) with the scaling to [0,1], clamp and round in
the graph, so only bytes cross the PCIe bus.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT_NAME, OUTPUT_NAME = "lr", "sr"
OPSET = 17


@dataclass(frozen=True)
class TileShape:
    """The static shape an engine is built for."""

    batch: int
    tile: int
    layout: str = "nhwc"  # or "nchw"

    def input_shape(self) -> tuple[int, int, int, int]:
        b, t = self.batch, self.tile
        return (b, t, t, 3) if self.layout == "nhwc" else (b, 3, t, t)

    def output_shape(self, scale: int) -> tuple[int, int, int, int]:
        b, t = self.batch, self.tile * scale
        return (b, t, t, 3) if self.layout == "nhwc" else (b, 3, t, t)


class ByteIO(nn.Module):
    """uint8 in, uint8 out: [0,255] -> model in `dtype` -> clamp, round -> uint8."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, layout: str) -> None:
        super().__init__()
        self.model, self.dtype, self.nhwc = model, dtype, layout == "nhwc"

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2) if self.nhwc else pixels
        y = self.model(x.to(self.dtype) / 255)
        y = (y.clamp(0, 1) * 255).round().to(torch.uint8)
        return y.permute(0, 2, 3, 1) if self.nhwc else y


def export_onnx(model: nn.Module, shape: TileShape, precision: str, path: Path) -> None:
    """Write the graph atomically; `precision` is fp16 or fp32 and lives in the graph itself."""
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[precision]
    wrapped = ByteIO(_copy_as(model, dtype), dtype, shape.layout).eval()
    example = torch.zeros(shape.input_shape(), dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            wrapped, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    tmp.replace(path)


def _copy_as(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A CPU copy in `dtype`, so exporting never changes the caller's model."""
    import copy

    return copy.deepcopy(model).cpu().to(dtype).eval()


def check_onnx(path: Path, shape: TileShape, scale: int) -> None:
    """Structural check plus the declared I/O types and shapes the engine relies on."""
    import onnx

    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    (inp,), (out,) = graph.graph.input, graph.graph.output
    for tensor, expected in ((inp, shape.input_shape()), (out, shape.output_shape(scale))):
        dims = tuple(d.dim_value for d in tensor.type.tensor_type.shape.dim)
        if tensor.type.tensor_type.elem_type != onnx.TensorProto.UINT8 or dims != expected:
            raise ValueError(f"{path}: {tensor.name} is not uint8{list(expected)}")


def run_onnxruntime(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Run the exported graph on CPU with onnxruntime (for parity checks and for users)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    result = session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]
    return np.asarray(result)
