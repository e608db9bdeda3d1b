"""Volume -> slices and slice scores -> volume: all geometry in one place, each step beside its inverse.

The slice axis is the third array axis (as the challenge stores its volumes). ``n`` slices are
chosen evenly over the whole extent by their centres: slice ``i`` is the voxel plane nearest to
``(i + 0.5) * depth / n``, so nothing is shifted by half a block when scores are mapped back, and
its relative position (the conditioning input of both networks) is ``(index + 0.5) / depth - 0.5``
at training and inference alike. In-plane, slices are resampled to ``size`` x ``size`` with
anti-aliasing; the inverse is a centre-aligned bilinear up-sampling followed by linear
interpolation between the true slice positions.

Axis vocabulary: a volume is (a0, a1, a2); slices are (n, size, size) with rows = a0, cols = a1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import RegionConfig


@dataclass(frozen=True)
class SliceGrid:
    """Which planes of a volume are scored, and how to put slice results back."""

    shape: tuple[int, int, int]  # (a0, a1, a2) of the input volume
    indices: tuple[int, ...]  # slice indices along a2, increasing

    @property
    def positions(self) -> torch.Tensor:
        """Relative slice positions in (-0.5, 0.5), shape (n, 1): the networks' conditioning."""
        return relative_position(torch.tensor(self.indices, dtype=torch.float32), self.shape[2]).view(-1, 1)


def relative_position(index: torch.Tensor, depth: int) -> torch.Tensor:
    """Centre of plane ``index`` as a fraction of the extent, minus 0.5."""
    return (index + 0.5) / depth - 0.5


def slice_grid(shape: tuple[int, ...], n_slices: int) -> SliceGrid:
    """``n_slices`` planes evenly spread over ``shape[2]`` by their centres (fewer if the volume is thinner)."""
    if len(shape) != 3:
        raise ValueError(f"expected a 3-D shape, got {shape}")
    if n_slices < 1:
        raise ValueError(f"n_slices must be positive, got {n_slices}")
    depth = int(shape[2])
    n = min(n_slices, depth)
    indices = tuple(int(np.floor((i + 0.5) * depth / n)) for i in range(n))
    return SliceGrid(shape=tuple(int(s) for s in shape), indices=indices)


def extract_slices(volume: torch.Tensor, grid: SliceGrid, size: int, chunk: int = 32) -> torch.Tensor:
    """Volume (a0, a1, a2) -> slices (n, size, size), anti-aliased when shrinking."""
    shrinking = volume.shape[0] > size or volume.shape[1] > size
    indices = list(grid.indices)
    # a chunk of planes at a time: gathering all of a 512^3 volume's at once would copy it whole
    return torch.cat([
        F.interpolate(volume[:, :, indices[i:i + chunk]].permute(2, 0, 1).unsqueeze(1).float(),  # (c, 1, a0, a1)
                      size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking).squeeze(1)
        for i in range(0, len(indices), chunk)])


def normalise(slices: torch.Tensor, volume: torch.Tensor, config: RegionConfig) -> torch.Tensor:
    """Map [0, 1] slices (n, S, S) to the networks' intensity scale.

    "zscore" (brain): foreground (values above the threshold) standardised with the mean and
    standard deviation of the whole volume's foreground; background exactly ``config.background``.
    "affine" (abdomen): 2x - 1 (air, 0, becomes ``config.background`` = -1).
    """
    if config.normalisation == "affine":
        return slices * 2 - 1
    if config.normalisation != "zscore":
        raise ValueError(f"unknown normalisation {config.normalisation!r}")
    mu, sigma = foreground_stats(volume, config.foreground_threshold)
    fg = slices > config.foreground_threshold
    return torch.where(fg, (slices - mu) / sigma, torch.full_like(slices, config.background))


#: After "affine", air lies slightly above the background (interpolation, noise): 1 % of [0, 1].
AIR_MARGIN = 0.02


def body_mask(x: torch.Tensor, config: RegionConfig) -> torch.Tensor:
    """Voxels of normalised slices ``x`` (n, S, S) inside the body: bool (n, S, S).

    "zscore" sets everything outside the foreground to exactly ``config.background``; after
    "affine", air is within :data:`AIR_MARGIN` of it.
    """
    if config.normalisation == "zscore":
        return x != config.background
    return x > config.background + AIR_MARGIN


def cell_share(mask: torch.Tensor, cells: int) -> torch.Tensor:
    """Share of each latent cell (the patch one code stands for) that ``mask`` covers:
    (n, S, S) -> (n, L, L) with L = ``cells``."""
    return F.adaptive_avg_pool2d(mask.float().unsqueeze(1), cells).squeeze(1)


def foreground_stats(volume: torch.Tensor, threshold: float) -> tuple[float, float]:
    """Mean and standard deviation (float64 accumulation) of voxels above ``threshold``."""
    values = volume[volume > threshold].double()
    if values.numel() < 2:
        return 0.0, 1.0
    return float(values.mean()), max(float(values.std()), 1e-3)


def slices_to_volume(scores: torch.Tensor, grid: SliceGrid, chunk: int = 32) -> np.ndarray:
    """Slice scores (n, S, S) -> float32 volume (a0, a1, a2), Fortran-ordered as NIfTI stores it.

    In-plane: bilinear, centre-aligned up-sampling to (a0, a1). Along a2: linear interpolation
    between the true plane indices, constant beyond the first and last scored plane.
    """
    a0, a1, depth = grid.shape
    idx = torch.tensor(grid.indices, dtype=torch.float32, device=scores.device)
    out = np.empty((a0, a1, depth), dtype=np.float32, order="F")
    for z0 in range(0, depth, chunk):
        z = torch.arange(z0, min(z0 + chunk, depth), dtype=torch.float32, device=scores.device)
        hi = torch.searchsorted(idx, z, right=True).clamp(1, max(len(idx) - 1, 1))
        lo = hi - 1
        if len(idx) == 1:
            lo = hi = torch.zeros_like(hi)
            w = torch.zeros_like(z)
        else:
            w = ((z - idx[lo]) / (idx[hi] - idx[lo])).clamp(0, 1)
        # only this chunk's planes at full size: all of a 512^3 volume's would double the peak
        need = torch.unique(torch.cat([lo, hi]))
        planes = F.interpolate(scores[need].float().unsqueeze(1), size=(a0, a1), mode="bilinear",
                               align_corners=False).squeeze(1)  # (len(need), a0, a1)
        at_lo, at_hi = torch.searchsorted(need, lo), torch.searchsorted(need, hi)
        block = planes[at_lo] * (1 - w).view(-1, 1, 1) + planes[at_hi] * w.view(-1, 1, 1)  # (c, a0, a1)
        out[:, :, z0 : z0 + len(z)] = block.permute(1, 2, 0).cpu().numpy()
    return out
