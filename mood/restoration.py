"""Latent spatial restoration: resample unlikely codes from the prior, in raster order.

Sampling is a pure function of pre-drawn uniforms: the code drawn for restoration ``j`` of slice
``s`` at grid position ``p`` is the inverse CDF of ``softmax(logits)`` at ``u[s, j, p]``. So
:func:`restore` (fast) and :func:`restore_reference` (the original's raster loop, kept for tests)
return the same codes for the same inputs and uniforms; the tests check it.

Shapes: codes (S, L, L) int64; coord (S, 1); uniforms (S, n, L*L) float64; restored (S, n, L, L).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .networks import PixelSNAIL


def draw_uniforms(n_slices: int, n_restorations: int, n_positions: int, seed: int) -> torch.Tensor:
    """Uniforms in [0, 1) from a CPU generator, so the draw is identical on every device."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_slices, n_restorations, n_positions, generator=g, dtype=torch.float64)


def inverse_cdf_sample(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Codes (B,) drawn from softmax(logits (B, K)) at uniforms u (B,), computed in float64."""
    cdf = logits.double().softmax(-1).cumsum(-1)
    target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_max(logits.shape[1] - 1)


def position_nll(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """NLL (nats, float64) of ``codes`` (B,) under ``logits`` (B, K)."""
    return F.cross_entropy(logits.double(), codes, reduction="none")


def _step(logits: torch.Tensor, current: torch.Tensor, u: torch.Tensor, threshold: float) -> torch.Tensor:
    """One raster step for a batch of rows: the new code at this position."""
    resample = position_nll(logits, current) > threshold
    return torch.where(resample, inverse_cdf_sample(logits, u), current)


@torch.no_grad()
def restore_reference(prior: PixelSNAIL, codes: torch.Tensor, coord: torch.Tensor,
                      uniforms: torch.Tensor, threshold: float) -> torch.Tensor:
    """The original loop: one full prior pass over every restoration at every grid position."""
    s, h, w = codes.shape
    n = uniforms.shape[1]
    rows = codes.repeat_interleave(n, 0).clone()  # (S*n, L, L), row s*n + j = restoration j of slice s
    row_coord = coord.repeat_interleave(n, 0)
    u = uniforms.reshape(s * n, h * w)
    for p in range(h * w):
        r, c = divmod(p, w)
        logits = prior(rows, row_coord)[:, :, r, c]
        rows[:, r, c] = _step(logits, rows[:, r, c], u[:, p], threshold)
    return rows.view(s, n, h, w)


@torch.no_grad()
def restore(prior: PixelSNAIL, codes: torch.Tensor, coord: torch.Tensor, uniforms: torch.Tensor,
            threshold: float, max_batch: int = 64) -> torch.Tensor:
    """Same result as :func:`restore_reference`, computing each distinct row state's logits once.

    The logits at position p depend only on codes before p, and positions after p still hold the
    input codes, so a row's logits stay valid until that row itself changes. Rows are therefore
    evaluated only when they changed since their logits were computed (or never were), identical
    rows (replicas of one slice that have not diverged) are evaluated once, and the evaluations
    due at one step run as one batch.
    """
    s, h, w = codes.shape
    n = uniforms.shape[1]
    n_rows = s * n
    rows = codes.repeat_interleave(n, 0).clone()  # (N, L, L)
    slice_of_row = torch.arange(s, device=codes.device).repeat_interleave(n)  # (N,)
    row_coord = coord.repeat_interleave(n, 0)
    u = uniforms.reshape(n_rows, h * w)
    cache: torch.Tensor | None = None  # (N, K, L, L) logits of each row's current state
    stale = torch.ones(n_rows, dtype=torch.bool, device=codes.device)

    for p in range(h * w):
        r, c = divmod(p, w)
        if stale.any():
            todo = stale.nonzero().squeeze(1)
            # Identical states (same slice, same codes) share one evaluation.
            keys = torch.cat([slice_of_row[todo, None], rows[todo].flatten(1)], dim=1)
            unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
            first = torch.full((len(unique),), -1, dtype=torch.long, device=codes.device)
            first.scatter_(0, inverse.flip(0), todo.flip(0))  # a representative row per state
            logits = torch.cat([prior(rows[first[i:i + max_batch]], row_coord[first[i:i + max_batch]])
                                for i in range(0, len(first), max_batch)])
            if cache is None:
                cache = logits.new_empty((n_rows, *logits.shape[1:]))
            cache[todo] = logits[inverse]
            stale[todo] = False
        new = _step(cache[:, :, r, c], rows[:, r, c], u[:, p], threshold)
        changed = new != rows[:, r, c]
        rows[:, r, c] = new
        stale |= changed
    return rows.view(s, n, h, w)
