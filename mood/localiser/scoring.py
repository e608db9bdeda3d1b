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


def smooth_across_slices(probs: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing (standard deviation ``sigma`` planes, truncated at 4) of (S, H, W) along S.

    The network sees one slice at a time, so its false alarms are one slice's accidents while an
    anomaly spans neighbouring slices: averaging over them keeps the one and thins the other.
    Edge planes are repeated beyond the ends. ``sigma`` 0 returns ``probs`` itself."""
    if sigma <= 0 or probs.shape[0] < 2:
        return probs
    radius = int(4 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    n = probs.shape[0]
    offsets = torch.arange(-radius, radius + 1, device=probs.device)
    index = (torch.arange(n, device=probs.device)[:, None] + offsets[None]).clamp(0, n - 1)  # (S, K)
    # one weighted sum per offset: the output and one gathered stack, whatever the kernel's length
    out = torch.zeros_like(probs)
    for k in range(kernel.numel()):
        out.add_(probs[index[:, k]], alpha=float(kernel[k]))
    return out


def sample_statistic(probs: torch.Tensor, share: float = TOP_SHARE) -> float:
    """Mean of the highest ``share`` of the probabilities (at least one pixel): high when some
    region is confidently anomalous, whatever the rest of the volume does."""
    flat = probs.flatten()
    k = max(1, int(round(share * flat.numel())))
    return float(flat.topk(k).values.double().mean())


__all__ = ["TOP_SHARE", "probabilities", "sample_statistic", "smooth_across_slices"]
