"""YUV <-> RGB with the source's own matrix and range, so upscaling shifts no colour.

The engine works on RGB. A video frame is Y'CbCr in some matrix (BT.601, BT.709, BT.2020...)
and range (limited 16-235 or full); converting with the wrong pair washes colours out or
tints them. Two converters share one contract: `SwscaleConverter` runs FFmpeg's scaler on
the CPU (through PyAV), `TorchConverter` does the same arithmetic on the engine's device,
where at 4K output a CPU conversion alone would cap the frame rate.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Protocol

import av
import numpy as np
import torch
import torch.nn.functional as F
from av.video.reformatter import Interpolation

# FFmpeg's AVColorSpace / AVColorRange codes (what PyAV reports and takes).
RANGE_LIMITED, RANGE_FULL = 1, 2
MATRIX_RGB, MATRIX_BT709, MATRIX_UNSPECIFIED, MATRIX_FCC, MATRIX_BT470BG, MATRIX_SMPTE170M = 0, 1, 2, 4, 5, 6
MATRIX_SMPTE240M, MATRIX_BT2020_NCL, MATRIX_BT2020_CL = 7, 9, 10

# Luma weights (Kr, Kb) per matrix.
_WEIGHTS = {
    MATRIX_BT709: (0.2126, 0.0722), MATRIX_FCC: (0.30, 0.11), MATRIX_BT470BG: (0.299, 0.114),
    MATRIX_SMPTE170M: (0.299, 0.114), MATRIX_SMPTE240M: (0.212, 0.087),
    MATRIX_BT2020_NCL: (0.2627, 0.0593), MATRIX_BT2020_CL: (0.2627, 0.0593),
}
# swscale's SWS_CS_* constant for each matrix (BT.2020 constant-luminance approximated by NCL).
_SWS = {MATRIX_BT709: 1, MATRIX_FCC: 4, MATRIX_BT470BG: 5, MATRIX_SMPTE170M: 5, MATRIX_SMPTE240M: 7,
        MATRIX_BT2020_NCL: 9, MATRIX_BT2020_CL: 9}
MATRIX_NAMES = {"bt709": MATRIX_BT709, "bt601": MATRIX_SMPTE170M, "bt2020": MATRIX_BT2020_NCL}
# Exact rounding and full chroma interpolation: the default fast path is off by one or two levels.
_SWS_FLAGS = int(Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
                 | Interpolation.FULL_CHR_H_INP)


def guess_matrix(height: int) -> int:
    """What players assume for untagged video: BT.601 below 720 lines, BT.709 from there."""
    return MATRIX_BT709 if height >= 720 else MATRIX_SMPTE170M


@dataclass(frozen=True)
class YuvLayout:
    """A planar Y'CbCr pixel format: chroma subsampling and bit depth."""

    pix_fmt: str
    chroma_w: int  # luma columns per chroma sample
    chroma_h: int
    bits: int

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return np.uint8 if self.bits == 8 else np.uint16

    @property
    def rgb_format(self) -> str:
        return "rgb24" if self.bits == 8 else "rgb48le"


