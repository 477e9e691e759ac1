"""Scoring on paired datasets (HR/ + LR_bicubic/X{scale}/), on the published protocol.

The damaged tracks make each LR from its HR instead: MATLAB-bicubic down, then a caller's damage
(JPEG, noise, blur), and score bicubic upscaling of the same LR beside the model."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from upscaler.io.files import write_atomically
from upscaler.io.images import Picture, PictureError, read_picture, to_uint8
from upscaler.quality.metrics import jpeg_grid, psnr_y, ssim_y
from upscaler.quality.resize import imresize

# uint8 HxW (gray) or HxWx3 in, uint8 of the same kind at `scale` times the size out.
UpscaleFn = Callable[[np.ndarray], np.ndarray]
Pairs = Iterable[tuple[str, np.ndarray, np.ndarray]]  # (name, LR, HR)


@dataclass
class ImageScore:
    name: str
    psnr: float
    ssim: float
    grid: float  # jpeg_grid of the output: 1.0 draws no 8x8 block grid


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

    @property
    def grid(self) -> float:
        return float(np.mean([s.grid for s in self.images]))


def read_named(path: Path) -> Picture:
    """read_picture, its failures as one ValueError that names the file."""
    try:
        return read_picture(path)
    except PictureError as exc:
        raise ValueError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def read_benchmark_image(path: Path) -> np.ndarray:
    """uint8 HxWx3, or HxW for grayscale, which the published protocol scores as it is."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (every HR image needs an LR image of the same name)")
    picture = read_named(path)
    if picture.alpha is not None:
        raise ValueError(f"{path}: has an alpha channel; benchmark images are RGB or grayscale")
    if picture.bits != 8:
        raise ValueError(f"{path}: {picture.bits}-bit; benchmark images are 8-bit")
    return to_uint8(picture.color)


def dataset_pairs(folder: Path, scale: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, LR, HR cropped to scale * LR size), keeping grayscale images grayscale."""
    lr_dir = folder / "LR_bicubic" / f"X{scale}"
    hr_paths = sorted((folder / "HR").glob("*.png"))
    if not hr_paths or not lr_dir.is_dir():
        raise FileNotFoundError(f"{folder}: expected HR/*.png and LR_bicubic/X{scale}/")
    for hr_path in hr_paths:
        hr, lr = read_benchmark_image(hr_path), read_benchmark_image(lr_dir / hr_path.name)
        h, w = lr.shape[:2]
        yield hr_path.name, lr, hr[: h * scale, : w * scale]


def damaged_pairs(folder: Path, scale: int, damage: Callable[[np.ndarray, int], np.ndarray]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, LR, HR) with LR = damage(MATLAB-bicubic x`scale` down of HR, quantised to 8 bits, image index)."""
    hr_paths = sorted((folder / "HR").glob("*.png"))
    if not hr_paths:
        raise FileNotFoundError(f"{folder}: expected HR/*.png")
    for index, hr_path in enumerate(hr_paths):
        hr = read_benchmark_image(hr_path)
        hr = hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
        yield hr_path.name, damage(bicubic_resize(hr, 1 / scale), index), hr


def score_pairs(upscalers: dict[str, UpscaleFn], pairs: Pairs, dataset: str, scale: int) -> dict[str, DatasetScore]:
    """Every upscaler on the same LR images, so a baseline sees exactly the model's input."""
    scores: dict[str, list[ImageScore]] = {key: [] for key in upscalers}
    for name, lr, hr in pairs:
        for key, upscale in upscalers.items():
            sr = upscale(lr)
            if sr.shape != hr.shape:
                raise ValueError(f"{dataset}/{name}: output {sr.shape} but reference {hr.shape}")
            scores[key].append(ImageScore(name, psnr_y(sr, hr, scale), ssim_y(sr, hr, scale), jpeg_grid(sr)))
    return {key: DatasetScore(dataset, images) for key, images in scores.items()}


def score_dataset(upscale: UpscaleFn, folder: Path, scale: int) -> DatasetScore:
    return score_pairs({"model": upscale}, dataset_pairs(folder, scale), folder.name, scale)["model"]


def bicubic_resize(pixels: np.ndarray, factor: float) -> np.ndarray:
    """MATLAB imresize of uint8 pixels (gray stays gray), rounded back to uint8."""
    planes = torch.from_numpy(np.array(pixels, dtype=np.float64))
    planes = planes if pixels.ndim == 2 else planes.permute(2, 0, 1)
    out = imresize(planes, factor).round().clamp(0, 255).byte()
    return (out if pixels.ndim == 2 else out.permute(1, 2, 0)).numpy()


def bicubic_upscaler(scale: int) -> UpscaleFn:
    """The MATLAB bicubic baseline, the `bicubic` row of the published tables (gray stays gray)."""
    return lambda lr: bicubic_resize(lr, scale)


def picture_upscaler(upscale_picture: Callable[[Picture], Picture]) -> UpscaleFn:
    """Score what users get: the whole picture path, tiling and all."""

    def run(lr: np.ndarray) -> np.ndarray:
        return upscale_picture(Picture(color=lr, alpha=None, format="PNG")).color

    return run


def record_scores(source: Path, target: Path, scores: dict[str, Any]) -> None:
    """Copy the weights file `source` to `target` with `scores` merged into its metadata.

    The tensors are copied from the file, byte for byte: never from a loaded module, which a
    backend may have converted (to bf16, fp16, channels-last) for running.
    """
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    metadata["scores"] = json.dumps({**json.loads(metadata.get("scores") or "{}"), **scores})
    write_atomically(target, lambda stream: stream.write(save(tensors, metadata=metadata)))
