"""One frame through the model, entirely on the backend's device: bytes in, bytes out.

The frame arrives as its native integers (uint8 or uint16, HxWx3 or HxW, alpha separate).
On the device it is cut into tiles, each tile converted to the model's dtype and scaled to
[0,1], run, checked, blended into a float band one tile row high, and every band that no
later tile touches is normalised, clamped and quantised straight into the output integers.
The host never holds a float copy of the frame, and device memory is bounded by the tile
row, not by the image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from upscaler.engine.errors import FrameError
from upscaler.engine.tiling import TileGrid, device_axis_weights
from upscaler.models.dtypes import precision_name
from upscaler.models.trust import collapsed

log = logging.getLogger("upscaler")

Runner = Callable[[torch.Tensor], torch.Tensor]  # float NCHW tiles in [0,1] -> float NCHW at scale x
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow converts RGB to L


def max_value(dtype: torch.dtype) -> int:
    return 65535 if dtype == torch.uint16 else 255


@dataclass
class ModelRunner:
    """The model in its planned precision, with an fp32 model for tiles reduced precision got wrong.

    With `deferred` (frames streamed on CUDA) nothing waits for the GPU: the check's verdict is
    collected on the device (`take_verdict`) and the caller redoes the rare frame that failed it,
    since asking the host whether a tile is bad would stall the stream after every batch.
    """

    run: Runner
    dtype: torch.dtype
    fallback: Callable[[], Runner] | None  # builds the fp32 runner on first use
    deferred: bool = False

    def __post_init__(self) -> None:
        self._fp32: Runner | None = None
        self._verdicts: list[torch.Tensor] = []

    def checked(self) -> ModelRunner:
        """The same model and fallback, checking every batch as it comes."""
        return ModelRunner(self.run, self.dtype, self.fallback)

    def take_verdict(self) -> torch.Tensor | None:
        """A device bool: did any batch since the last call fail its check? (deferred mode)"""
        verdicts, self._verdicts = self._verdicts, []
        return torch.stack(verdicts).any() if verdicts else None

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        """float32 tiles in [0,1] -> float32 outputs, every one of them finite (unless deferred)."""
        raw = self.run(tiles.to(self.dtype))
        bad = _untrustworthy(tiles, raw, reduced=self.dtype != torch.float32)
        out = raw.float()
        if self.deferred:
            self._verdicts.append(bad.any())
            return out
        if not bool(bad.any()):
            return out
        if self.fallback is None:
            raise FrameError("the model's output is not finite (NaN or infinity) even in fp32; nothing was written")
        if self._fp32 is None:
            self._fp32 = self.fallback()
        log.warning("%d tile(s) overflowed or collapsed in %s; recomputed in fp32", int(bad.sum()), precision_name(self.dtype))
        redo = self._fp32(tiles[bad].float())
        if not bool(torch.isfinite(redo).all()):
            raise FrameError("the model's output is not finite (NaN or infinity) even in fp32; nothing was written")
        out[bad] = redo
        return out


def _untrustworthy(tiles: torch.Tensor, out: torch.Tensor, reduced: bool) -> torch.Tensor:
    """Per tile: non-finite output, or (reduced precision only) flat output where the input is not.

    The output's maximum and minimum, taken in the model's own precision, find both: NaN and
    infinity propagate through them, and a collapsed tile's range is zero. Two reductions over
    half-size values, a small share of the model's time.
    """
    dims = tuple(range(1, out.ndim))
    high, low = out.amax(dim=dims).float(), out.amin(dim=dims).float()
    bad = ~(torch.isfinite(high) & torch.isfinite(low))
    if reduced:
        in_low, in_high = torch.aminmax(tiles[:, :, ::2, ::2].flatten(1), dim=1)
        bad |= collapsed(high, low, in_high.float(), in_low.float())
    return bad


P = TypeVar("P", torch.Tensor, np.ndarray)


def split_planes(planes: P, gray: bool, has_alpha: bool) -> tuple[P, P | None]:
    """(colour, alpha) views of an upscaled frame's H'xW'xK planes, on the device or copied to the host.

    K is 1 (gray), 3 (RGB) or one more with alpha, which is last; RGB padded to RGBX is 4 without alpha.
    """
    color = planes[..., 0] if gray else planes[..., :3]
    return color, planes[..., -1] if has_alpha else None


@dataclass(frozen=True)
class Frame:
    """A frame's integers on the device: colour HxWx3 or HxW, alpha HxW or None, same dtype."""

    color: torch.Tensor
    alpha: torch.Tensor | None = None


