"""The localiser's network: a small 2-D U-Net from a normalised slice to one logit per pixel.

In: slices ``x`` (B, S, S) (the networks' intensity scale, :func:`mood.common.slicing.normalise`)
and their relative positions ``coord`` (B, 1). Out: logits (B, S, S); ``sigmoid(logit)`` is the
probability that the pixel was changed by an anomaly. ``S`` must be a multiple of
``2**config.levels``.

The position enters as a constant second input plane, so the network may learn that what is normal
differs between the top of the head and its base. Down: two 3x3 convolutions (batch norm, ReLU) per
level, then 2x2 max pooling. Up: bilinear up-sampling (no transposed convolutions: no checkerboard
pattern in the maps), concatenation with the skip, two convolutions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LocaliserConfig

#: The output's initial bias: log-odds of about 1 %.
INITIAL_LOGIT = -4.6


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """``channels[0]`` at full resolution down to ``channels[-1]`` at ``S / 2**levels``."""

    def __init__(self, config: LocaliserConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        self.down = nn.ModuleList([_block(2, ch[0])] + [_block(a, b) for a, b in zip(ch[:-1], ch[1:])])
        self.up = nn.ModuleList([_block(b + a, a) for a, b in zip(ch[:-1], ch[1:])])
        self.head = nn.Conv2d(ch[0], 1, 1)
        # anomalies cover about 1 % of the training pixels: start there, not at p = 0.5, so that
        # the first steps learn where anomalies are instead of that most pixels are normal
        nn.init.constant_(self.head.bias, INITIAL_LOGIT)

    def forward(self, x: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2**self.config.levels or x.shape[-2] % 2**self.config.levels:
            raise ValueError(f"slices of {tuple(x.shape[-2:])} pixels: both sides must be multiples of "
                             f"{2**self.config.levels}")
        h = torch.stack([x, coord.view(-1, 1, 1).expand_as(x)], 1)  # (B, 2, S, S)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        for block, skip in zip(reversed(self.up), reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([skip, h], 1))
        return self.head(h).squeeze(1)


__all__ = ["UNet"]
