"""Codes and restorations -> anomaly scores -> [0, 1) (pure functions; no models, no files).

Raw scores, the monotone maps that bring them into [0, 1), and the fitting of those maps on normal
holdout volumes (calibration). Shapes: x (S, H, W) normalised slices; restorations (S, n, H, W);
nll (S, L, L).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
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


# -- score maps ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreMap:
    """Monotone map of raw scores into [0, 1): ``x / (x + scale)``, 0.5 at ``x = scale``.

    Strictly increasing, so order (and thus average precision) is preserved; it never reaches 1,
    and ``scale`` is fitted so that normal tissue stays well below 0.5, where float16 (the
    challenge's read type) still resolves about 2**-12.
    """

    scale: float = 1.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp_min(0)
        return x / (x + self.scale)


#: The reconstruction baseline is not calibrated: any strictly increasing map into [0, 1) leaves
#: its AP unchanged.
BASELINE_MAP = ScoreMap(1.0)


def fit_sample_map(raw: Sequence[float], margin: float) -> ScoreMap:
    """``scale = margin * max(raw)``: normal holdout volumes map to at most ``1 / (1 + margin)``."""
    scale = margin * max(raw)
    return ScoreMap(float(scale) if scale > 0 else 1.0)


def fit_pixel_map(values: np.ndarray, percentile: float) -> ScoreMap:
    """``scale`` = the ``percentile`` of raw voxel scores inside the body of normal holdout
    volumes: all but ``100 - percentile`` % of normal tissue maps below 0.5."""
    scale = float(np.percentile(values, percentile)) if values.size else 1.0
    return ScoreMap(scale if scale > 0 else 1.0)
