"""ONNX generators (chaiNNer, vs-mlrt exports) run as they are, on onnxruntime on the CPU.

The graph is parsed as protobuf only (no code, no external data files); its input may be
float32, float16 or uint8, NCHW or NHWC, with static or dynamic height and width. The scale
comes from static shapes where the graph has them, else from a probe run; the size multiple
(pixel-unshuffle inputs) from probes of sizes 17, 18, 20 and 24.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from upscaler.models.checkpoint import first_line
from upscaler.models.descriptor import ModelDescriptor
from upscaler.models.errors import ModelError

PROVENANCE_KEY = "upscaler.provenance"  # written by `upscale import`
MAX_ONNX_BYTES = 2 << 30  # protobuf's own limit; larger graphs need external data, which is refused
_NUMPY_TYPES = {1: np.float32, 10: np.float16, 2: np.uint8}  # onnx.TensorProto element types


@dataclass(frozen=True)
class GraphIO:
    """How to feed the graph and read its answer."""

    input_name: str
    output_name: str
    input_type: Any  # numpy dtype class
    output_type: Any
    nhwc: bool
    batch: int | None  # static batch, or None
    size: tuple[int, int] | None  # static (height, width), or None
    opset: int


class OnnxModule(nn.Module):
    """Float NCHW RGB in [0, 1] in, float NCHW out, on any device: the graph runs on onnxruntime (CPU)."""

    def __init__(self, data: bytes, io: GraphIO, source: str, scale: int = 0, multiple: int = 1, session: Any = None) -> None:
        super().__init__()
        self.data, self.io, self.source, self.scale, self.multiple = data, io, source, scale, multiple
        self._session = session

    @property
    def session(self) -> Any:
        if self._session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.log_severity_level = 4  # failures become exceptions with their message; no stderr noise
            self._session = onnxruntime.InferenceSession(self.data, options, providers=["CPUExecutionProvider"])
        return self._session

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxModule:
        """Copies share the immutable graph and its session (onnxruntime's run is thread-safe)."""
        return OnnxModule(self.data, self.io, self.source, self.scale, self.multiple, self._session)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.detach().float().cpu().numpy()
        step = self.io.batch or len(pixels)
        outputs = [self.run_numpy(pixels[i : i + step]) for i in range(0, len(pixels), step)]
        return torch.from_numpy(np.concatenate(outputs)).to(device=x.device, dtype=x.dtype)

    def run_numpy(self, pixels: np.ndarray) -> np.ndarray:
        """float32 NCHW [0,1] -> float32 NCHW, adapting type, layout, value range and static shape."""
        n, _, h, w = pixels.shape
        if self.io.size is not None and (h, w) != self.io.size:
            height, width = self.io.size
            if h > height or w > width:
                raise ValueError(f"{self.source}: the graph takes {height}x{width} inputs only; use --tile {min(height, width)}")
            pixels = np.pad(pixels, ((0, 0), (0, 0), (0, height - h), (0, width - w)), mode="edge")
        elif h % self.multiple or w % self.multiple:
            pixels = np.pad(pixels, ((0, 0), (0, 0), (0, -h % self.multiple), (0, -w % self.multiple)), mode="edge")
        if self.io.batch is not None and n < self.io.batch:
            pixels = np.concatenate([pixels, np.repeat(pixels[-1:], self.io.batch - n, axis=0)])
        if self.io.input_type is np.uint8:
            feed = np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)
        else:
            feed = pixels.astype(self.io.input_type)
        if self.io.nhwc:
            feed = feed.transpose(0, 2, 3, 1)
        result = np.asarray(self.session.run([self.io.output_name], {self.io.input_name: np.ascontiguousarray(feed)})[0])
        if self.io.nhwc:
            result = result.transpose(0, 3, 1, 2)
        result = result.astype(np.float32) / (255.0 if self.io.output_type is np.uint8 else 1.0)
        if self.scale:
            result = result[:n, :, : h * self.scale, : w * self.scale]
        return np.ascontiguousarray(result[:n])


