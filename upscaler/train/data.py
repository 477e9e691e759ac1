"""Training pairs: HR images decoded once into memory, random crops, LR made on the fly.

`bicubic`: LR patches come from MATLAB-bicubic downscaling of an HR crop that carries a margin
of real context, so a patch is degraded exactly as the benchmark's LR images were made from
whole images; images are padded symmetrically once, as MATLAB pads at the borders.
`realworld`: each HR crop goes through Real-ESRGAN's high-order degradation (train/degradations.py).
`Prefetcher` makes the next batches on a thread while the optimizer runs, and knows the RNG
state after the last batch it handed out, so a checkpoint resumes exactly.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np
import torch

from upscaler.io.formats import SUFFIX_FORMATS
from upscaler.io.images import to_uint8
from upscaler.quality.evaluate import read_named
from upscaler.quality.resize import imresize
from upscaler.train.degradations import Draw, RealWorldSettings, degrade_realworld, random_damage, unsharp_mask

DEGRADATIONS = ("bicubic", "realworld")


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

    def __init__(self, folder: Path, patch: int, scale: int, seed: int,
                 realworld: RealWorldSettings | None = None) -> None:
        self.patch, self.scale, self.realworld = patch, scale, realworld
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
        if self.realworld is not None:
            return self._realworld_batch(size, self.realworld)
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

    def _realworld_batch(self, size: int, settings: RealWorldSettings) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops inside the unpadded image, each degraded on its own draw of the high-order model
        (or, with `direct_prob`, of the direct path: bicubic down from the crop's context, then damage)."""
        draw = Draw(self.generator)
        lrs, hrs = [], []
        m = self.margin
        for _ in range(size):
            image = self.images[self._randint(len(self.images))]
            top = m + self._randint(image.shape[1] - 2 * m - self.patch + 1)
            left = m + self._randint(image.shape[2] - 2 * m - self.patch + 1)
            hr = image[:, top : top + self.patch, left : left + self.patch].float() / 255
            if settings.direct_prob > 0 and draw.chance(settings.direct_prob):
                wide = image[:, top - m : top + self.patch + m, left - m : left + self.patch + m].float() / 255
                lr_margin = m // self.scale
                lr = degrade(wide, self.scale)[:, lr_margin:-lr_margin, lr_margin:-lr_margin]
                lrs.append(random_damage(draw, settings).apply(lr.contiguous(), draw))
            else:
                lrs.append(degrade_realworld(hr, self.scale, settings, draw))
            hrs.append(unsharp_mask(hr) if settings.usm_target else hr)
        return self._augment(torch.stack(lrs), torch.stack(hrs))

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


class Prefetcher:
    """`depth` batches made ahead on a thread (0: made when asked), handed out in draw order.

    The sampler's generator runs ahead of training; `rng_state` is its state right after the
    last batch handed out, which is what a checkpoint must store to resume exactly.
    """

    def __init__(self, sampler: PatchSampler, size: int, depth: int) -> None:
        self.sampler, self.size, self.depth = sampler, size, depth
        self._consumed = sampler.generator.get_state()
        self._queue: queue.Queue[tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor] | BaseException] = queue.Queue(max(depth, 1))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                item = (self.sampler.batch(self.size), self.sampler.generator.get_state())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # noqa: BLE001 (handed to the training thread, which raises it)
            self._queue.put(exc)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.depth == 0:
            batch = self.sampler.batch(self.size)
            self._consumed = self.sampler.generator.get_state()
            return batch
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="degrade", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._consumed = item
        return batch

    def rng_state(self) -> torch.Tensor:
        return self._consumed

    def restore(self, state: torch.Tensor) -> None:
        """Continue from `state`: batches made ahead from another state are dropped."""
        self.close()
        self.sampler.generator.set_state(state)
        self._consumed = state
        self._queue = queue.Queue(max(self.depth, 1))
        self._stop = threading.Event()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread = None
