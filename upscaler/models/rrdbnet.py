"""RRDBNet, the ESRGAN / Real-ESRGAN generator (Wang et al. 2018; 2021).

Written from the structure of BasicSR's `rrdbnet_arch.py`: residual-in-residual dense blocks
(residuals scaled by 0.2), nearest x2 upsampling each followed by a conv and LeakyReLU(0.2).
Real-ESRGAN's x2 and x1 models pixel-unshuffle the input by 2 or 4 first, so their input
size must be a multiple of that factor. Three key layouts are read: BasicSR's (`conv_first`,
`body.N.rdbK.convJ`, `conv_up1`...), the original ESRGAN repository's flattened sequential
(`model.0`, `model.1.sub.N.RDBK.convJ.0`, upconvs at `model.3`, `model.6`...) and the
intermediate one (`RRDB_trunk`, `trunk_conv`, `upconv1`, `HRconv`) of BSRGAN/RealSR.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from upscaler.models.layouts import count_from_zero, indices, renamed, shape
from upscaler.models.registry import Detection, register


class _DenseBlock(nn.Module):
    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, growth, 3, padding=1)
        self.conv2 = nn.Conv2d(channels + growth, growth, 3, padding=1)
        self.conv3 = nn.Conv2d(channels + 2 * growth, growth, 3, padding=1)
        self.conv4 = nn.Conv2d(channels + 3 * growth, growth, 3, padding=1)
        self.conv5 = nn.Conv2d(channels + 4 * growth, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), 0.2))
        return x + 0.2 * self.conv5(torch.cat(features, 1))


class _RRDB(nn.Module):
    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (_DenseBlock(channels, growth) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


def _detect(state: Mapping[str, torch.Tensor]) -> Detection | None:
    if "model.0.weight" in state and "model.1.sub.0.RDB1.conv1.0.weight" in state:
        state = _from_original(state)
    elif "RRDB_trunk.0.RDB1.conv1.weight" in state:
        state = renamed(state, [
            (r"RRDB_trunk\.(\d+)\.RDB(\d)\.(conv\d)\.(weight|bias)", r"body.\1.rdb\2.\3.\4"),
            (r"trunk_conv\.(weight|bias)", r"conv_body.\1"), (r"upconv(\d)\.(weight|bias)", r"conv_up\1.\2"),
            (r"HRconv\.(weight|bias)", r"conv_hr.\1"),
        ])
    if not {"conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight", "conv_hr.weight", "conv_last.weight"} <= set(state):
        return None
    blocks = count_from_zero(state, r"body\.(\d+)\.rdb1\.conv1\.weight")
    ups = indices(state, r"conv_up(\d+)\.weight")
    channels, first_in = shape(state, "conv_first.weight")[:2]
    growth = shape(state, "body.0.rdb1.conv1.weight")[0]
    unshuffle = math.isqrt(first_in // 3)
    if blocks < 0 or ups != list(range(1, len(ups) + 1)) or 3 * unshuffle**2 != first_in:
        return None
    upsamples = len(ups)
    scale = 2**upsamples // unshuffle
    if unshuffle not in (1, 2, 4) or scale * unshuffle != 2**upsamples or shape(state, "conv_last.weight")[0] != 3:
        return None
    params = {"scale": scale, "channels": channels, "blocks": blocks, "growth": growth, "upsamples": upsamples}
    return Detection(params, dict(state))


def _from_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ESRGAN's flattened sequential: 0 first conv, 1 shortcut(trunk + conv), then per x2 step
    [upsample, conv, act] at 2+3i, then HR conv and last conv two apart."""
    blocks = len(indices(state, r"model\.1\.sub\.(\d+)\.RDB1\.conv1\.0\.weight"))
    convs = indices(state, r"model\.(\d+)\.weight")
    tail = [i for i in convs if i >= 2]
    ups, (hr, last) = tail[:-2], (tail[-2:] if len(tail) >= 2 else (-1, -1))
    rules = [
        (r"model\.0\.(weight|bias)", r"conv_first.\1"),
        (r"model\.1\.sub\.(\d+)\.RDB(\d)\.(conv\d)\.0\.(weight|bias)", r"body.\1.rdb\2.\3.\4"),
        (rf"model\.1\.sub\.{blocks}\.(weight|bias)", r"conv_body.\1"),
        (rf"model\.{hr}\.(weight|bias)", r"conv_hr.\1"), (rf"model\.{last}\.(weight|bias)", r"conv_last.\1"),
    ]
    rules += [(rf"model\.{index}\.(weight|bias)", rf"conv_up{n}.\1") for n, index in enumerate(ups, 1)]
    return renamed(state, rules)


def _unshuffle(params: dict[str, Any]) -> int:
    return int(2 ** params["upsamples"] // params["scale"])


@register(
    "rrdbnet", "ESRGAN / Real-ESRGAN RRDBNet: residual-in-residual dense blocks, nearest upsampling",
    detect=_detect, size_multiple=_unshuffle,
)
class RRDBNet(nn.Module):
    def __init__(self, scale: int = 4, channels: int = 64, blocks: int = 23, growth: int = 32, upsamples: int = 2) -> None:
        super().__init__()
        unshuffle = 2**upsamples // scale
        if unshuffle not in (1, 2, 4) or unshuffle * scale != 2**upsamples:
            raise ValueError(f"rrdbnet: scale {scale} cannot come from {upsamples} x2 upsampler(s)")
        self.scale, self.unshuffle = scale, unshuffle
        self.conv_first = nn.Conv2d(3 * unshuffle**2, channels, 3, padding=1)
        self.body = nn.Sequential(*[_RRDB(channels, growth) for _ in range(blocks)])
        self.conv_body = nn.Conv2d(channels, channels, 3, padding=1)
        for n in range(1, upsamples + 1):
            setattr(self, f"conv_up{n}", nn.Conv2d(channels, channels, 3, padding=1))
        self.upsamples = upsamples
        self.conv_hr = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_last = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % self.unshuffle or width % self.unshuffle:  # any size in; the descriptor names the cheap ones
            x = F.pad(x, (0, -width % self.unshuffle, 0, -height % self.unshuffle), mode="replicate")
            return self.forward(x)[..., : height * self.scale, : width * self.scale]
        features = self.conv_first(F.pixel_unshuffle(x, self.unshuffle) if self.unshuffle > 1 else x)
        features = features + self.conv_body(self.body(features))
        for n in range(1, self.upsamples + 1):
            upsampled = F.interpolate(features, scale_factor=2.0, mode="nearest")
            conv_up: nn.Module = getattr(self, f"conv_up{n}")
            features = F.leaky_relu(conv_up(upsampled), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(features), 0.2))
