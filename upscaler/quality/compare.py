"""The comparison sheet: the same crops of the input, bicubic, each model and the reference, side by side.

Tables of dB say which model scores better; the sheet shows what the difference looks like, which
is how people choose (upscayl and chaiNNer show a before/after view for the same reason).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from upscaler.quality.evaluate import bicubic_resize
from upscaler.quality.metrics import luma, psnr_y, ssim_y

Crop = tuple[int, int, int, int]  # x, y, width, height in input pixels

BACKGROUND, INK, GAP, LABEL_HEIGHT, FONT_SIZE = (24, 24, 24), (235, 235, 235), 4, 40, 14


@dataclass
class Panel:
    """One column of the sheet: uint8 HxWx3 pixels at the output size, and what they score."""

    label: str
    pixels: np.ndarray
    psnr: float | None = None
    ssim: float | None = None

    def caption(self) -> str:
        return self.label if self.psnr is None else f"{self.label}\n{self.psnr:.2f} dB  SSIM {self.ssim:.4f}"


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 from gray (HxW) or RGB pixels."""
    return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels


def nearest(pixels: np.ndarray, scale: int) -> np.ndarray:
    """The input as its pixels really are, each one a `scale` x `scale` square."""
    return pixels.repeat(scale, axis=0).repeat(scale, axis=1)


def detail_crops(pixels: np.ndarray, size: int, count: int) -> list[Crop]:
    """Up to `count` non-overlapping `size`-pixel windows with the most detail (sum of |dx| + |dy| of Y).

    Where a model differs from bicubic is edges and texture: a flat sky shows nothing.
    """
    y = luma(as_rgb(pixels))
    height, width = y.shape
    w, h = min(size, width), min(size, height)
    energy = np.zeros((height, width))
    energy[:, 1:] += np.abs(np.diff(y, axis=1))
    energy[1:, :] += np.abs(np.diff(y, axis=0))
    summed = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    windows = summed[h:, w:] - summed[:-h, w:] - summed[h:, :-w] + summed[:-h, :-w]  # windows[y, x]
    crops: list[Crop] = []
    for _ in range(count):
        top, left = np.unravel_index(int(np.argmax(windows)), windows.shape)
        if windows[top, left] < 0:
            break
        crops.append((int(left), int(top), w, h))
        # No later window may overlap this one: blank every corner that would.
        windows[max(0, top - h + 1): top + h, max(0, left - w + 1): left + w] = -1
    return crops


def panels_for(lr: np.ndarray, outputs: list[tuple[str, np.ndarray]], scale: int, reference: np.ndarray | None = None) -> list[Panel]:
    """The input (nearest), bicubic, each model's output, then the reference, which scores all but the input.

    `reference` must be at least `scale` times the input; it is cropped to exactly that, as eval does.
    """
    height, width = lr.shape[:2]
    panels = [Panel("input (nearest)", nearest(lr, scale)), Panel("bicubic", bicubic_resize(lr, scale))]
    panels += [Panel(label, pixels) for label, pixels in outputs]
    if reference is None:
        return panels
    if reference.shape[0] < height * scale or reference.shape[1] < width * scale:
        raise ValueError(f"{reference.shape[1]}x{reference.shape[0]}, smaller than x{scale} of the input ({width * scale}x{height * scale})")
    reference = reference[: height * scale, : width * scale]
    for panel in panels[1:]:
        panel.psnr, panel.ssim = psnr_y(panel.pixels, reference, scale), ssim_y(panel.pixels, reference, scale)
    return [*panels, Panel("reference", reference)]


def check_crop(crop: Crop, width: int, height: int) -> Crop:
    """`crop` itself, once it is known to lie inside the input."""
    x, y, w, h = crop
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"crop {x},{y},{w},{h} does not lie inside the {width}x{height} input")
    return crop


def sheet(panels: list[Panel], crops: list[Crop], scale: int) -> Image.Image:
    """One row per crop, one column per panel, each column captioned: an RGB image."""
    font = ImageFont.load_default(size=FONT_SIZE)
    widths = [w * scale for _, _, w, _ in crops]
    heights = [h * scale for _, _, _, h in crops]
    column = max(widths)
    image = Image.new("RGB", (len(panels) * (column + GAP) + GAP, LABEL_HEIGHT + sum(heights) + GAP * (len(crops) + 1)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for n, panel in enumerate(panels):
        left = GAP + n * (column + GAP)
        draw.multiline_text((left + 2, 4), panel.caption(), fill=INK, font=font, spacing=4)
        top = LABEL_HEIGHT + GAP
        for (x, y, w, h), height in zip(crops, heights, strict=True):
            part = panel.pixels[y * scale: (y + h) * scale, x * scale: (x + w) * scale]
            image.paste(Image.fromarray(np.ascontiguousarray(part)), (left, top))
            top += height + GAP
    return image
