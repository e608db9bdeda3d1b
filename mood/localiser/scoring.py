"""Slices -> the localiser's probabilities -> a volume's sample statistic (pure functions of a model).

Shapes: x (S, size, size) normalised slices, coord (S, 1); probabilities (S, size, size) in [0, 1].
"""
from __future__ import annotations

import torch

from .unet import UNet

#: The sample statistic averages this share of a volume's highest pixel probabilities: about the
#: pixels of one small anomaly (a sphere of 5 voxels' radius in a 256^3 brain) among its 256 slices.
TOP_SHARE = 1e-4


@torch.no_grad()
def probabilities(model: UNet, x: torch.Tensor, coord: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Per-pixel probability that an anomaly changed the pixel, ``chunk`` slices at a time."""
    model.eval()
    return torch.cat([torch.sigmoid(model(x[i:i + chunk], coord[i:i + chunk]).float())
                      for i in range(0, x.shape[0], chunk)])


def sample_statistic(probs: torch.Tensor, share: float = TOP_SHARE) -> float:
    """Mean of the highest ``share`` of the probabilities (at least one pixel): high when some
    region is confidently anomalous, whatever the rest of the volume does."""
    flat = probs.flatten()
    k = max(1, int(round(share * flat.numel())))
    return float(flat.topk(k).values.double().mean())


__all__ = ["TOP_SHARE", "probabilities", "sample_statistic"]
