"""Inference-time model preparation that changes no result: batch norm folded into convolutions."""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batch_norm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d in a Sequential into that conv.

    At inference a batch norm is an affine map per channel, so the conv's weights and bias can
    absorb it exactly; the network then runs one layer fewer per pair (SRResNet has 33 of them).
    Works in place on `module`, which must be a private copy in eval mode.
    """
    for child in module.modules():
        if not isinstance(child, nn.Sequential):
            continue
        for index in range(len(child) - 1):
            conv, norm = child[index], child[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                child[index] = fuse_conv_bn_eval(conv, norm)
                child[index + 1] = nn.Identity()
    return module