def yuv_layout(pix_fmt: str) -> YuvLayout | None:
    """The layout of a little-endian three-plane YUV format, or None (semi-planar, packed, RGB, gray, alpha)."""
    desc = av.VideoFormat(pix_fmt)
    components = desc.components
    if desc.is_rgb or desc.is_big_endian or [c.plane for c in components] != [0, 1, 2]:
        return None
    bits = components[0].bits
    if any(c.bits != bits for c in components):
        return None
    width, height = 2 ** 10, 2 ** 10
    return YuvLayout(pix_fmt, width // desc.chroma_width(width), height // desc.chroma_height(height), bits)


def bit_depth(pix_fmt: str) -> int:
    return av.VideoFormat(pix_fmt).components[0].bits


def is_rgb_format(pix_fmt: str) -> bool:
    """Whether the samples are R'G'B' (packed, planar GBR or a palette), which no Y'CbCr matrix describes."""
    desc = av.VideoFormat(pix_fmt)
    return desc.is_rgb or desc.has_palette


@dataclass(frozen=True)
class ColourTags:
    """How a stream's samples are to be read: FFmpeg's codes for range, matrix, primaries, transfer."""

    range: int = 0
    matrix: int = MATRIX_UNSPECIFIED
    primaries: int = 2
    transfer: int = 2

    @property
    def full_range(self) -> bool:
        return self.range == RANGE_FULL

    def resolved_matrix(self, height: int) -> int:
        return self.matrix if self.matrix in _WEIGHTS else guess_matrix(height)


def encoded_tags(tags_in: ColourTags, pix_fmt_in: str, pix_fmt_out: str, height_out: int) -> ColourTags:
    """The tags an encoded stream carries: also the matrix and range its frames are converted to.

    An RGB stream is tagged RGB, full range. A Y'CbCr stream keeps a Y'CbCr source's matrix and range;
    where the source has none this module converts (untagged, or RGB: the source's tag describes no
    Y'CbCr), it gets the untagged-video guess for its own height, tagged. An RGB source's samples go to
    limited range, what players assume of Y'CbCr; the source's primaries and transfer stay.
    """
    if is_rgb_format(pix_fmt_out):
        return replace(tags_in, range=RANGE_FULL, matrix=MATRIX_RGB)
    tags = replace(tags_in, matrix=tags_in.resolved_matrix(height_out))
    return replace(tags, range=RANGE_LIMITED) if is_rgb_format(pix_fmt_in) else tags


class Converter(Protocol):
    def to_rgb(self, frame: av.VideoFrame) -> np.ndarray: ...

    def from_rgb(self, rgb: np.ndarray) -> av.VideoFrame: ...

    def planes_from_rgb(self, rgb: np.ndarray) -> list[np.ndarray]: ...


class SwscaleConverter:
    """FFmpeg's scaler on the CPU, told the matrix and range explicitly (never its BT.601 default)."""

    def __init__(self, tags_in: ColourTags, height_in: int, rgb_format: str, tags_out: ColourTags,
                 height_out: int, pix_fmt_out: str) -> None:
        self.rgb_format, self.pix_fmt_out = rgb_format, pix_fmt_out
        self._in = (_SWS[tags_in.resolved_matrix(height_in)], "JPEG" if tags_in.full_range else "MPEG")
        self._out = (_SWS[tags_out.resolved_matrix(height_out)], "JPEG" if tags_out.full_range else "MPEG")

    def to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        rgb = frame.reformat(format=self.rgb_format, src_colorspace=self._in[0], src_color_range=self._in[1],
                             dst_color_range="JPEG", interpolation=_SWS_FLAGS)
        return rgb.to_ndarray()

    def from_rgb(self, rgb: np.ndarray) -> av.VideoFrame:
        frame = av.VideoFrame.from_ndarray(rgb, format=self.rgb_format)
        return frame.reformat(format=self.pix_fmt_out, src_colorspace=self._out[0], dst_colorspace=self._out[0],
                              src_color_range="JPEG", dst_color_range=self._out[1], interpolation=_SWS_FLAGS)

    def planes_from_rgb(self, rgb: np.ndarray) -> list[np.ndarray]:
        layout = yuv_layout(self.pix_fmt_out)
        assert layout is not None
        return frame_planes(self.from_rgb(rgb), layout)


def frame_planes(frame: av.VideoFrame, layout: YuvLayout) -> list[np.ndarray]:
    """The frame's Y, U, V planes as arrays (views into the frame, row padding cut off)."""
    planes = []
    itemsize = np.dtype(layout.dtype).itemsize
    for plane in frame.planes:
        buffer = memoryview(plane)  # type: ignore[arg-type]  # the stubs miss the planes' buffer protocol
        rows = np.frombuffer(buffer, layout.dtype).reshape(plane.height, plane.line_size // itemsize)
        planes.append(rows[:, : plane.width])
    return planes


def frame_from_planes(planes: list[np.ndarray], layout: YuvLayout) -> av.VideoFrame:
    height, width = planes[0].shape
    frame = av.VideoFrame(width, height, layout.pix_fmt)
    for target, source in zip(frame_planes(frame, layout), planes, strict=True):
        target[...] = source
    return frame


def _yuv_matrix(matrix: int) -> torch.Tensor:
    """Rows give R, G, B from (Y', Cb, Cr) with Y' in 0..1 and Cb, Cr in -0.5..0.5."""
    kr, kb = _WEIGHTS[matrix]
    kg = 1.0 - kr - kb
    return torch.tensor([
        [1.0, 0.0, 2 * (1 - kr)],
        [1.0, -2 * (1 - kb) * kb / kg, -2 * (1 - kr) * kr / kg],
        [1.0, 2 * (1 - kb), 0.0],
    ], dtype=torch.float64)


@dataclass(frozen=True)
class _Quantiser:
    """Sample codes <-> normalised Y' (0..1) and chroma (-0.5..0.5) for one depth and range."""

    bits: int
    full: bool

    def luma_offset_scale(self) -> tuple[float, float]:
        if self.full:
            return 0.0, float(2**self.bits - 1)
        step = 2 ** (self.bits - 8)
        return 16.0 * step, 219.0 * step

    def chroma_offset_scale(self) -> tuple[float, float]:
        if self.full:
            return float(2 ** (self.bits - 1)), float(2**self.bits - 1)
        step = 2 ** (self.bits - 8)
        return 128.0 * step, 224.0 * step


class TorchConverter:
    """The conversion as tensor arithmetic on `device`: planes go up, RGB comes down (and back)."""

    def __init__(self, device: torch.device, tags_in: ColourTags, layout_in: YuvLayout, height_in: int,
                 tags_out: ColourTags, layout_out: YuvLayout, height_out: int) -> None:
        self.device, self.layout_in, self.layout_out = device, layout_in, layout_out
        self.rgb_dtype = torch.uint8 if layout_in.bits == 8 else torch.uint16
        self.rgb_max = 255.0 if layout_in.bits == 8 else 65535.0
        to_rgb = _yuv_matrix(tags_in.resolved_matrix(height_in))
        self._to_rgb = to_rgb.to(device, torch.float32)
        self._from_rgb = torch.linalg.inv(_yuv_matrix(tags_out.resolved_matrix(height_out))).to(device, torch.float32)
        self._q_in = _Quantiser(layout_in.bits, tags_in.full_range)
        self._q_out = _Quantiser(layout_out.bits, tags_out.full_range)
        # Decoding and encoding threads each get their own CUDA stream, apart from the engine's.
        cuda = device.type == "cuda"
        self._in_stream = torch.cuda.Stream(device) if cuda else None
        self._out_stream = torch.cuda.Stream(device) if cuda else None

    def to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        with _on(self._in_stream):
            return self._to_rgb_here(frame)

    def planes_from_rgb(self, rgb: np.ndarray) -> list[np.ndarray]:
        with _on(self._out_stream):
            return self._planes_here(rgb)

    def _to_rgb_here(self, frame: av.VideoFrame) -> np.ndarray:
        y, u, v = (self._upload(p) for p in frame_planes(frame, self.layout_in))
        height, width = y.shape
        y_off, y_scale = self._q_in.luma_offset_scale()
        c_off, c_scale = self._q_in.chroma_offset_scale()
        chroma = (torch.stack([u, v]) - c_off) / c_scale
        if chroma.shape[1:] != (height, width):
            chroma = F.interpolate(chroma[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        ycc = torch.cat([((y - y_off) / y_scale)[None], chroma])
        rgb = torch.einsum("ck,khw->hwc", self._to_rgb, ycc)
        return self._download((rgb * self.rgb_max).round_().clamp_(0, self.rgb_max).to(self.rgb_dtype))

    def from_rgb(self, rgb: np.ndarray) -> av.VideoFrame:
        return frame_from_planes(self.planes_from_rgb(rgb), self.layout_out)

    def _planes_here(self, rgb: np.ndarray) -> list[np.ndarray]:
        pixels = self._upload(rgb) / (255.0 if rgb.dtype == np.uint8 else 65535.0)
        ycc = torch.einsum("ck,hwk->chw", self._from_rgb, pixels)
        layout, q = self.layout_out, self._q_out
        y_off, y_scale = q.luma_offset_scale()
        c_off, c_scale = q.chroma_offset_scale()
        chroma = ycc[1:]
        if (layout.chroma_w, layout.chroma_h) != (1, 1):
            chroma = F.avg_pool2d(chroma[None], (layout.chroma_h, layout.chroma_w), ceil_mode=True)[0]
        top = float(2**layout.bits - 1)
        luma = (ycc[0] * y_scale + y_off).round_().clamp_(0, top)
        chroma = (chroma * c_scale + c_off).round_().clamp_(0, top)
        dtype = torch.uint8 if layout.bits == 8 else torch.uint16
        return [self._download(luma.to(dtype)), *(self._download(c) for c in chroma.to(dtype))]

    def _upload(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            if not tensor.is_pinned():  # the engine hands out frames in pinned memory already
                tensor = tensor.pin_memory()
            tensor = tensor.to(self.device, non_blocking=True)
        return tensor.float()

    def _download(self, tensor: torch.Tensor) -> np.ndarray:
        """To pinned host memory on CUDA: the fast copy, and the engine takes it without pinning again."""
        if self.device.type != "cuda":
            return tensor.numpy()
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor)
        return host.numpy()


def _on(stream: torch.cuda.Stream | None) -> AbstractContextManager[object]:
    return torch.cuda.stream(stream) if stream is not None else nullcontext()


def open_converter(device: torch.device, tags_in: ColourTags, pix_fmt_in: str, height_in: int,
                   tags_out: ColourTags, pix_fmt_out: str, height_out: int) -> Converter:
    """On the engine's CUDA device for planar YUV both ways; FFmpeg's scaler otherwise."""
    layout_in, layout_out = yuv_layout(pix_fmt_in), yuv_layout(pix_fmt_out)
    if device.type == "cuda" and layout_in is not None and layout_out is not None:
        return TorchConverter(device, tags_in, layout_in, height_in, tags_out, layout_out, height_out)
    rgb_format = "rgb24" if bit_depth(pix_fmt_in) == 8 else "rgb48le"
    return SwscaleConverter(tags_in, height_in, rgb_format, tags_out, height_out, pix_fmt_out)