@dataclass(frozen=True)
class FrameUpscaler:
    """Upscales device-resident integer frames tile by tile; see the module docstring."""

    runner: ModelRunner
    scale: int
    out_scale: int
    batch: int
    static_batch: bool
    plan_grid: Callable[[int, int], TileGrid]

    def checked(self) -> FrameUpscaler:
        """The same upscaler checking every batch as it comes (to redo a frame a deferred check failed)."""
        return replace(self, runner=self.runner.checked())

    def __call__(self, frame: Frame, rgbx: bool = False) -> Frame:
        """Upscale one frame; with `rgbx`, 8-bit RGB comes back as a view of an RGBX buffer (see io/images)."""
        return Frame(*split_planes(self.planes(frame, rgbx), frame.color.ndim == 2, frame.alpha is not None))

    @torch.inference_mode()
    def planes(self, frame: Frame, rgbx: bool = False) -> torch.Tensor:
        """Upscale one frame into one H'xW'xK integer tensor (`split_planes` names its planes).

        One tensor, so a device result crosses the bus in one contiguous copy.
        """
        color, alpha = frame.color, frame.alpha
        height, width = color.shape[:2]
        grid = self.plan_grid(height, width)
        top = max_value(color.dtype)
        gray = color.ndim == 2
        planes = color.unsqueeze(2) if gray else color  # HxWxC
        if alpha is not None:
            planes = torch.cat([planes, alpha.unsqueeze(2)], dim=2)
        source = _pad(planes.permute(2, 0, 1), grid)  # CxHxW integers, padded to the grid
        channels = 3 + (3 if alpha is not None else 0)
        out_planes = (1 if gray else 3) + (1 if alpha is not None else 0)
        s = self.scale
        padded = rgbx and out_planes == 3 and color.dtype == torch.uint8 and self.out_scale == s
        result = torch.empty(height * s, width * s, 4 if padded else out_planes, dtype=color.dtype, device=color.device)

        def tiles_of(origins: list[tuple[int, int]]) -> torch.Tensor:
            cut = torch.stack([source[:, y : y + grid.tile_h, x : x + grid.tile_w] for y, x in origins]).float() / top
            return _model_inputs(cut, gray, alpha is not None)

        for first_row, rows in self._bands(grid, tiles_of, channels):
            self._finish(rows, gray, alpha is not None, top, result[..., :out_planes], first_row, height * s)
        return _resize(result, self.out_scale / s) if self.out_scale != s else result

    def _bands(self, grid: TileGrid, tiles_of: Callable[[list[tuple[int, int]]], torch.Tensor],
               channels: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(first output row, float rows CxRxW) for every run of rows that no later tile touches."""
        s = self.scale
        if grid.whole:
            yield 0, next(self._outputs(tiles_of, [(0, 0)], channels))[1][0]
            return
        band: torch.Tensor | None = None
        for r, y in enumerate(grid.ys):
            for first, outputs in self._outputs(tiles_of, [(y, x) for x in grid.xs], channels):
                if band is None:
                    band = torch.zeros(channels, grid.tile_h * s, grid.width * s, device=outputs.device)
                wy = device_axis_weights(grid.ys, grid.tile_h, s, band.device)[r][:, None]
                wxs = device_axis_weights(grid.xs, grid.tile_w, s, band.device)
                for c, tile in enumerate(outputs, start=first):
                    x = grid.xs[c]
                    band[:, :, x * s : (x + grid.tile_w) * s].addcmul_(tile.mul_(wy), wxs[c])
            assert band is not None
            done = (grid.ys[r + 1] - y) * s if r + 1 < len(grid.ys) else band.shape[1]
            yield y * s, band[:, :done]
            carried = band[:, done:].clone()
            band.zero_()
            band[:, : carried.shape[1]] = carried

    def _outputs(self, tiles_of: Callable[[list[tuple[int, int]]], torch.Tensor], origins: list[tuple[int, int]],
                 channels: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(index of the first tile, float outputs N x channels x th*s x tw*s), one model batch at a time."""
        per_tile = channels // 3  # model inputs per tile: colour, and alpha as gray RGB
        step = max(self.batch // per_tile, 1)
        for start in range(0, len(origins), step):
            chunk = origins[start : start + step]
            inputs = tiles_of(chunk)
            outs = []
            for part in inputs.split(self.batch):
                count = part.shape[0]
                if self.static_batch and count < self.batch:
                    part = torch.cat([part, part[-1:].expand(self.batch - count, *part.shape[1:])])
                outs.append(self.runner(part)[:count])
            out = torch.cat(outs) if len(outs) > 1 else outs[0]
            yield start, out.reshape(len(chunk), channels, *out.shape[2:])

    def _finish(self, rows: torch.Tensor, gray: bool, has_alpha: bool, top: int, result: torch.Tensor,
                first_row: int, height: int) -> None:
        """Normalised float rows -> the output integers (luma for gray, un-premultiplied colour).

        `rows` are scratch (finished rows of the band, or the whole-image output) and are overwritten.
        """
        count = min(rows.shape[1], height - first_row)
        if count <= 0:
            return
        rows = rows[:, :count, : result.shape[1]]
        color = rows[:3]
        if has_alpha:
            alpha = rows[3:].mean(dim=0, keepdim=True).clamp(0, 1)
            color = color / alpha.clamp_min(1 / 255)
        if gray:
            luma = torch.tensor(_LUMA, device=rows.device, dtype=rows.dtype)
            color = torch.tensordot(luma, color, dims=1)[None]
        planes = torch.cat([color, alpha]) if has_alpha else color
        planes.clamp_(0, 1).mul_(top).round_()
        result[first_row : first_row + count].copy_(planes.permute(1, 2, 0))


def _model_inputs(cut: torch.Tensor, gray: bool, has_alpha: bool) -> torch.Tensor:
    """N x C x h x w in [0,1] -> the RGB tiles the model sees: premultiplied colour, then alpha as gray RGB."""
    color = cut[:, :1].expand(-1, 3, -1, -1) if gray else cut[:, :3]
    if not has_alpha:
        return color.contiguous()
    alpha = cut[:, -1:]
    return torch.cat([(color * alpha).unsqueeze(1), alpha.expand(-1, 3, -1, -1).unsqueeze(1)], dim=1).flatten(0, 1)


def _pad(planes: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """Pad a CxHxW image to the grid by reflection (replication where the image is too thin to reflect)."""
    pad_h, pad_w = grid.height - planes.shape[1], grid.width - planes.shape[2]
    if pad_h == 0 and pad_w == 0:
        return planes
    mode = "reflect" if pad_h < planes.shape[1] and pad_w < planes.shape[2] else "replicate"
    return F.pad(planes[None].float(), (0, pad_w, 0, pad_h), mode=mode)[0].to(planes.dtype)


def _resize(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Antialiased bicubic resize of HxWxC integers (for an output scale other than the model's)."""
    top = max_value(image.dtype)
    height, width = round(image.shape[0] * factor), round(image.shape[1] * factor)
    planes = image.permute(2, 0, 1)[None].float()
    out = F.interpolate(planes, size=(height, width), mode="bicubic", antialias=True, align_corners=False)[0]
    return out.clamp(0, top).round_().to(image.dtype).permute(1, 2, 0).contiguous()
