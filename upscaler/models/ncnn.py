"""ncnn models (`.param` text graph + `.bin` weights, as upscayl and Real-ESRGAN-ncnn-vulkan keep them) as torch modules.

Nothing in the files is run: the graph is parsed as text and matched, layer by layer from the
output back, against the networks the registry knows (SRVGGNetCompact; RRDBNet in its ncnn
export with nearest upsampling). A match gives the hyper-parameters and which convolution or
PReLU is which module key; the `.bin` beside the `.param` (never a path named inside it) is then
read in the `.param`'s layer order: per convolution a 4-byte tag (0 = fp32, 0x01306B47 = fp16)
and the weights, then the fp32 bias; per PReLU its fp32 slopes. fp16 values widen to fp32
exactly. Anything else is one ModelError naming the closest architecture and what differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from upscaler.models.errors import ModelError
from upscaler.models.registry import MAX_PARAMETERS, Architecture, StateDict, get_architecture

MAGIC = "7767517"
FP16_TAG = 0x01306B47
MAX_PARAM_BYTES = 4 << 20  # RealESRGAN_x4plus's graph is 117 kB
MAX_LAYERS = 20_000

Value = int | float | list[int | float]

# Keys each layer type may carry (ncnn's numbering) and the value a missing key means.
_DEFAULTS: dict[str, dict[int, Value]] = {
    "Input": {0: 0, 1: 0, 2: 0},
    "Split": {},
    "Convolution": {0: 0, 1: 0, 2: 1, 3: 1, 4: 0, 5: 0, 6: 0, 9: 0, 10: []},
    "PReLU": {0: 0},
    "PixelShuffle": {0: 1, 1: 0},
    "Interp": {0: 0, 1: 1.0, 2: 1.0, 3: 0, 4: 0, 6: 0},
    "BinaryOp": {0: 0, 1: 0},
    "Eltwise": {0: 1, 1: []},
    "Concat": {0: 0},
}
_NEAREST, _LEAKY, _SUM, _ADD = 1, 2, 1, 0


@dataclass
class Layer:
    index: int
    kind: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, Value]

    def number(self, key: int) -> int:
        """An integer parameter; an array or a fraction where ncnn wants a count is a mismatch."""
        value = self.params[key]
        if isinstance(value, list) or value != int(value):
            raise _Mismatch(f"{self.name}: parameter {key} is {value}, not a count")
        return int(value)


@dataclass
class Graph:
    """The parsed `.param`: layers in file order and, per blob, the layer that makes it (Splits looked through)."""

    layers: list[Layer]
    producer: dict[str, Layer] = field(default_factory=dict)
    source: Path = Path()

    def __post_init__(self) -> None:
        for layer in self.layers:
            for blob in layer.outputs:
                self.producer[blob] = layer

    def origin(self, blob: str) -> Layer:
        layer = self.producer.get(blob)
        if layer is None:
            raise _Mismatch(f"blob {blob!r} is made by no layer")
        while layer.kind == "Split":
            if len(layer.inputs) != 1:
                raise _Mismatch(f"Split {layer.name} reads {len(layer.inputs)} blobs")
            layer = self.producer[layer.inputs[0]]
        return layer


class _Mismatch(Exception):
    """What differs from the architecture being matched (its message goes into the refusal)."""


def parse_param(path: Path) -> Graph:
    """The text graph; any syntax it does not follow is a ModelError naming the line."""
    size = path.stat().st_size
    if size > MAX_PARAM_BYTES:
        raise ModelError(f"{path}: {size:,} bytes is larger than any ncnn generator graph ({MAX_PARAM_BYTES:,} at most)")
    try:
        lines = [line.split() for line in path.read_text(encoding="ascii").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise ModelError(f"{path}: not an ncnn .param (not plain text; a binary .param.bin is not read)") from None
    if not lines or lines[0] != [MAGIC]:
        raise ModelError(f"{path}: not an ncnn .param (the first line is not the magic number {MAGIC})")
    if len(lines) < 2 or len(lines[1]) != 2 or not all(word.isdigit() for word in lines[1]):
        raise ModelError(f"{path}: line 2 must hold the layer and blob counts")
    count = int(lines[1][0])
    if count > MAX_LAYERS or count != len(lines) - 2:
        raise ModelError(f"{path}: says {count} layers but holds {len(lines) - 2} (at most {MAX_LAYERS:,})")
    layers = [_layer(words, number, path) for number, words in enumerate(lines[2:])]
    made: set[str] = set()
    for layer in layers:  # ncnn's own order: every blob made before it is read, once (so no walk can loop)
        if not set(layer.inputs) <= made:
            raise ModelError(f"{path}: layer {layer.name} reads a blob no earlier layer makes")
        if made & set(layer.outputs) or len(set(layer.outputs)) != len(layer.outputs):
            raise ModelError(f"{path}: layer {layer.name} makes a blob another layer makes")
        made |= set(layer.outputs)
    return Graph(layers, source=path)


def _layer(words: list[str], index: int, path: Path) -> Layer:
    where = f"{path}: line {index + 3}"
    try:
        kind, name, n_in, n_out = words[0], words[1], int(words[2]), int(words[3])
    except (IndexError, ValueError):
        raise ModelError(f"{where}: not 'type name inputs outputs ...'") from None
    if n_in < 0 or n_out < 0 or len(words) < 4 + n_in + n_out:
        raise ModelError(f"{where}: fewer blob names than its counts say")
    inputs, outputs = words[4 : 4 + n_in], words[4 + n_in : 4 + n_in + n_out]
    params: dict[int, Value] = {}
    for word in words[4 + n_in + n_out :]:
        key, _, text = word.partition("=")
        try:
            number = int(key)
            if number <= -23300:  # an array: count, then the values
                values = [_number(v) for v in text.split(",")]
                params[-number - 23300] = values[1:]
            else:
                params[number] = _number(text)
        except ValueError:
            raise ModelError(f"{where}: parameter {word!r} is not KEY=VALUE") from None
    known = _DEFAULTS.get(kind)  # another type is kept as it is: the matchers name it where it differs
    unknown = sorted(set(params) - set(known or params))
    if unknown:
        raise ModelError(f"{where}: {kind} parameter {unknown[0]} is not read here (int8 or dynamic layers are not supported)")
    return Layer(index, kind, name, inputs, outputs, {**(known or {}), **params})


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


@dataclass
class _Match:
    """A recognised graph: hyper-parameters and which layer holds which module keys."""

    arch: str
    params: dict[str, Any]
    keys: dict[int, str] = field(default_factory=dict)  # layer index -> module key prefix


class _Matcher:
    """Walks the graph back from its output; `used` counts how far it got, to name the closest architecture."""

    def __init__(self, graph: Graph) -> None:
        self.graph, self.used = graph, 0
        self.keys: dict[int, str] = {}

    def take(self, blob: str, kind: str, what: str, **want: Value) -> Layer:
        layer = self.graph.origin(blob)
        if layer.kind != kind:
            raise _Mismatch(f"{what} should be {kind}, the file has {layer.kind} {layer.name}")
        for key, value in want.items():
            got = layer.params.get(int(key[1:]))
            if not _same(got, value):
                raise _Mismatch(f"{what} ({layer.name}) has {key[1:]}={got}, {value} expected")
        self.used += 1
        return layer

    def conv(self, blob: str, key: str, leaky: bool = False, out: int | None = None) -> Layer:
        """A 3x3, stride 1, pad 1 convolution with bias (and LeakyReLU(0.2) fused when `leaky`)."""
        act: dict[str, Value] = {"k9": _LEAKY, "k10": [0.2]} if leaky else {"k9": 0}
        layer = self.take(blob, "Convolution", key, k1=3, k2=1, k3=1, k4=1, k5=1, **act)
        if out is not None and layer.params[0] != out:
            raise _Mismatch(f"{key} ({layer.name}) has {layer.params[0]} outputs, {out} expected")
        self.keys[layer.index] = key
        return layer

    def is_input(self, blob: str, what: str) -> None:
        if self.graph.origin(blob).kind != "Input":
            raise _Mismatch(f"{what} should read the input, it reads {self.graph.origin(blob).name}")

    def sum_of(self, blob: str, what: str) -> tuple[str, str]:
        """An Eltwise sum `residual * 0.2 + shortcut`: the two blobs."""
        layer = self.take(blob, "Eltwise", what, k0=_SUM)
        coeffs = layer.params[1]
        if len(layer.inputs) != 2 or not isinstance(coeffs, list) or len(coeffs) != 2 or sorted(coeffs) != [0.2, 1.0]:
            raise _Mismatch(f"{what} ({layer.name}) should be 0.2 * residual + shortcut, has coefficients {coeffs}")
        residual = 0 if coeffs[0] == 0.2 else 1
        return layer.inputs[residual], layer.inputs[1 - residual]

    def add(self, blob: str, what: str) -> list[str]:
        layer = self.take(blob, "BinaryOp", what, k0=_ADD, k1=0)
        if len(layer.inputs) != 2:
            raise _Mismatch(f"{what} ({layer.name}) should add two blobs")
        return layer.inputs

    def same_blob(self, a: str, b: str, what: str) -> None:
        if self.graph.origin(a) is not self.graph.origin(b):
            raise _Mismatch(f"{what}: {self.graph.origin(a).name} where {self.graph.origin(b).name} was expected")


def _same(got: Value | None, want: Value) -> bool:
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(abs(g - w) < 1e-6 for g, w in zip(got, want))
    return isinstance(got, (int, float)) and abs(got - want) < 1e-6


def _srvgg(m: _Matcher, output: str) -> _Match:
    tail = m.graph.origin(output)
    if tail.kind == "Interp":
        raise _Mismatch(f"the output is resized by {tail.params[2]} after the network ({tail.name}); only the network itself is read")
    a, b = m.add(output, "the last layer (body + nearest-upscaled input)")
    if m.graph.origin(a).kind != "PixelShuffle":
        a, b = b, a
    shuffle = m.take(a, "PixelShuffle", "the body's PixelShuffle", k1=0)
    scale = shuffle.number(0)
    m.take(b, "Interp", "the input's upscale", k0=_NEAREST, k1=float(scale), k2=float(scale), k3=0, k4=0)
    m.is_input(m.graph.origin(b).inputs[0], "the nearest upscale")
    chain: list[Layer] = []  # from the input's conv to the last conv
    blob = shuffle.inputs[0]
    while (layer := m.graph.origin(blob)).kind != "Input":
        chain.insert(0, layer)
        blob = layer.inputs[0]
    if len(chain) % 2 == 0 or len(chain) < 3:
        raise _Mismatch(f"the body should be convs with a PReLU between each, it has {len(chain)} layers")
    channels, blocks = chain[0].number(0), len(chain) // 2 - 1
    for n, layer in enumerate(chain):
        if n % 2:
            m.keys[m.take(layer.outputs[0], "PReLU", f"body.{n}", k0=channels).index] = f"body.{n}"
        else:
            m.conv(layer.outputs[0], f"body.{n}", out=3 * scale * scale if n == len(chain) - 1 else channels)
    return _Match("srvggnet_compact", {"scale": scale, "channels": channels, "blocks": blocks})


def _rrdb(m: _Matcher, output: str) -> _Match:
    last = m.conv(output, "conv_last", out=3)
    hr = m.conv(last.inputs[0], "conv_hr", leaky=True)
    blob, ups = hr.inputs[0], []
    while m.graph.origin(blob).kind == "Convolution":
        conv = m.graph.origin(blob)
        ups.append(conv)
        interp = m.take(conv.inputs[0], "Interp", f"the x2 upsampling before {conv.name}", k0=_NEAREST, k1=2.0, k2=2.0)
        blob = interp.inputs[0]
    if not ups:
        raise _Mismatch("no nearest x2 upsampling + conv before conv_hr")
    for n, conv in enumerate(reversed(ups), 1):
        m.conv(conv.outputs[0], f"conv_up{n}", leaky=True)
    a, b = m.add(blob, "the trunk's shortcut (conv_first + conv_body)")
    if m.graph.origin(a).kind == "Convolution" and m.graph.origin(m.graph.origin(a).inputs[0]).kind == "Input":
        a, b = b, a
    first = m.conv(b, "conv_first")
    m.is_input(first.inputs[0], "conv_first")
    channels = first.number(0)
    trunk = m.conv(a, "conv_body", out=channels).inputs[0]
    blocks: list[str] = []
    while m.graph.origin(trunk) is not first:
        blocks.append(trunk)
        trunk = m.sum_of(trunk, f"RRDB output {len(blocks)} from the end")[1]
    growth = 0
    for number, out in enumerate(reversed(blocks)):
        residual, shortcut = m.sum_of(out, f"body.{number}")
        blob = residual
        for rdb in (3, 2, 1):
            blob, start = m.sum_of(blob, f"body.{number}.rdb{rdb}")
            growth = _dense(m, blob, start, f"body.{number}.rdb{rdb}", channels, growth)
            blob = start
        m.same_blob(blob, shortcut, f"body.{number}'s shortcut")
        m.used -= 1  # the block's own sum was taken twice (walk, then match)
    if 2 ** len(ups) != 4:
        raise _Mismatch(f"{len(ups)} x2 upsampler(s) without pixel-unshuffle make x{2 ** len(ups)}; ncnn exports read here are x4")
    params = {"scale": 4, "channels": channels, "blocks": len(blocks), "growth": growth or 32, "upsamples": len(ups)}
    return _Match("rrdbnet", params)


def _dense(m: _Matcher, blob: str, start: str, key: str, channels: int, growth: int) -> int:
    """conv5(concat(x, c1..c4)) with c_k = leaky(conv_k(concat(x, c1..c_{k-1}))); returns the growth."""
    conv5 = m.conv(blob, f"{key}.conv5", out=channels)
    concat = m.take(conv5.inputs[0], "Concat", f"{key}.conv5's input", k0=0)
    if len(concat.inputs) != 5:
        raise _Mismatch(f"{key}.conv5 ({conv5.name}) reads {len(concat.inputs)} blobs, 5 expected")
    m.same_blob(concat.inputs[0], start, f"{key}'s dense input")
    made = concat.inputs[1:]
    for k, out in enumerate(made, 1):
        conv = m.conv(out, f"{key}.conv{k}", leaky=True)
        growth = growth or conv.number(0)
        if conv.params[0] != growth:
            raise _Mismatch(f"{key}.conv{k} ({conv.name}) has {conv.params[0]} outputs, growth {growth} expected")
        reads = [conv.inputs[0]] if k == 1 else m.take(conv.inputs[0], "Concat", f"{key}.conv{k}'s input", k0=0).inputs
        for want, got in zip([start, *made[: k - 1]], reads, strict=False):
            m.same_blob(got, want, f"{key}.conv{k}'s inputs")
        if len(reads) != k:
            raise _Mismatch(f"{key}.conv{k} ({conv.name}) reads {len(reads)} blobs, {k} expected")
    return growth


_MATCHERS: dict[str, Callable[[_Matcher, str], _Match]] = {"srvggnet_compact": _srvgg, "rrdbnet": _rrdb}


def recognise(graph: Graph) -> _Match:
    """The architecture whose matcher accounts for every layer; else a ModelError naming the one that got furthest."""
    ins = [layer for layer in graph.layers if layer.kind == "Input"]
    consumed = {blob for layer in graph.layers for blob in layer.inputs}
    outs = [blob for layer in graph.layers for blob in layer.outputs if blob not in consumed]
    if len(ins) != 1 or len(outs) != 1:
        raise ModelError(f"{graph.source}: an ncnn generator has one input and one output; this graph has {len(ins)} and {len(outs)}")
    tries: list[tuple[int, str, str]] = []
    for name, matcher in _MATCHERS.items():
        m = _Matcher(graph)
        try:
            found = matcher(m, outs[0])
        except _Mismatch as exc:
            tries.append((m.used, name, str(exc)))
            continue
        weighted = {layer.index for layer in graph.layers if layer.kind in ("Convolution", "PReLU")}
        left = sorted(weighted - set(m.keys))
        if left:
            tries.append((m.used, found.arch, f"layer {graph.layers[left[0]].name} is not part of it"))
            continue
        found.keys = m.keys
        return found
    _, closest, problem = max(tries, key=lambda t: t[0])
    raise ModelError(f"{graph.source}: ncnn graph not recognised; closest: {closest} ({problem})")


def read_ncnn(path: Path) -> tuple[Architecture, dict[str, Any], StateDict]:
    """The architecture, its hyper-parameters and the tensors under the module's keys (fp32; fp16 widened exactly)."""
    graph = parse_param(path)
    found = recognise(graph)
    arch = get_architecture(found.arch)
    try:
        arch.build_on_meta(found.params)  # bounds and size before any weight is read
    except ValueError as exc:
        raise ModelError(f"{path}: {exc}") from None
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise ModelError(f"{path}: its weights {weights.name} are not beside it")
    return arch, found.params, _read_bin(weights, graph, found.keys)


