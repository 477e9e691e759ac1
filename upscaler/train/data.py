"""Training pairs: HR images decoded once into memory, random crops, LR made on the fly.

LR patches come from MATLAB-bicubic downscaling of an HR crop that carries a margin of real
context, so a patch is degraded exactly as the benchmark's LR images were made from whole
images; images are padded symmetrically once, as MATLAB pads at the borders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from upscaler.io.images import SUFFIX_FORMATS
from upscaler.quality.evaluate import read_named, to_uint8
from upscaler.quality.resize import imresize


def find_images(folder: Path, recursive: bool = True) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in SUFFIX_FORMATS)


def read_rgb8(path: Path) -> np.ndarray:
    """HxWx3 uint8 pixels, upright, alpha dropped; a file that cannot be decoded (or a bomb) is named."""
    color = read_named(path).color
    return to_uint8(color if color.ndim == 3 else np.repeat(color[..., None], 3, axis=2))


def degrade(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """MATLAB-bicubic downscale of float [0,1] images, quantized to 8 bits like saved LR files."""
    lr = imresize(hr, 1.0 / scale)
    return (lr.clamp(0, 1) * 255).round() / 255


class PatchSampler:
    """Draws (LR, HR) batches; every random choice comes from one generator, so resume is exact."""

    def __init__(self, folder: Path, patch: int, scale: int, seed: int) -> None:
        self.patch, self.scale = patch, scale
        # Kernel support of a x`scale` MATLAB downscale is 2*scale pixels each side; round up to the grid.
        self.margin = 2 * scale + scale
        self.images: list[torch.Tensor] = []
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder of training images")
        paths = find_images(folder)
        for path in paths:
            rgb = read_rgb8(path)
            if min(rgb.shape[:2]) < patch:
                continue
            padded = np.pad(rgb, ((self.margin, self.margin), (self.margin, self.margin), (0, 0)), mode="symmetric")
            self.images.append(torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1))))
        if not self.images:
            raise ValueError(f"{folder}: no training images of at least {patch}x{patch} pixels")
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        span = self.patch + 2 * self.margin
        crops = []
        for _ in range(size):
            image = self.images[self._randint(len(self.images))]
            top = self._randint(image.shape[1] - span + 1)
            left = self._randint(image.shape[2] - span + 1)
            crops.append(image[:, top : top + span, left : left + span])
        hr_wide = torch.stack(crops).float() / 255
        lr_margin = self.margin // self.scale
        lr = degrade(hr_wide, self.scale)[..., lr_margin:-lr_margin, lr_margin:-lr_margin]
        hr = hr_wide[..., self.margin : -self.margin, self.margin : -self.margin]
        return self._augment(lr.contiguous(), hr.contiguous())

    def _augment(self, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The eight flips and 90-degree turns, one per sample."""
        choices = torch.randint(8, (lr.shape[0],), generator=self.generator).tolist()
        pairs = []
        for a, b, choice in zip(lr, hr, choices):
            if choice & 1:
                a, b = a.flip(-1), b.flip(-1)
            if choice & 2:
                a, b = a.flip(-2), b.flip(-2)
            if choice & 4:
                a, b = a.transpose(-1, -2), b.transpose(-1, -2)
            pairs.append((a, b))
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
