"""ONNX export at one fixed tile shape, with precision and byte I/O inside the graph.

TensorRT 11 networks are strongly typed: the precision an engine runs in is the precision
the ONNX graph declares, so an FP16 engine needs FP16 weights and casts in the file itself.
Input and output are uint8 (NHWC or NCHW) with the scaling to [0,1], clamp and round in
the graph, so only bytes cross the PCIe bus. A second output, `bad`, flags per tile what the
float result looked like before it was quantised (non-finite, or flat where the input is not),
so the engine can recompute those tiles in fp32 although it only ever sees bytes.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from upscaler.io.files import write_bytes_atomically
from upscaler.models.dtypes import PRECISIONS
from upscaler.models.onnx_model import GraphIO
from upscaler.models.trust import collapsed

INPUT_NAME, OUTPUT_NAME, FLAGS_NAME = "lr", "sr", "bad"
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
    """uint8 in, uint8 out: [0,255] -> model in `dtype` -> clamp, round -> uint8; with `flags`, also `bad`."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, layout: str, flags: bool = False) -> None:
        super().__init__()
        self.model, self.dtype, self.nhwc, self.flags = model, dtype, layout == "nhwc", flags

    def forward(self, pixels: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = pixels.permute(0, 3, 1, 2) if self.nhwc else pixels
        y = self.model(x.to(self.dtype) / 255)
        out = (y.clamp(0, 1) * 255).round().to(torch.uint8)
        out = out.permute(0, 2, 3, 1) if self.nhwc else out
        if not self.flags:
            return out
        y32, x32 = y.float().flatten(1), x.float().flatten(1) / 255
        bad = torch.isnan(y32).any(dim=1) | torch.isinf(y32).any(dim=1)
        if self.dtype != torch.float32:  # as the torch engine judges: fp32 is what a bad tile is recomputed in
            bad = bad | collapsed(y32.amax(dim=1), y32.amin(dim=1), x32.amax(dim=1), x32.amin(dim=1))
        return out, bad.to(torch.uint8)


def export_onnx(model: nn.Module, shape: TileShape, precision: str, path: Path) -> None:
    """Write the graph atomically; `precision` is fp16 or fp32 and lives in the graph itself."""
    dtype = PRECISIONS[precision]
    wrapped = ByteIO(_copy_as(model, dtype), dtype, shape.layout, flags=True).eval()
    example = torch.zeros(shape.input_shape(), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        graph = Path(scratch) / "graph.onnx"  # the exporter's own file, never under a name of ours
        torch.onnx.export(
            wrapped, (example,), str(graph), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME, FLAGS_NAME],
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
        write_bytes_atomically(path, graph.read_bytes())


def _copy_as(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A CPU copy in `dtype`, so exporting never changes the caller's model."""
    import copy

    return copy.deepcopy(model).cpu().to(dtype).eval()


def check_onnx(path: Path, shape: TileShape, scale: int) -> None:
    """Structural check plus the declared I/O types and shapes the engine relies on."""
    import onnx

    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    (inp,), (out, *flags) = graph.graph.input, graph.graph.output
    expected_io: list[tuple[Any, tuple[int, ...]]] = [(inp, shape.input_shape()), (out, shape.output_shape(scale))]
    expected_io += [(flag, (shape.batch,)) for flag in flags]  # our own exports flag bad tiles; foreign graphs may not
    for tensor, expected in expected_io:
        dims = tuple(d.dim_value for d in tensor.type.tensor_type.shape.dim)
        if tensor.type.tensor_type.elem_type != onnx.TensorProto.UINT8 or dims != expected:
            raise ValueError(f"{path}: {tensor.name} is not uint8{list(expected)}")
    if flags and flags[0].name != FLAGS_NAME:
        raise ValueError(f"{path}: second output {flags[0].name!r}, expected {FLAGS_NAME!r}")


def run_onnxruntime(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Run the exported graph on CPU with onnxruntime (for parity checks and for users)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    result = session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]
    return np.asarray(result)


def graph_precision(io: GraphIO) -> str:
    """A foreign graph runs at its own precision: TensorRT's strong typing follows the file."""
    return "fp16" if io.input_type is np.float16 else "fp32"


def wrap_foreign_onnx(data: bytes, io: GraphIO, shape: TileShape, scale: int, path: Path) -> None:
    """A foreign graph inside this project's engine contract: uint8 in/out at one static tile shape.

    Casts, the 1/255 scaling, clamp and round, and layout transposes are added around the
    graph's own nodes, so the TensorRT build and executor treat it like an exported model.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if io.opset < 11:
        raise ValueError(f"opset {io.opset} is too old to wrap (Clip and Round need 11)")
    if io.size is not None and io.size != (shape.tile, shape.tile):
        raise ValueError(f"the graph is fixed to {io.size[0]}x{io.size[1]} inputs; compile with --tile {io.size[0]}")
    if io.batch is not None and io.batch != shape.batch:
        raise ValueError(f"the graph is fixed to batches of {io.batch}; compile with --batch {io.batch}")
    model = onnx.load_from_string(data)
    graph = model.graph
    taken = {n for node in graph.node for n in (*node.input, *node.output)} | {i.name for i in graph.initializer}
    if INPUT_NAME in taken or OUTPUT_NAME in taken:
        raise ValueError(f"the graph already uses the tensor names {INPUT_NAME!r}/{OUTPUT_NAME!r}")
    float_type = TensorProto.FLOAT16 if io.input_type is np.float16 else TensorProto.FLOAT
    graph.initializer.extend([
        numpy_helper.from_array(np.array(value, np.float32), f"upscaler_{name}")
        for name, value in (("255", 255.0), ("zero", 0.0), ("one", 1.0))
    ])
    to_graph = {(True, False): [0, 3, 1, 2], (False, True): [0, 2, 3, 1]}.get((shape.layout == "nhwc", io.nhwc))
    from_graph = {(True, False): [0, 2, 3, 1], (False, True): [0, 3, 1, 2]}.get((shape.layout == "nhwc", io.nhwc))
    before: list[tuple[str, list[str], dict[str, object]]] = []
    if to_graph:
        before.append(("Transpose", [], {"perm": to_graph}))
    if io.input_type is not np.uint8:
        before += [("Cast", [], {"to": TensorProto.FLOAT}), ("Div", ["upscaler_255"], {})]
        if float_type == TensorProto.FLOAT16:
            before.append(("Cast", [], {"to": TensorProto.FLOAT16}))
    after: list[tuple[str, list[str], dict[str, object]]] = []
    if io.output_type is not np.uint8:
        after += [("Cast", [], {"to": TensorProto.FLOAT}), ("Clip", ["upscaler_zero", "upscaler_one"], {}),
                  ("Mul", ["upscaler_255"], {}), ("Round", [], {}), ("Cast", [], {"to": TensorProto.UINT8})]
    if from_graph:
        after.append(("Transpose", [], {"perm": from_graph}))
    head = _chain(helper, "upscaler_in", INPUT_NAME, io.input_name, before)
    tail = _chain(helper, "upscaler_out", io.output_name, OUTPUT_NAME, after)
    nodes = [*head, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, shape.input_shape()))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.UINT8, shape.output_shape(scale)))
    keep = [v for v in graph.value_info if v.name not in (io.input_name, io.output_name)]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    onnx.checker.check_model(model)
    write_bytes_atomically(path, model.SerializeToString())


def _chain(helper: Any, prefix: str, source: str, target: str, steps: list[tuple[str, list[str], dict[str, object]]]) -> list[Any]:
    """Nodes applying `steps` in order from tensor `source` to tensor `target` (an Identity if none)."""
    steps = steps or [("Identity", [], {})]
    nodes, current = [], source
    for i, (op, extra, attrs) in enumerate(steps):
        out = target if i == len(steps) - 1 else f"{prefix}_{i}"
        nodes.append(helper.make_node(op, [current, *extra], [out], name=f"{prefix}_{op}_{i}", **attrs))
        current = out
    return nodes
