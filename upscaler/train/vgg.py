"""VGG19 feature maps for the SRGAN content loss, in torchvision's state-dict layout.

The network is defined here (torchvision has no CPU build in this workplace) with the same
module indices, so the ImageNet weights torchvision downloads load directly:
`features.N.weight/bias`; the classifier is not needed and its keys are ignored.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

# torchvision's configuration "E": channels of each 3x3 convolution, "M" a 2x2 max-pooling.
VGG19_CONFIG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
# φi,j of Ledig et al.: the ReLU after the j-th convolution before the i-th max-pooling.
# `features[:N]` ends with that ReLU: conv2_2 is features.7 (ReLU 8), conv5_4 is features.34 (ReLU 35).
CONTENT_LAYERS = {"vgg22": 9, "vgg54": 36}
# Ledig et al. rescale the feature maps by 1/12.75 so the VGG loss is on the scale of the MSE loss.
FEATURE_SCALE = 1 / 12.75
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
HOW_TO_GET = (f"--vgg needs torchvision's VGG19 ImageNet weights: download vgg19-dcbb9e9d.pth from {VGG19_URL} "
              "(sha256 starts with dcbb9e9d), or a .safetensors of its state dict; nothing is downloaded at run time")
# torch.hub's convention: a file named NAME-<first hex digits of its sha256>.EXT
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")


def file_sha256(path: Path) -> str:
    """Read in chunks: the torchvision file is 548 MB."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def vgg19_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for entry in VGG19_CONFIG:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(entry, int)
            layers += [nn.Conv2d(channels, entry, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = entry
    return nn.Sequential(*layers)


class VGG19(nn.Module):
    """Only `features`, named as torchvision names it."""

    features: nn.Sequential

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg19_features()


def read_vgg19_state(path: Path) -> dict[str, torch.Tensor]:
    """The `features.*` tensors of a torchvision VGG19 file (.pth unpickled weights-only, or .safetensors)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; {HOW_TO_GET}")
    match = _HASH_IN_NAME.search(path.name)
    if match:
        digest = file_sha256(path)
        if not digest.startswith(match.group(1)):
            raise ValueError(f"{path}: sha256 {digest[:8]}... does not match the {match.group(1)} its name carries "
                             f"(damaged or a different file); {HOW_TO_GET}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # never runs a pickle's code
    except Exception as exc:  # noqa: BLE001 (safetensors and the weights-only unpickler raise many kinds)
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: not a readable weights file ({cause}); {HOW_TO_GET}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors; {HOW_TO_GET}")
    return {k: v for k, v in state.items() if k.startswith("features.")}


def load_vgg19(path: Path) -> VGG19:
    state = read_vgg19_state(path)
    with torch.device("meta"):  # shapes only: the file supplies every number
        vgg = VGG19()
    expected = vgg.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        problems = [f"{label} {keys[:3]}{'...' if len(keys) > 3 else ''}"
                    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ValueError(f"{path}: not VGG19 in torchvision's layout ({'; '.join(problems)}); {HOW_TO_GET}")
    vgg.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    return vgg


class ContentLoss(nn.Module):
    """MSE between rescaled VGG19 feature maps φ of the SR and HR images; frozen, eval mode, no gradients."""

    features: nn.Sequential
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, vgg: VGG19, layer: str) -> None:
        super().__init__()
        self.layer = layer
        self.features = nn.Sequential(*list(vgg.features)[: CONTENT_LAYERS[layer]])
        self.features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ContentLoss:
        """Stays in eval mode whatever its parent is switched to."""
        return super().train(False)

    def phi(self, images: torch.Tensor) -> torch.Tensor:
        """Feature maps of [0, 1] RGB images, normalised as the ImageNet weights expect, rescaled."""
        return self.features((images - self.mean) / self.std) * FEATURE_SCALE

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.phi(hr)
        return F.mse_loss(self.phi(sr).float(), target.float())