def _read_bin(path: Path, graph: Graph, keys: dict[int, str]) -> StateDict:
    size = path.stat().st_size
    if size > 4 * MAX_PARAMETERS + 4 * len(graph.layers):
        raise ModelError(f"{path}: {size:,} bytes is more than the graph's weights can be")
    data = memoryview(path.read_bytes())
    at = 0

    def floats(count: int, what: str, tagged: bool) -> torch.Tensor:
        nonlocal at
        tag = 0
        if tagged:
            if at + 4 > len(data):
                raise ModelError(f"{path}: ends before {what}")
            tag = int.from_bytes(data[at : at + 4], "little")
            at += 4
        if tag not in (0, FP16_TAG):
            kind = "int8 or quantised" if tag else "unknown"
            raise ModelError(f"{path}: {what} is stored {kind} (tag {tag:#010x}); only fp32 and fp16 weights are read")
        width = 2 if tag == FP16_TAG else 4
        stored = (count * width + 3) // 4 * 4  # fp16 runs are padded to four bytes
        if at + stored > len(data):
            raise ModelError(f"{path}: ends inside {what}")
        values = np.frombuffer(data[at : at + count * width], dtype="<f2" if width == 2 else "<f4")
        at += stored
        return torch.from_numpy(values.astype(np.float32))

    state: StateDict = {}
    for layer in graph.layers:
        key = keys.get(layer.index)
        if key is None:
            continue
        if layer.kind == "PReLU":
            state[f"{key}.weight"] = floats(layer.number(0), f"{layer.name}'s slopes", tagged=False)
            continue
        try:
            out, kernel, size_ = layer.number(0), layer.number(1), layer.number(6)
        except _Mismatch as exc:
            raise ModelError(f"{path}: {exc}") from None
        if out <= 0 or size_ % (out * kernel * kernel):
            raise ModelError(f"{path}: {layer.name}'s weight size {size_} is not {out} x inputs x {kernel} x {kernel}")
        state[f"{key}.weight"] = floats(size_, f"{layer.name}'s weights", tagged=True).reshape(out, -1, kernel, kernel)
        if layer.params[5]:
            state[f"{key}.bias"] = floats(out, f"{layer.name}'s bias", tagged=False)
    if at != len(data):
        raise ModelError(f"{path}: {len(data) - at:,} bytes beyond the weights the graph names (is it this graph's .bin?)")
    return state
