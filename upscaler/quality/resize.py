"""MATLAB-compatible bicubic `imresize` (a = -0.5, antialiased when shrinking).

Benchmarks' LR images were made with MATLAB, so training degradation and the bicubic baseline
must use the same kernel; PIL's and torch's bicubic differ enough to cost tenths of a dB.
The resize is two dense matrix products, which is exact and fast at image sizes.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


def _cubic(x: torch.Tensor) -> torch.Tensor:
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


@lru_cache(maxsize=64)
def resize_matrix(in_len: int, out_len: int, scale: float) -> torch.Tensor:
    """(out_len, in_len) float64 matrix of MATLAB's contributions, symmetric at the borders."""
    kernel_width = 4.0 / scale if scale < 1 else 4.0
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    distance = u[:, None] - indices
    weights = scale * _cubic(scale * distance) if scale < 1 else _cubic(distance)
    weights = weights / weights.sum(dim=1, keepdim=True)
    mirror = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])
    columns = mirror[(indices.long() - 1) % (2 * in_len)]
    matrix = torch.zeros(out_len, in_len, dtype=torch.float64)
    matrix.scatter_add_(1, columns, weights)
    return matrix


def imresize(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize (..., H, W) float images by `scale`; output size is ceil(size * scale), as MATLAB."""
    height, width = images.shape[-2:]
    out_h, out_w = math.ceil(height * scale), math.ceil(width * scale)
    rows = resize_matrix(height, out_h, scale).to(images.device, images.dtype)
    cols = resize_matrix(width, out_w, scale).to(images.device, images.dtype)
    return rows @ images @ cols.T
