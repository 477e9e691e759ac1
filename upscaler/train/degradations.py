"""Real-world degradation of training crops: Real-ESRGAN's high-order model, per HR crop, on the CPU.

Wang et al. (ICCVW 2021) train on LR patches made from each HR crop by two rounds of blur,
resize, noise and JPEG, then a final resize with an optional sinc filter and JPEG in random
order. `RealWorldSettings` holds every probability and range as an option whose default is the
value of Real-ESRGAN's `train_realesrgan_x4plus.yml`. JPEG goes through libjpeg (Pillow), not a
differentiable imitation, so the blocks are the ones a real encoder makes. Every random choice is
drawn from one torch generator handed in by the caller, so a seed gives the same patches and a
restored generator state continues them exactly.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

KERNELS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
# BT.601 luma weights, as OpenCV's and torchvision's rgb_to_grayscale use for gray noise.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class RealWorldSettings:
    """Real-ESRGAN x4plus's degradation settings; `2` marks the second round."""

    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # in the order of KERNELS
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)  # sigma on the 0..255 scale
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)
    second_blur_prob: float = 0.8
    sinc_prob2: float = 0.1
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    betag_range2: tuple[float, float] = (0.5, 4.0)
    betap_range2: tuple[float, float] = (1.0, 2.0)
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple[float, float] = (30.0, 95.0)
    final_sinc_prob: float = 0.8
    usm_target: bool = False  # Real-ESRGAN sharpens the HR target with unsharp masking (radius 50, weight 0.5)
    # Not Real-ESRGAN's: this share of crops takes the direct path instead, MATLAB-bicubic down, then
    # (each with its probability) Gaussian blur, colour Gaussian noise and JPEG at the low resolution,
    # the order `upscale eval --degrade` uses, so light damage and clean inputs are seen as they come.
    direct_prob: float = 0.0
    direct_blur_prob: float = 0.2
    direct_blur_sigma: tuple[float, float] = (0.3, 1.5)
    direct_noise_prob: float = 0.5
    direct_noise_range: tuple[float, float] = (1.0, 10.0)
    direct_jpeg_prob: float = 0.7
    direct_jpeg_range: tuple[float, float] = (30.0, 95.0)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> RealWorldSettings:
        """Settings from --degradation-param KEY=VALUE pairs; unknown keys and bad values are named."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(f"--degradation-param {unknown[0]}: unknown (known: {', '.join(sorted(known))})")
        defaults = cls()
        values: dict[str, Any] = {}
        for key, value in params.items():
            default = getattr(defaults, key)
            if isinstance(default, tuple):
                if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
                    raise ValueError(f"--degradation-param {key}: a JSON list of numbers, e.g. {list(default)}")
                values[key] = tuple(type(default[0])(v) for v in value)
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"--degradation-param {key}: true or false")  # noqa: TRY004 (a usage line)
                values[key] = value
            else:
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise ValueError(f"--degradation-param {key}: a number")  # noqa: TRY004 (a usage line)
                values[key] = float(value)
        settings = cls(**{**{f: getattr(defaults, f) for f in known}, **values})
        settings.check()
        return settings

    def check(self) -> None:
        for name in ("kernel_prob", "resize_prob", "resize_prob2"):
            probs = getattr(self, name)
            expected = len(KERNELS) if name == "kernel_prob" else 3
            if len(probs) != expected or min(probs) < 0 or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
                raise ValueError(f"--degradation-param {name}: {expected} probabilities summing to 1")
        if not self.kernel_sizes or any(k < 3 or k % 2 == 0 or k > 21 for k in self.kernel_sizes):
            raise ValueError("--degradation-param kernel_sizes: odd sizes from 3 to 21")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_prob") or f.name[:-1].endswith("_prob"):
                if isinstance(value, float) and not 0 <= value <= 1:
                    raise ValueError(f"--degradation-param {f.name}: a probability in [0, 1]")
            elif (isinstance(value, tuple) and len(value) == 2 and f.name != "kernel_sizes"
                  and (value[0] > value[1] or value[0] < 0)):
                raise ValueError(f"--degradation-param {f.name}: [low, high] with 0 <= low <= high")


class Draw:
    """Random numbers from one torch generator, so the degradation RNG is the sampler's RNG."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator, dtype=torch.float64))

    def chance(self, probability: float) -> bool:
        return float(torch.rand((), generator=self.generator, dtype=torch.float64)) < probability

    def choice(self, probabilities: tuple[float, ...]) -> int:
        weights = torch.tensor(probabilities, dtype=torch.float64)
        return int(torch.multinomial(weights, 1, generator=self.generator))

    def pick(self, options: tuple[Any, ...]) -> Any:
        return options[int(torch.randint(len(options), (), generator=self.generator))]

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator)

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        return torch.poisson(rates, generator=self.generator)


