"""Real-ESRGAN's high-order degradation: kernels by formula, a real JPEG encoder, exact seeds and resume."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from upscaler.train.data import PatchSampler, Prefetcher
from upscaler.train.degradations import (
    Draw,
    RealWorldSettings,
    degrade_realworld,
    gaussian_kernel,
    generalized_gaussian_kernel,
    jpeg,
    plateau_kernel,
    random_blur_kernel,
    sinc_kernel,
    unsharp_mask,
)
from upscaler.train.trainer import TrainConfig, Trainer

from .conftest import EXAMPLES


def _offsets(size: int) -> tuple[np.ndarray, np.ndarray]:
    ax = np.arange(size) - (size - 1) / 2
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def test_every_kernel_sums_to_one_and_matches_its_formula() -> None:
    xx, yy = _offsets(7)
    iso = np.exp(-(xx**2 + yy**2) / (2 * 1.3**2))
    np.testing.assert_allclose(gaussian_kernel(7, 1.3, 1.3, 0.0).numpy(), iso / iso.sum(), rtol=1e-12)
    # Anisotropic, rotated by 90 degrees: the axes swap.
    aniso = np.exp(-0.5 * (xx**2 / 2.0**2 + yy**2 / 0.7**2))
    np.testing.assert_allclose(gaussian_kernel(7, 0.7, 2.0, math.pi / 2).numpy(), aniso / aniso.sum(), atol=1e-12)
    q = (xx**2 + yy**2) / 1.5**2
    generalized = np.exp(-0.5 * q**0.6)
    np.testing.assert_allclose(generalized_gaussian_kernel(7, 1.5, 1.5, 0.0, 0.6).numpy(), generalized / generalized.sum(), rtol=1e-12)
    plateau = 1 / (1 + q**1.7)
    np.testing.assert_allclose(plateau_kernel(7, 1.5, 1.5, 0.0, 1.7).numpy(), plateau / plateau.sum(), rtol=1e-12)
    # sinc: cutoff J1(cutoff r) / (2 pi r); J1(1.0 * 1) = 0.44005058574493355 at the four neighbours.
    sinc = sinc_kernel(3, 1.0).numpy()
    r = np.hypot(xx[2:5, 2:5], yy[2:5, 2:5])
    assert sinc.shape == (3, 3)
    centre, edge = 1.0 / (4 * math.pi), 0.44005058574493355 / (2 * math.pi)
    assert sinc[1, 1] / sinc[0, 1] == pytest.approx(centre / edge, rel=1e-9)
    assert r[1, 0] == 1.0
    generator = torch.Generator().manual_seed(5)
    for _ in range(40):
        kernel = random_blur_kernel(Draw(generator), RealWorldSettings(), second=bool(_ % 2))
        assert kernel.shape[0] in RealWorldSettings().kernel_sizes
        assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-9)


def test_jpeg_goes_through_the_real_codec_and_shows_block_edges() -> None:
    gradient = torch.linspace(0, 1, 64)[None, None, :].expand(3, 64, 64) * torch.linspace(0.3, 1, 64)[None, :, None]
    coded = jpeg(gradient.contiguous(), 10)
    assert not torch.equal(coded, gradient)
    y = coded.mean(0).numpy()
    steps = np.abs(np.diff(y, axis=1)).mean(0)  # mean |horizontal difference| between columns c and c+1
    at_edges = steps[7::8].mean()
    inside = np.delete(steps, np.s_[7::8]).mean()
    assert at_edges > 2 * inside  # 8x8 blocks, as libjpeg makes them at q10


def test_lr_patches_are_a_quarter_and_quantised() -> None:
    hr = torch.rand(3, 64, 64)
    lr = degrade_realworld(hr, 4, RealWorldSettings(), Draw(torch.Generator().manual_seed(1)))
    assert lr.shape == (3, 16, 16)
    assert torch.equal(lr, (lr * 255).round() / 255)
    assert 0 <= float(lr.min()) and float(lr.max()) <= 1


def test_usm_target_sharpens_edges_only() -> None:
    flat = torch.full((3, 32, 32), 0.5)
    assert torch.allclose(unsharp_mask(flat), flat)
    step = flat.clone()
    step[:, :, 16:] = 0.8
    sharp = unsharp_mask(step)
    assert float(sharp[:, :, 16].mean()) > 0.8 and float(sharp[:, :, 15].mean()) < 0.5


def test_same_seed_same_batch_and_prefetched_batches_equal_drawn_ones() -> None:
    settings = RealWorldSettings()
    a = PatchSampler(EXAMPLES, patch=32, scale=4, seed=9, realworld=settings)
    b = PatchSampler(EXAMPLES, patch=32, scale=4, seed=9, realworld=settings)
    ahead = Prefetcher(b, 3, depth=2)
    try:
        for _ in range(3):
            lr_a, hr_a = a.batch(3)
            lr_b, hr_b = ahead.next()
            assert lr_a.shape == (3, 3, 8, 8) and hr_a.shape == (3, 3, 32, 32)
            assert torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b)
    finally:
        ahead.close()
    other = PatchSampler(EXAMPLES, patch=32, scale=4, seed=10, realworld=settings)
    assert not torch.equal(other.batch(3)[0], PatchSampler(EXAMPLES, 32, 4, 9, settings).batch(3)[0])


def test_prefetcher_state_is_after_the_last_batch_handed_out() -> None:
    sampler = PatchSampler(EXAMPLES, patch=32, scale=4, seed=2, realworld=RealWorldSettings())
    ahead = Prefetcher(sampler, 2, depth=2)
    try:
        ahead.next()
        state = ahead.rng_state().clone()
        expected = ahead.next()
        ahead.restore(state)
        again = ahead.next()
    finally:
        ahead.close()
    assert torch.equal(expected[0], again[0]) and torch.equal(expected[1], again[1])


def _config(steps: int) -> TrainConfig:
    return TrainConfig(data=str(EXAMPLES), arch="compact", patch=32, batch=2, steps=steps, checkpoint_every=3,
                       log_every=1, arch_params={"channels": 8, "blocks": 1}, degradation="realworld")


def test_resumed_realworld_run_draws_the_same_next_batch(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    straight = Trainer(_config(4), tmp_path / "a", torch.device("cpu"))
    straight.run(lambda _: None)  # checkpoint at step 3, then one more step
    resumed = Trainer(_config(4), tmp_path / "a", torch.device("cpu"))
    resumed.resume()
    assert resumed.step == 4
    fresh = Trainer(_config(6), tmp_path / "b", torch.device("cpu"))
    for _ in range(4):
        fresh.batches.next()
    torch.testing.assert_close(resumed.batches.next(), fresh.batches.next(), rtol=0, atol=0)


def test_bad_degradation_settings_are_named() -> None:
    with pytest.raises(ValueError, match="noise_rang: unknown"):
        RealWorldSettings.from_params({"noise_rang": [1, 2]})
    with pytest.raises(ValueError, match="jpeg_range: a JSON list"):
        RealWorldSettings.from_params({"jpeg_range": 50})
    with pytest.raises(ValueError, match="kernel_prob"):
        RealWorldSettings.from_params({"kernel_prob": [1, 0, 0, 0, 0, 0.5]})
    assert RealWorldSettings.from_params({"noise_range": [1, 10]}) == replace(RealWorldSettings(), noise_range=(1.0, 10.0))
    with pytest.raises(ValueError, match="realworld only"):
        TrainConfig(data=".", arch="compact", degradation_params={"noise_range": [1, 2]}).with_recipe_defaults()
