"""PSNR and SSIM on the published protocol: BT.601 Y channel, `scale` pixels cropped per border."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 Y in [16, 235] from uint8 HxWx3 pixels, as float64.

    A grayscale (HxW) image is scored on its own values, not converted: that is what the
    published tables did (it is how Set14's bicubic row comes out at 26.00 dB).
    """
    x = rgb.astype(np.float64)
    if x.ndim == 2:
        return x
    x = x / 255.0
    return 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def _crop(y: np.ndarray, border: int) -> np.ndarray:
    return y[border:-border, border:-border] if border > 0 else y


def psnr(output: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of 8-bit-range arrays over every value."""
    mse = float(np.mean((output.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def psnr_y(output: np.ndarray, reference: np.ndarray, border: int) -> float:
    return psnr(_crop(luma(output), border), _crop(luma(reference), border))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_y(output: np.ndarray, reference: np.ndarray, border: int) -> float:
    """Wang et al. 2004 SSIM with an 11x11 Gaussian (sigma 1.5), 'valid' filtering, as MATLAB's."""
    a = torch.from_numpy(_crop(luma(output), border))[None, None]
    b = torch.from_numpy(_crop(luma(reference), border))[None, None]
    window = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = F.conv2d(a, window), F.conv2d(b, window)
    var_a = F.conv2d(a * a, window) - mu_a**2
    var_b = F.conv2d(b * b, window) - mu_b**2
    cov = F.conv2d(a * b, window) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def jpeg_grid(output: np.ndarray, period: int = 32, scale_period: int = 4) -> float:
    """How strongly an x4 output draws the 8x8 block grid of a JPEG LR: 1.0 is no grid at all.

    On Y, the mean |horizontal difference| of each column plus the mean |vertical difference| of
    each row, folded by position mod `period` (8 LR pixels at x4; position 31 is the step from
    the last pixel of a block to the first of the next). The figure is the largest, over the
    positions around the block edge (29, 30, 31, 0, 1), of the profile divided by the median of
    the positions with the same value mod `scale_period` that lie more than 3 away from 31: the
    pixel shuffle has a period of its own, which this compares like with like.
    """
    y = luma(output)
    columns = np.abs(np.diff(y, axis=1)).mean(axis=0)
    rows = np.abs(np.diff(y, axis=0)).mean(axis=1)
    profile = np.zeros(period)
    for series in (columns, rows):
        positions = np.arange(series.size) % period
        profile += np.bincount(positions, weights=series, minlength=period) / np.maximum(
            np.bincount(positions, minlength=period), 1)
    edge = period - 1
    ratios = []
    for k in (edge - 2, edge - 1, edge, 0, 1):
        far = [j for j in range(period)
               if j % scale_period == k % scale_period and min(abs(j - edge), period - abs(j - edge)) > 3]
        ratios.append(profile[k] / max(float(np.median(profile[far])), 1e-12))
    return float(max(ratios))
