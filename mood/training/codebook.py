"""Codebook health: the VQ-VAE's codebook initialised from data, watched, and its dead codes re-seeded.

The original recipe collapses within minutes (README, deviation 2). Here the codebook is
initialised from data (:func:`init_codebook`: k-means on encoder outputs of the first batches),
codes unused during the last ``reseed_every`` steps (counted over all processes, in a
:class:`CodebookState`) are re-seeded from current encoder outputs with their Adam moments reset
(:func:`reseed_dead_codes`), and the commitment weight is 0.25 instead of 1. The codebook stays a
plain ``nn.Embedding``, so the architecture and parameter count are the original's; it learns by the
codebook loss (the original's) or, with ``codebook_update="ema"``, as exponential moving averages
of the encoder outputs assigned to each code (:func:`ema_update`, VQ-VAE-2's rule). :func:`code_stats`
gives the codes in use and the perplexity that the log records. What a run carries from step to
step (:class:`CodebookState`) is saved with its checkpoints, so a resumed run continues exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..lsr.networks import VQVAE
from .data import SliceBank, draw_batch
from .distributed import Dist, all_reduce
from .settings import TrainSettings

#: What the card's training record says about the remedy.
CODEBOOK_REMEDY = ("data-based initialisation (k-means++ then Lloyd on encoder outputs of the first "
                   "batches) + re-seeding codes unused over the last N steps from current encoder "
                   "outputs (Adam moments reset) + commitment weight 0.25 (original: 1)")


@dataclass
class CodebookState:
    """What the codebook's training carries between steps: code counts since the last re-seeding
    (over all processes), the codes re-seeded so far, and the EMA statistics (``ema_count`` (K,)
    assignments and ``ema_sum`` (K, D) summed encoder outputs; None until the first EMA step)."""

    window: torch.Tensor  # (K,) float64 counts
    reseeded: int = 0
    ema_count: torch.Tensor | None = None
    ema_sum: torch.Tensor | None = None

    @classmethod
    def empty(cls, n_codes: int) -> CodebookState:
        return cls(torch.zeros(n_codes, dtype=torch.float64))

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {"window": self.window, "reseeded": torch.tensor([self.reseeded])}
        if self.ema_count is not None and self.ema_sum is not None:
            out |= {"ema_count": self.ema_count, "ema_sum": self.ema_sum}
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.window = tensors["window"].double()
        self.reseeded = int(tensors["reseeded"][0])
        self.ema_count, self.ema_sum = tensors.get("ema_count"), tensors.get("ema_sum")


def code_stats(counts: torch.Tensor) -> tuple[int, float]:
    """Codes in use and perplexity exp(H) of a code histogram (K,)."""
    total = counts.sum().clamp_min(1)
    p = counts.double() / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return int((counts > 0).sum()), float(entropy.exp())


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Centroids (k, D) of points ``x`` (N, D): k-means++ seeding then Lloyd iterations."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    d2 = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / n)
        i = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        centres.append(x[i])
        d2 = torch.minimum(d2, (x - x[i]).pow(2).sum(1))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        cnt = torch.bincount(assign, minlength=k).to(x.dtype).unsqueeze(1)
        c = torch.where(cnt > 0, sums / cnt.clamp_min(1), c)
    return c


def flat_encodings(z: torch.Tensor) -> torch.Tensor:
    """Encoder outputs (B, D, L, L) -> one row per latent position (B*L*L, D), float32."""
    return z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()  # (B*L*L, D)


@torch.no_grad()
def init_codebook(model: VQVAE, banks: list[SliceBank], d: Dist, settings: TrainSettings) -> None:
    """Data-based codebook: k-means on encoder outputs of ``settings.kmeans_batches`` training batches."""
    gen = torch.Generator().manual_seed(settings.seed + 12345)
    feats = []
    model.train()
    for _ in range(settings.kmeans_batches):
        x, coord = draw_batch(banks, settings.batch_size, gen, None, d.device)
        feats.append(flat_encodings(model.encode(x, coord).encodings))
    pool = torch.cat(feats)
    centres = kmeans(pool, model.config.n_codes, settings.kmeans_iters, gen)
    model.codebook.weight.data.copy_(centres.to(model.codebook.weight))


@torch.no_grad()
def ema_update(model: VQVAE, state: CodebookState, encodings: torch.Tensor, codes: torch.Tensor,
               decay: float, d: Dist, eps: float = 1e-5) -> None:
    """Move each code to the exponential moving average of the encoder outputs (B, D, L, L)
    assigned to it (``codes`` (B, L, L)), summed over all processes, with Laplace smoothing of the
    counts. The statistics start as if every code had been assigned its current vector an equal
    share of one step's positions (no start-up bias, unlike zero-initialised averages)."""
    w = model.codebook.weight
    flat = flat_encodings(encodings)  # (N, D)
    onehot = torch.nn.functional.one_hot(codes.flatten(), w.shape[0]).to(flat.dtype)  # (N, K)
    count, total = all_reduce(onehot.sum(0), d), all_reduce(onehot.t() @ flat, d)  # (K,), (K, D)
    if state.ema_count is None or state.ema_sum is None:
        state.ema_count = torch.full_like(count, float(count.sum()) / w.shape[0])
        state.ema_sum = w.detach().float() * state.ema_count.unsqueeze(1)
    state.ema_count = state.ema_count.to(count).mul_(decay).add_(count, alpha=1 - decay)
    state.ema_sum = state.ema_sum.to(total).mul_(decay).add_(total, alpha=1 - decay)
    n = state.ema_count.sum()
    smoothed = (state.ema_count + eps) / (n + w.shape[0] * eps) * n
    w.data.copy_((state.ema_sum / smoothed.unsqueeze(1)).to(w))


def restart_ema(state: CodebookState, model: VQVAE, codes: torch.Tensor) -> None:
    """EMA statistics of re-seeded ``codes`` (K,) bool: their new vectors, with the average count."""
    if state.ema_count is None or state.ema_sum is None or not bool(codes.any()):
        return
    codes = codes.to(state.ema_count.device)
    state.ema_count[codes] = state.ema_count.mean()
    state.ema_sum[codes] = model.codebook.weight.detach().float()[codes].to(state.ema_sum) \
        * state.ema_count[codes].unsqueeze(1)


@torch.no_grad()
def reseed_dead_codes(model: VQVAE, opt: torch.optim.Optimizer, dead: torch.Tensor,
                      encodings: torch.Tensor, generator: torch.Generator, d: Dist) -> int:
    """Replace codes flagged ``dead`` (K,) by random recent encoder outputs (B, D, L, L)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return 0
    w = model.codebook.weight
    if d.master:
        pool = flat_encodings(encodings)
        pick = torch.randint(pool.shape[0], (n_dead,), generator=generator).to(pool.device)
        noise = torch.randn(n_dead, pool.shape[1], generator=generator).to(pool) * 1e-3 * pool.std()
        w[dead] = (pool[pick] + noise).to(w)
    if d.enabled:
        dist.broadcast(w.data, 0)
    st = opt.state.get(w, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in st:
            st[key][dead] = 0
    return n_dead


__all__ = ["CODEBOOK_REMEDY", "CodebookState", "code_stats", "ema_update", "flat_encodings", "init_codebook",
           "kmeans", "reseed_dead_codes", "restart_ema"]
