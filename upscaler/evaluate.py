"""Scoring on paired datasets (HR/ + LR_bicubic/X{scale}/), on the published protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import Picture
from .metrics import psnr_y, ssim_y
from .resize import imresize

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


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """CHW float [0,1] to HWC uint8, rounding to nearest."""
    return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def _rgb_in_gray_out(fn: Callable[[torch.Tensor], torch.Tensor]) -> UpscaleFn:
    """Wrap a CHW float RGB upscaler into the uint8, gray-aware UpscaleFn."""

    def run(lr: np.ndarray) -> np.ndarray:
        gray = lr.ndim == 2
        rgb = np.stack([lr] * 3, axis=-1) if gray else lr
        out = to_uint8(fn(torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255))
        if gray:
            return np.asarray(Image.fromarray(out).convert("L"))
        return out

    return run


def bicubic_upscaler(scale: int) -> UpscaleFn:
    """The MATLAB bicubic baseline, the `bicubic` row of the published tables."""
    return _rgb_in_gray_out(lambda x: imresize(x.double(), scale).float())


def module_upscaler(module: torch.nn.Module, device: torch.device) -> UpscaleFn:
    """Whole-image forward pass in fp32: what training validation scores."""

    @torch.no_grad()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return module(x[None].to(device))[0].float().cpu()

    return _rgb_in_gray_out(forward)


def tiled_upscaler(upscale_picture: Callable[[Picture], Picture]) -> UpscaleFn:
    """Score what users get: the whole picture path, tiling and all."""

    def run(lr: np.ndarray) -> np.ndarray:
        picture = Picture(color=lr.astype(np.float32) / 255, alpha=None, bits=8, format="PNG")
        out = upscale_picture(picture).color
        return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)

    return run