# -- kernels ---------------------------------------------------------------------------------
def _grid(size: int) -> torch.Tensor:
    """(size, size, 2) pixel offsets from the kernel's centre."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def _inverse_covariance(sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """Sigma^-1 of a Gaussian with axes sigma_x, sigma_y rotated by theta."""
    rotation = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    covariance = rotation @ torch.diag(torch.tensor([sigma_x**2, sigma_y**2], dtype=torch.float64)) @ rotation.T
    return torch.linalg.inv(covariance)


def _mahalanobis(size: int, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    grid = _grid(size)
    return torch.einsum("hwi,ij,hwj->hw", grid, _inverse_covariance(sigma_x, sigma_y, theta), grid)


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """exp(-x^T Sigma^-1 x / 2), normalised to sum 1."""
    kernel = torch.exp(-0.5 * _mahalanobis(size, sigma_x, sigma_y, theta))
    return kernel / kernel.sum()


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> torch.Tensor:
    """exp(-(x^T Sigma^-1 x)^beta / 2): flatter (beta > 1) or peakier (beta < 1) than a Gaussian."""
    kernel = torch.exp(-0.5 * _mahalanobis(size, sigma_x, sigma_y, theta) ** beta)
    return kernel / kernel.sum()


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> torch.Tensor:
    """1 / (1 + (x^T Sigma^-1 x)^beta): a flat top with heavy tails."""
    kernel = 1.0 / (1.0 + _mahalanobis(size, sigma_x, sigma_y, theta) ** beta)
    return kernel / kernel.sum()


def sinc_kernel(size: int, cutoff: float) -> torch.Tensor:
    """The ideal circular low-pass of cutoff `cutoff` (radians per pixel): cutoff J1(cutoff r) / (2 pi r).

    Its ringing is the overshoot that sharpened and resized images show around edges.
    """
    radius = _grid(size).norm(dim=-1)
    safe = torch.where(radius == 0, torch.ones_like(radius), radius)
    kernel = cutoff * torch.special.bessel_j1(cutoff * safe) / (2 * math.pi * safe)
    kernel = torch.where(radius == 0, torch.full_like(radius, cutoff**2 / (4 * math.pi)), kernel)
    return kernel / kernel.sum()


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    margin = (size - kernel.shape[0]) // 2
    return F.pad(kernel, (margin, margin, margin, margin))


def _beta(draw: Draw, low_high: tuple[float, float]) -> float:
    """Half the draws below 1, half above, as Real-ESRGAN's random_mixed_kernels."""
    return draw.uniform(low_high[0], 1.0) if draw.chance(0.5) else draw.uniform(1.0, low_high[1])


def random_blur_kernel(draw: Draw, s: RealWorldSettings, second: bool) -> torch.Tensor:
    """One round's kernel: a sinc with sinc_prob, else one of the six Gaussian-family shapes."""
    size = draw.pick(s.kernel_sizes)
    if draw.chance(s.sinc_prob2 if second else s.sinc_prob):
        cutoff = draw.uniform(math.pi / 3, math.pi) if size < 13 else draw.uniform(math.pi / 5, math.pi)
        return sinc_kernel(size, cutoff)
    sigma_range = s.blur_sigma2 if second else s.blur_sigma
    shape = KERNELS[draw.choice(s.kernel_prob)]
    sigma_x = draw.uniform(*sigma_range)
    if shape.endswith("_iso") or shape == "iso":
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y, theta = draw.uniform(*sigma_range), draw.uniform(-math.pi, math.pi)
    if shape.startswith("generalized"):
        return generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, _beta(draw, s.betag_range2 if second else s.betag_range))
    if shape.startswith("plateau"):
        return plateau_kernel(size, sigma_x, sigma_y, theta, _beta(draw, s.betap_range2 if second else s.betap_range))
    return gaussian_kernel(size, sigma_x, sigma_y, theta)


