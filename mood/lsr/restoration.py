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
from .networks.rowwise import RowwisePrior


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


def unique_states(slice_of_row: torch.Tensor, rows: torch.Tensor, todo: torch.Tensor):
    """Representatives of the distinct (slice, codes) states among rows ``todo``, and the map back."""
    keys = torch.cat([slice_of_row[todo, None], rows[todo].flatten(1)], dim=1)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    reps = torch.full((len(unique),), -1, dtype=torch.long, device=rows.device)
    reps.scatter_(0, inverse.flip(0), todo.flip(0))
    return reps, inverse


@torch.no_grad()
def restore(prior: PixelSNAIL, codes: torch.Tensor, coord: torch.Tensor, uniforms: torch.Tensor,
            threshold: float) -> torch.Tensor:
    """Same result as :func:`restore_reference` at about one prior pass per restoration.

    Grid row r is evaluated row-wise from cached activations of the rows above
    (:class:`~mood.lsr.networks.rowwise.RowwisePrior`). A restoration's logits for row r stay valid
    until one of its own codes changes (positions after the current one still hold the input
    codes, and logits never depend on later positions), so from one evaluation every decision of
    the row is made up to the first change; only the restorations that changed are evaluated
    again, together in one batch, from the column after their change. Identical restorations
    (replicas of a slice that have not diverged) are evaluated once.
    """
    s, h, w = codes.shape
    n = uniforms.shape[1]
    n_rows = s * n
    rows = codes.repeat_interleave(n, 0).clone()  # (N, L, L), row s*n + j = restoration j of slice s
    slice_of_row = torch.arange(s, device=codes.device).repeat_interleave(n)
    u = uniforms.reshape(n_rows, h, w).to(codes.device)
    net = RowwisePrior(prior, coord.repeat_interleave(n, 0), n_rows)
    everyone = torch.arange(n_rows, device=codes.device)
    columns = torch.arange(w, device=codes.device)

    def evaluate(r: int, todo: torch.Tensor) -> torch.Tensor:
        reps, inverse = unique_states(slice_of_row, rows, todo)
        return net.row_logits(r, rows, reps, todo, inverse)[inverse]  # (m, K, L)

    for r in range(h):
        cursor = torch.zeros(n_rows, dtype=torch.long, device=codes.device)  # next undecided column
        todo = everyone
        while len(todo):
            logits = evaluate(r, todo).permute(0, 2, 1)  # (m, L, K)
            current = rows[todo, r]  # (m, L)
            new = _step(logits.reshape(-1, logits.shape[-1]), current.reshape(-1),
                        u[todo, r].reshape(-1), threshold).view_as(current)
            change = (new != current) & (columns >= cursor[todo, None])
            first = torch.where(change, columns, w).amin(1)  # first change per restoration, or w
            hit = first < w
            rows[todo[hit], r, first[hit]] = new[hit, first[hit]]
            cursor[todo] = first + 1
            # Changed before the last column: evaluate again from there. Changed at the last column:
            # decided, but the cached row must still see the change before rows below read it.
            again = hit & (first < w - 1)
            if bool((hit & ~again).any()):
                evaluate(r, todo[hit & ~again])
            todo = todo[again]
        reps, inverse = unique_states(slice_of_row, rows, everyone)
        net.finish_row(r, reps, everyone, inverse)
    return rows.view(s, n, h, w)
