"""Raw scores -> [0, 1): the monotone score maps both methods share, and their fitting on normal
holdout volumes (calibration). Pure functions; no models, no files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


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
