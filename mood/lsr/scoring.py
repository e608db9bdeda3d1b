"""Codes and restorations -> LSR's raw anomaly scores (pure functions; no models, no files).

The monotone maps that bring raw scores into [0, 1), and their fitting on normal holdout volumes
(calibration), are shared by both methods: :mod:`mood.common.maps`. Shapes: x (S, H, W) normalised
slices; restorations (S, n, H, W); nll (S, L, L).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: The original's softmax factor on inverse restoration distance ("k = 3").
RESTORATION_SHARPNESS = 3.0


def sample_raw_score(nll: torch.Tensor, threshold: float) -> float:
    """Sum of the per-code NLL values above ``threshold`` over all scored slices."""
    return float(torch.where(nll > threshold, nll, torch.zeros_like(nll)).double().sum())


def restoration_distance(x: torch.Tensor, restorations: torch.Tensor,
                         sharpness: float = RESTORATION_SHARPNESS) -> torch.Tensor:
    """Weighted L1 distance to the restorations, closer restorations weighing more.

    ``w_j = softmax_j(sharpness / mean|x - r_j|)`` per slice; returns (S, H, W).
    """
    diff = (x.unsqueeze(1) - restorations).abs()  # (S, n, H, W)
    mean = diff.mean(dim=(2, 3)).clamp_min(1e-6)  # (S, n)
    weights = torch.softmax(sharpness / mean, dim=1)
    return (weights[:, :, None, None] * diff).sum(1)


def smooth(scores: torch.Tensor) -> torch.Tensor:
    """Min-pool 3x3x3, then mean-pool 3x7x7 over (S, H, W); borders are not attenuated.

    With fewer than three slices (thin volumes, ``--slices 1`` or ``2``) the pools are 1x3x3 and 1x7x7.
    """
    kz = 3 if scores.shape[0] >= 3 else 1  # fewer than three slices: no pooling across them
    v = scores[None, None]  # (1, 1, S, H, W)
    v = -F.max_pool3d(-v, (kz, 3, 3), stride=1, padding=(kz // 2, 1, 1))
    v = F.avg_pool3d(v, (kz, 7, 7), stride=1, padding=(kz // 2, 3, 3), count_include_pad=False)
    return v[0, 0]
