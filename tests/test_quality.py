"""Scores and the MATLAB resize against values worked out here, independently of the code under test.

Every expected number is either derived by hand in a comment or computed by a direct, loop-by-loop
implementation written in this file (not by calling the functions tested), so a wrong constant,
window, crop or kernel in upscaler.quality shows up without any dataset. The published bicubic rows
are checked too when ../shared/datasets is present.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from upscaler.quality.evaluate import bicubic_upscaler, score_dataset
from upscaler.quality.metrics import luma, psnr, psnr_y, ssim_y
from upscaler.quality.resize import imresize, resize_matrix

from .conftest import dataset, photo_array

# -- luma and PSNR -------------------------------------------------------------------------------


@pytest.mark.parametrize(("rgb", "y"), [
    ((0, 0, 0), 16.0),
    ((255, 255, 255), 235.0),  # 16 + 65.481 + 128.553 + 24.966
    ((255, 0, 0), 16.0 + 65.481),
    ((0, 255, 0), 16.0 + 128.553),
    ((0, 0, 255), 16.0 + 24.966),
    ((51, 102, 204), 16.0 + 65.481 * 0.2 + 128.553 * 0.4 + 24.966 * 0.8),
])
def test_luma_is_bt601_in_studio_range(rgb: tuple[int, int, int], y: float) -> None:
    pixels = np.array([[rgb]], dtype=np.uint8)
    out = luma(pixels)
    assert out.shape == (1, 1) and out.dtype == np.float64
    assert out[0, 0] == pytest.approx(y, abs=1e-9)


def test_gray_images_are_scored_on_their_own_values() -> None:
    gray = np.array([[0, 17, 255]], dtype=np.uint8)
    assert luma(gray).tolist() == [[0.0, 17.0, 255.0]]


def test_psnr_values() -> None:
    reference = np.full((4, 4), 100, np.uint8)
    assert psnr(reference, reference) == math.inf
    off_by_ten = reference + 10
    assert psnr(off_by_ten, reference) == pytest.approx(20 * math.log10(255 / 10), abs=1e-9)  # mse 100
    half = reference.copy()
    half[:2] = 90  # in uint8 arithmetic this would wrap; the differences must be signed
    assert psnr(reference, half) == pytest.approx(10 * math.log10(255**2 / 50), abs=1e-9)  # mse (8*100)/16


def test_psnr_y_crops_exactly_the_border() -> None:
    reference = np.full((12, 12, 3), 128, np.uint8)
    inside = reference.copy()
    inside[2, 2] = 0  # first kept row and column with a 2-pixel border
    inside[-3, -3] = 0  # last kept row and column
    y_diff = 16.0 + (65.481 + 128.553 + 24.966) * 128 / 255 - 16.0
    expected_mse = 2 * y_diff**2 / 64  # 8x8 pixels kept
    assert psnr_y(inside, reference, 2) == pytest.approx(10 * math.log10(255**2 / expected_mse), abs=1e-9)
    outside = reference.copy()
    outside[1, :] = outside[:, 1] = outside[-2, :] = outside[:, -2] = 0
    assert psnr_y(outside, reference, 2) == math.inf
    # border 0 keeps everything; border 1 crops exactly one pixel
    assert psnr_y(outside, reference, 0) < 20
    ring = reference.copy()
    ring[0, :] = ring[:, -1] = 0
    assert psnr_y(ring, reference, 1) == math.inf and psnr_y(ring, reference, 0) < 20


# -- SSIM -----------------------------------------------------------------------------------------


def _reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004, written out: 11x11 Gaussian (sigma 1.5) statistics at every 'valid' position."""
    size, sigma = 11, 1.5
    offsets = np.arange(size) - 5
    g = np.exp(-(offsets**2) / (2 * sigma**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for y in range(a.shape[0] - size + 1):
        for x in range(a.shape[1] - size + 1):
            pa, pb = a[y : y + size, x : x + size], b[y : y + size, x : x + size]
            ma, mb = (window * pa).sum(), (window * pb).sum()
            va = (window * (pa - ma) ** 2).sum()
            vb = (window * (pb - mb) ** 2).sum()
            cov = (window * (pa - ma) * (pb - mb)).sum()
            values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_of_flat_images_has_the_closed_form() -> None:
    """Flat images: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1) whatever the window (if it sums to 1)."""
    a, b = np.full((16, 16), 100, np.uint8), np.full((16, 16), 120, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim_y(a, b, 0) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1), abs=1e-9)
    assert ssim_y(a, a, 0) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_the_written_out_formula_on_a_photo() -> None:
    photo = photo_array("chelsea.png")[20:60, 30:66]
    rng = np.random.default_rng(0)
    noisy = np.clip(photo.astype(np.int16) + rng.integers(-20, 21, photo.shape), 0, 255).astype(np.uint8)
    expected = _reference_ssim(luma(noisy)[3:-3, 3:-3], luma(photo)[3:-3, 3:-3])
    assert ssim_y(noisy, photo, 3) == pytest.approx(expected, abs=1e-9)
    assert 0.3 < expected < 0.95  # a real, partial similarity, so every term matters
    # symmetric in its arguments, and the crop is applied to both
    assert ssim_y(photo, noisy, 3) == pytest.approx(expected, abs=1e-9)


# -- MATLAB imresize --------------------------------------------------------------------------


def _cubic(x: float) -> float:
    """Keys' cubic with a = -0.5, as MATLAB's imresize."""
    x = abs(x)
    if x <= 1:
        return 1.5 * x**3 - 2.5 * x**2 + 1
    if x <= 2:
        return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2
    return 0.0


def _matlab_resize_1d(values: list[float], scale: float) -> list[float]:
    """imresize along one axis, written as MATLAB's contributions(): antialiased kernel when shrinking, symmetric edges."""
    n = len(values)
    out_len = math.ceil(n * scale)
    width = 4.0 / scale if scale < 1 else 4.0
    out = []
    for i in range(1, out_len + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = [left + k for k in range(math.ceil(width) + 2)]
        weights = [scale * _cubic(scale * (u - j)) if scale < 1 else _cubic(u - j) for j in taps]
        total = sum(weights)
        mirrored = list(range(1, n + 1)) + list(range(n, 0, -1))
        out.append(sum(w / total * values[mirrored[(j - 1) % (2 * n)] - 1] for w, j in zip(weights, taps)))
    return out


@pytest.mark.parametrize(("x", "value"), [(0.0, 1.0), (0.25, 0.8671875), (0.5, 0.5625), (0.75, 0.2265625), (1.0, 0.0),
                                          (1.25, -0.0703125), (1.5, -0.0625), (1.75, -0.0234375), (2.0, 0.0), (2.5, 0.0)])
def test_cubic_kernel_values_worked_by_hand(x: float, value: float) -> None:
    assert _cubic(x) == value and _cubic(-x) == value
    # The x2 upscale's first sample sits 0.75 from pixel 1: its row of the matrix is these kernel values.
    del value


def test_upscale_by_two_of_a_ramp_worked_by_hand() -> None:
    """First output of a x2 upscale of [1, 2, 3, 4]: u = 0.75, taps -2..3, edges mirrored (0 -> 1, -1 -> 2).

    weights 0, c(1.75), c(0.75), c(0.25), c(1.25), 0 on pixels -, 2, 1, 1, 2, - = 1.09375 x1 - 0.09375 x2 = 0.90625.
    """
    out = imresize(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64), 2)
    assert out.shape == (2, 8)
    assert out[0, 0].item() == pytest.approx(0.90625, abs=1e-12)
    assert out[0].tolist() == pytest.approx(_matlab_resize_1d([1.0, 2.0, 3.0, 4.0], 2), abs=1e-12)
    assert out[0].tolist() == pytest.approx(out[1].tolist(), abs=1e-12)  # rows: a 1-pixel axis stays constant


@pytest.mark.parametrize(("n", "scale"), [(7, 4), (9, 2), (12, 0.25), (13, 0.5), (10, 1 / 3), (5, 3)])
def test_resize_matrix_matches_matlab_contributions(n: int, scale: float) -> None:
    matrix = resize_matrix(n, math.ceil(n * scale), scale)
    for k in range(n):
        unit = [0.0] * n
        unit[k] = 1.0
        assert matrix[:, k].tolist() == pytest.approx(_matlab_resize_1d(unit, scale), abs=1e-12)


def test_imresize_is_separable_and_sized_as_matlab() -> None:
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.random((2, 5, 7)))
    out = imresize(image, 0.5)
    assert out.shape == (2, 3, 4)  # ceil(5 / 2), ceil(7 / 2)
    for c in range(2):
        rows = [_matlab_resize_1d(row, 0.5) for row in image[c].tolist()]
        expected = np.array([_matlab_resize_1d(list(col), 0.5) for col in zip(*rows)]).T
        assert out[c].numpy() == pytest.approx(expected, abs=1e-12)
    assert torch.allclose(imresize(torch.full((6, 6), 3.0, dtype=torch.float64), 0.25), torch.full((2, 2), 3.0, dtype=torch.float64))


# -- the published bicubic rows -------------------------------------------------------------------


def test_bicubic_reproduces_the_published_set5_row() -> None:
    """Bicubic x4 on Set5 in the published tables (Kim et al., Ledig et al.): 28.42 dB / 0.8104.

    SSIM within the rounding of the MATLAB code's Y channel. Set14's row (26.00 / 0.7027) is left to
    test_train (PSNR): its float64 SSIM alone takes over a minute on two cores.
    """
    score = score_dataset(bicubic_upscaler(4), dataset("Set5"), 4)
    assert score.psnr == pytest.approx(28.42, abs=0.02)
    assert score.ssim == pytest.approx(0.8104, abs=0.0015)


def test_imresize_keeps_the_images_dtype() -> None:
    image = torch.from_numpy(np.random.default_rng(2).random((3, 9, 11)))
    single = imresize(image.float(), 0.5)
    assert single.dtype == torch.float32
    assert torch.allclose(single.double(), imresize(image, 0.5), atol=1e-6)