def _dims(value_info: Any) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def inspect_graph(model: Any, source: Path) -> GraphIO:
    """The graph's one image input and output, or ModelError saying what is unusual."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ModelError(f"{source}: the graph has {len(inputs)} inputs and {len(graph.output)} outputs; an upscaler has one of each")
    (inp,), (out,) = inputs, graph.output
    types = [v.type.tensor_type.elem_type for v in (inp, out)]
    if any(t not in _NUMPY_TYPES for t in types):
        raise ModelError(f"{source}: input/output element types {types} are not float32, float16 or uint8")
    dims = _dims(inp)
    if len(dims) != 4 or 3 not in (dims[1], dims[3]):
        raise ModelError(f"{source}: input shape {dims} is not a batch of RGB images (NCHW or NHWC with 3 channels)")
    nhwc = dims[1] != 3
    spatial = dims[1:3] if nhwc else dims[2:4]
    size = (spatial[0], spatial[1]) if spatial[0] is not None and spatial[1] is not None else None
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return GraphIO(inp.name, out.name, _NUMPY_TYPES[types[0]], _NUMPY_TYPES[types[1]], nhwc, dims[0], size, opset)


def read_onnx(path: Path) -> Any:
    """The ModelProto, parsed without touching any other file."""
    import onnx
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

    if path.stat().st_size > MAX_ONNX_BYTES:
        raise ModelError(f"{path}: larger than 2 GiB, which an ONNX file without external data cannot be")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelError(f"{path}: not a readable ONNX file ({first_line(exc)})") from None
    if not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (no graph nodes)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ModelError(f"{path}: the graph keeps its weights in external files, which are not read")
    return model


def _probe(module: OnnxModule, size: int) -> tuple[int, ...] | None:
    try:
        return tuple(module.run_numpy(np.full((1, 3, size, size), 0.5, np.float32)).shape)
    except Exception:  # noqa: BLE001 (onnxruntime's errors derive from Exception only, for shapes a graph cannot take)
        return None


def measured_scale_and_multiple(module: OnnxModule) -> tuple[int, int]:
    """Scale from static shapes or a probe; size multiple: the smallest step whose odd probe size runs."""
    if module.io.size is not None:
        height, _ = module.io.size
        shape = _probe(module, height)
        if shape is None:
            raise ModelError(f"{module.source}: onnxruntime could not run the graph at its own input size")
        return shape[2] // height, 1
    shape = _probe(module, 16)
    if shape is None:
        raise ModelError(f"{module.source}: onnxruntime could not run the graph on a 16x16 probe")
    multiple = next((m for m in (1, 2, 4, 8) if _probe(module, 16 + m) is not None), 16)
    return shape[2] // 16, multiple


def graph_statistics(model: Any, io: GraphIO, probe: int = 32) -> tuple[int, float]:
    """Parameters (initializer elements) and convolution MACs per input pixel from shape inference."""
    import onnx
    from onnx import shape_inference

    parameters = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    (inp,) = [i for i in fixed.graph.input if i.name == io.input_name]
    concrete = [1, probe, probe, 3] if io.nhwc else [1, 3, probe, probe]
    if io.size is not None:
        concrete = [1, *io.size, 3] if io.nhwc else [1, 3, *io.size]
    for dim, value in zip(inp.type.tensor_type.shape.dim, concrete):
        dim.ClearField("dim_param")
        dim.dim_value = value
    try:
        inferred = shape_inference.infer_shapes(fixed)
    except Exception:  # noqa: BLE001 (inference is best-effort; MACs are then unknown, 0)
        return parameters, 0.0
    shapes = {v.name: _dims(v) for v in [*inferred.graph.value_info, *inferred.graph.output]}
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    total = 0
    for node in inferred.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
            continue
        out = [d for d in shapes.get(node.output[0], []) if d is not None]
        if len(out) != 4:
            continue
        kernel = weights[node.input[1]]
        total += math.prod(out) * math.prod(kernel[1:])
    pixels = concrete[1] * concrete[2] if io.nhwc else concrete[2] * concrete[3]
    return parameters, total / pixels


def load_onnx(path: Path) -> tuple[OnnxModule, ModelDescriptor, dict[str, Any]]:
    """The module, its descriptor and the provenance `upscale import` wrote ({} if none); ModelError for
    anything onnxruntime cannot run as an upscaler. The card is the caller's (models/weights.py) to make."""
    try:
        import onnxruntime  # noqa: F401 (only its absence is checked here)
    except ImportError:
        raise ModelError(f"{path}: ONNX models need onnxruntime (pip install onnxruntime)") from None
    model = read_onnx(path)
    io = inspect_graph(model, path)
    data = path.read_bytes()
    module = OnnxModule(data, io, str(path))
    try:
        module.session  # noqa: B018 (creating the session validates the graph)
    except Exception as exc:  # noqa: BLE001 (onnxruntime's errors derive from Exception only)
        raise ModelError(f"{path}: onnxruntime cannot run this graph ({first_line(exc)})") from None
    scale, multiple = measured_scale_and_multiple(module)
    if scale < 1:
        raise ModelError(f"{path}: the graph does not upscale (probe output smaller than its input)")
    module.scale, module.multiple = scale, multiple
    parameters, macs = graph_statistics(model, io)
    descriptor = ModelDescriptor(
        arch="onnx", scale=scale, in_channels=3, out_channels=3, parameters=parameters, macs_per_input_pixel=macs,
        supports_fp16=False, supports_bf16=False, size_multiple=multiple, source=str(path), runtime="onnxruntime",
        arch_params={"input": io.input_type.__name__, "layout": "nhwc" if io.nhwc else "nchw",
                     "static_size": list(io.size) if io.size else None, "opset": io.opset},
    )
    props = {p.key: p.value for p in model.metadata_props}
    try:
        provenance = json.loads(props.get(PROVENANCE_KEY, "{}"))
    except json.JSONDecodeError:
        provenance = {}
    return module.eval(), descriptor, provenance if isinstance(provenance, dict) else {}
