"""Scoring on paired datasets (HR/ + LR_bicubic/X{scale}/), on the published protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from upscaler.io.images import Picture
from upscaler.quality.metrics import psnr_y, ssim_y
from upscaler.quality.resize import imresize

# uint8 HxW (gray) or HxWx3 in, uint8 of the same kind at `scale` times the size out.
UpscaleFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class ImageScore:
    name: str
    psnr: float
    ssim: float


@dataclass
class DatasetScore:
    name: str
    images: list[ImageScore]

    @property
    def psnr(self) -> float:
        return float(np.mean([s.psnr for s in self.images]))

    @property
    def ssim(self) -> float:
        return float(np.mean([s.ssim for s in self.images]))


def dataset_pairs(folder: Path, scale: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, LR, HR cropped to scale * LR size), keeping grayscale images grayscale."""
    lr_dir = folder / "LR_bicubic" / f"X{scale}"
    hr_paths = sorted((folder / "HR").glob("*.png"))
    if not hr_paths or not lr_dir.is_dir():
        raise FileNotFoundError(f"{folder}: expected HR/*.png and LR_bicubic/X{scale}/")
    for hr_path in hr_paths:
        with Image.open(hr_path) as hr_img, Image.open(lr_dir / hr_path.name) as lr_img:
            hr, lr = np.asarray(hr_img), np.asarray(lr_img)
        h, w = lr.shape[:2]
        yield hr_path.name, lr, hr[: h * scale, : w * scale]


def score_dataset(upscale: UpscaleFn, folder: Path, scale: int) -> DatasetScore:
    scores = []
    for name, lr, hr in dataset_pairs(folder, scale):
        sr = upscale(lr)
        if sr.shape != hr.shape:
            raise ValueError(f"{folder.name}/{name}: output {sr.shape} but reference {hr.shape}")
        scores.append(ImageScore(name, psnr_y(sr, hr, scale), ssim_y(sr, hr, scale)))
    return DatasetScore(folder.name, scores)


def bicubic_upscaler(scale: int) -> UpscaleFn:
    """The MATLAB bicubic baseline, the `bicubic` row of the published tables (gray stays gray)."""

    def run(lr: np.ndarray) -> np.ndarray:
        planes = torch.from_numpy(np.array(lr, dtype=np.float64))
        planes = planes if lr.ndim == 2 else planes.permute(2, 0, 1)
        out = imresize(planes, scale).round().clamp(0, 255).byte()
        return (out if lr.ndim == 2 else out.permute(1, 2, 0)).numpy()

    return run


def picture_upscaler(upscale_picture: Callable[[Picture], Picture]) -> UpscaleFn:
    """Score what users get: the whole picture path, tiling and all."""

    def run(lr: np.ndarray) -> np.ndarray:
        return upscale_picture(Picture(color=lr, alpha=None, format="PNG")).color

    return run