# -- the steps ---------------------------------------------------------------------------------
def filter2d(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """(3, H, W) float image convolved with a (k, k) kernel, reflected at the borders.

    A crop resized below the kernel's half-width cannot be reflected: its edge pixels repeat.
    """
    k = kernel.shape[-1]
    mode = "reflect" if k // 2 < min(image.shape[1:]) else "replicate"
    padded = F.pad(image[None], (k // 2, k // 2, k // 2, k // 2), mode=mode)
    weight = kernel.to(image.dtype)[None, None].expand(image.shape[0], 1, k, k)
    return F.conv2d(padded, weight, groups=image.shape[0])[0]


def resize(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    kwargs: dict[str, Any] = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(image[None], size=size, mode=mode, **kwargs)[0]


def gaussian_noise(draw: Draw, image: torch.Tensor, sigma: float, gray: bool) -> torch.Tensor:
    shape = (1, *image.shape[1:]) if gray else tuple(image.shape)
    noise = draw.normal(shape).to(image.dtype) * (sigma / 255)
    return image + noise


def poisson_noise(draw: Draw, image: torch.Tensor, scale: float, gray: bool) -> torch.Tensor:
    """Shot noise: the image's levels taken as photon counts, as Real-ESRGAN's generate_poisson_noise."""
    clipped = image.clamp(0, 1)
    if gray:
        weights = torch.tensor(GRAY_WEIGHTS, dtype=image.dtype)[:, None, None]
        clipped = (clipped * weights).sum(0, keepdim=True)
    levels = len(torch.unique((clipped * 255).round()))
    levels = 2 ** math.ceil(math.log2(max(levels, 1)))
    noisy = draw.poisson(clipped * levels) / levels
    return image + (noisy - clipped) * scale


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """(3 or 1, H, W) through libjpeg at `quality` (Pillow's defaults: 4:2:0 chroma), back to float."""
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
    decoded = decoded[..., None] if decoded.ndim == 2 else decoded
    return torch.from_numpy(decoded.copy()).permute(2, 0, 1).float() / 255


def unsharp_mask(image: torch.Tensor, weight: float = 0.5, radius: int = 50, threshold: int = 10) -> torch.Tensor:
    """Real-ESRGAN's USM target: img + weight * (img - blur) where edges are, softly masked.

    OpenCV's sigma for a (radius+1)-wide Gaussian with sigma 0: 0.3 * ((k - 1) / 2 - 1) + 0.8.
    """
    size = radius + 1 if radius % 2 == 0 else radius
    sigma = 0.3 * ((size - 1) / 2 - 1) + 0.8
    kernel = gaussian_kernel(size, sigma, sigma, 0.0)
    blurred = filter2d(image, kernel)
    residual = image - blurred
    mask = ((residual.abs() * 255) > threshold).to(image.dtype)
    soft = filter2d(mask, kernel)
    sharp = (image + weight * residual).clamp(0, 1)
    return soft * sharp + (1 - soft) * image


@dataclass(frozen=True)
class LowResDamage:
    """What the direct path and `upscale eval --degrade` do to a bicubic LR, in this order; 0 skips a step."""

    blur_sigma: float = 0.0
    noise_sigma: float = 0.0  # on the 0..255 scale, independent per colour channel
    jpeg_quality: int = 0

    def apply(self, lr: torch.Tensor, draw: Draw) -> torch.Tensor:
        """(3, h, w) float LR -> the damaged LR, quantised to 8 bits as a saved file would be."""
        out = lr
        if self.blur_sigma > 0:
            size = 2 * math.ceil(3 * self.blur_sigma) + 1
            out = filter2d(out, gaussian_kernel(size, self.blur_sigma, self.blur_sigma, 0.0))
        if self.noise_sigma > 0:
            out = gaussian_noise(draw, out, self.noise_sigma, gray=False)
        out = (out.clamp(0, 1) * 255).round() / 255
        return jpeg(out, self.jpeg_quality) if self.jpeg_quality > 0 else out


    def apply_uint8(self, lr: np.ndarray, seed: int) -> np.ndarray:
        """The same on uint8 HxW or HxWx3 pixels, its noise drawn from `seed`."""
        planes = torch.from_numpy(lr.astype(np.float32) / 255)
        planes = planes[None] if lr.ndim == 2 else planes.permute(2, 0, 1)
        out = self.apply(planes, Draw(torch.Generator().manual_seed(seed)))
        out = (out * 255).round().clamp(0, 255).to(torch.uint8)
        return (out[0] if lr.ndim == 2 else out.permute(1, 2, 0)).numpy()

    @classmethod
    def parse(cls, spec: str) -> LowResDamage:
        """`jpeg:50`, `noise:5`, `blur:1.2` or several joined by `+` (`jpeg:75+noise:3`); `clean` is none.

        The steps always run blur, noise, JPEG, whatever the order written: sensor noise comes
        before the encoder in every real picture.
        """
        if spec == "clean":
            return cls()
        values: dict[str, float] = {}
        for part in spec.split("+"):
            name, _, number = part.partition(":")
            key = {"blur": "blur_sigma", "noise": "noise_sigma", "jpeg": "jpeg_quality"}.get(name)
            try:
                value = float(number)
            except ValueError:
                value = -1.0
            if key is None or key in values or value <= 0 or (key == "jpeg_quality" and not (value.is_integer() and value <= 100)):
                raise ValueError(f"--degrade {spec!r}: steps are blur:SIGMA, noise:SIGMA (0-255 scale) and "
                                 "jpeg:QUALITY (1-100), each once, joined by +; or clean")
            values[key] = value
        return cls(values.get("blur_sigma", 0.0), values.get("noise_sigma", 0.0), int(values.get("jpeg_quality", 0)))

    def spec(self) -> str:
        steps = [f"blur:{self.blur_sigma:g}"] if self.blur_sigma else []
        steps += [f"noise:{self.noise_sigma:g}"] if self.noise_sigma else []
        steps += [f"jpeg:{self.jpeg_quality}"] if self.jpeg_quality else []
        return "+".join(steps) or "clean"


def random_damage(draw: Draw, s: RealWorldSettings) -> LowResDamage:
    """One draw of the direct path's steps."""
    blur = draw.uniform(*s.direct_blur_sigma) if draw.chance(s.direct_blur_prob) else 0.0
    noise = draw.uniform(*s.direct_noise_range) if draw.chance(s.direct_noise_prob) else 0.0
    quality = round(draw.uniform(*s.direct_jpeg_range)) if draw.chance(s.direct_jpeg_prob) else 0
    return LowResDamage(blur, noise, quality)


def _noise(draw: Draw, image: torch.Tensor, gaussian_prob: float, sigma: tuple[float, float],
           poisson: tuple[float, float], gray_prob: float) -> torch.Tensor:
    if draw.chance(gaussian_prob):
        return gaussian_noise(draw, image, draw.uniform(*sigma), draw.chance(gray_prob))
    return poisson_noise(draw, image, draw.uniform(*poisson), draw.chance(gray_prob))


def _random_resize(draw: Draw, image: torch.Tensor, probs: tuple[float, float, float],
                   span: tuple[float, float], size_of: tuple[int, int], base: float) -> torch.Tensor:
    """Up, down or keep (by `probs`), relative to `base` times `size_of`, in a random mode."""
    kind = draw.choice(probs)
    factor = draw.uniform(1.0, span[1]) if kind == 0 else draw.uniform(span[0], 1.0) if kind == 1 else 1.0
    mode = draw.pick(RESIZE_MODES)
    height, width = (max(1, int(n * base * factor)) for n in size_of)
    return resize(image, (height, width), mode)


def degrade_realworld(hr: torch.Tensor, scale: int, s: RealWorldSettings, draw: Draw) -> torch.Tensor:
    """(3, H, W) float HR crop -> (3, H/scale, W/scale) LR crop, quantised to 8 bits, Real-ESRGAN's order."""
    size = (hr.shape[1], hr.shape[2])
    out = filter2d(hr, random_blur_kernel(draw, s, second=False))
    out = _random_resize(draw, out, s.resize_prob, s.resize_range, size, 1.0)
    out = _noise(draw, out, s.gaussian_noise_prob, s.noise_range, s.poisson_scale_range, s.gray_noise_prob).clamp(0, 1)
    out = jpeg(out, round(draw.uniform(*s.jpeg_range)))
    if draw.chance(s.second_blur_prob):
        out = filter2d(out, random_blur_kernel(draw, s, second=True))
    out = _random_resize(draw, out, s.resize_prob2, s.resize_range2, size, 1.0 / scale)
    out = _noise(draw, out, s.gaussian_noise_prob2, s.noise_range2, s.poisson_scale_range2, s.gray_noise_prob2).clamp(0, 1)
    final_size = (size[0] // scale, size[1] // scale)
    final_sinc = None
    if draw.chance(s.final_sinc_prob):
        kernel_size = draw.pick(s.kernel_sizes)
        final_sinc = sinc_kernel(kernel_size, draw.uniform(math.pi / 3, math.pi))
    quality = round(draw.uniform(*s.jpeg_range2))
    mode = draw.pick(RESIZE_MODES)
    if draw.chance(0.5):  # resize and sinc, then JPEG
        out = resize(out, final_size, mode)
        out = filter2d(out, final_sinc) if final_sinc is not None else out
        out = jpeg(out, quality)
    else:  # JPEG, then resize and sinc
        out = jpeg(out, quality)
        out = resize(out, final_size, mode)
        out = filter2d(out, final_sinc) if final_sinc is not None else out
    return (out.clamp(0, 1) * 255).round() / 255
