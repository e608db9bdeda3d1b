"""The two models' training steps and holdout evaluations, as plain functions.

In: a :class:`Batch` (slices ``x`` (B, S, S), positions ``coord`` (B, 1), the step index and its
generator), the model, its DDP wrapper and optimiser, and the :class:`TrainSettings`. Out: the
step's metrics (a dict of floats that the loop logs). Whatever a step carries over to the next is
passed in explicitly (the VQ-VAE's :class:`CodebookState`; the prior's frozen VQ-VAE).

- :func:`vqvae_step`: L1 reconstruction + commitment (+ codebook) loss, then the codebook's EMA
  update (``codebook_update="ema"``) and codebook health;
- :func:`prior_step`: cross-entropy of the prior on the frozen VQ-VAE's codes;
- :func:`localiser_step`: synthetic anomalies drawn into the batch (:mod:`mood.training.tasks`),
  binary cross-entropy of the localiser's logits against their change targets, then the weights'
  moving average (:class:`WeightAverage`);
- :func:`evaluate_vqvae`, :func:`evaluate_prior`, :func:`evaluate_localiser`: the holdout metrics
  (eval mode, no gradients).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..common.slicing import body_mask, cell_share
from ..config import RegionConfig
from ..localiser.unet import UNet
from ..lsr.networks import VQVAE, PixelSNAIL, vq_losses
from .codebook import CodebookState, code_stats, ema_update, reseed_dead_codes, restart_ema
from .data import chunks
from .distributed import Dist, all_reduce
from .average import WeightAverage
from .settings import TrainSettings
from .tasks import synthesise


@dataclass(frozen=True)
class Batch:
    """One training step's input."""

    x: torch.Tensor  # (B, S, S) normalised slices
    coord: torch.Tensor  # (B, 1) relative slice positions
    step: int  # 0-based index of this step
    gen: torch.Generator  # this step's randomness (drawn data, augmentation, re-seeding)


def _autocast(settings: TrainSettings, d: Dist) -> torch.autocast:
    """bfloat16 autocast of a step's forward pass when ``settings.bf16`` (a no-op otherwise)."""
    return torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=settings.bf16)


def _optimise(loss: torch.Tensor, model: nn.Module, opt: torch.optim.Optimizer, settings: TrainSettings) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if settings.grad_clip:
        nn.utils.clip_grad_value_(model.parameters(), settings.grad_clip)
    opt.step()


def vqvae_step(batch: Batch, *, ddp: nn.Module, model: VQVAE, opt: torch.optim.Optimizer, d: Dist,
               settings: TrainSettings, codebook: CodebookState) -> dict[str, float]:
    """One VQ-VAE step; every ``reseed_every`` steps, codes unused since the last re-seeding
    (``codebook``, updated in place) are re-seeded. With ``codebook_update="ema"`` the codebook is
    not trained by a loss (its term is logged, not optimised) but moved to the running averages."""
    with _autocast(settings, d):
        recon, q = ddp(batch.x, batch.coord, settings.quantiser_gradient == "rotation")
    q = q._replace(encodings=q.encodings.float())  # losses and codebook re-seeding in float32
    losses = vq_losses(batch.x, recon.float().contiguous(), q, model.codebook.weight, settings.commitment)
    ema = settings.codebook_update == "ema"
    loss = sum(v for k, v in losses.items() if not (ema and k == "codebook"))
    _optimise(loss, model, opt, settings)
    if ema:
        ema_update(model, codebook, q.encodings, q.codes, settings.ema_decay, d)
    counts = torch.bincount(q.codes.flatten(), minlength=model.config.n_codes).double()
    counts = all_reduce(counts, d).cpu()  # (K,) over all processes
    codebook.window = codebook.window.to(counts) + counts
    used, ppl = code_stats(counts)
    reseeded = 0
    if settings.reseed_every and (batch.step + 1) % settings.reseed_every == 0:
        dead = (codebook.window == 0).to(d.device)
        reseeded = reseed_dead_codes(model, opt, dead, q.encodings, batch.gen, d)
        restart_ema(codebook, model, dead)
        codebook.reseeded += reseeded
        codebook.window = torch.zeros_like(codebook.window)
    terms = {k: float(v.detach()) for k, v in losses.items()}
    return {"loss": float(loss.detach()), **terms, "codes_used": used, "perplexity": ppl,
            "reseeded": reseeded, "reseeded_total": codebook.reseeded}


def codes_of(vq: VQVAE, x: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
    """The frozen VQ-VAE's codes (B, L, L) of slices ``x`` (B, S, S) (eval mode, no gradients)."""
    vq.eval()
    with torch.no_grad():
        return vq.encode(x, coord).codes


def prior_step(batch: Batch, *, ddp: nn.Module, model: PixelSNAIL, opt: torch.optim.Optimizer, d: Dist,
               settings: TrainSettings, vq: VQVAE) -> dict[str, float]:
    """One prior step: cross-entropy of the prior's logits on the codes of ``vq``."""
    vq.to(d.device)
    codes = codes_of(vq, batch.x, batch.coord)  # (B, L, L), float32: the codes inference sees
    with _autocast(settings, d):
        logits = ddp(codes, batch.coord)  # (B, K, L, L)
    loss = F.cross_entropy(logits.float(), codes)
    _optimise(loss, model, opt, settings)
    counts = all_reduce(torch.bincount(codes.flatten(), minlength=model.config.n_codes).double(), d)
    used, ppl = code_stats(counts.cpu())
    return {"loss": float(loss.detach()), "codes_used": used, "perplexity": ppl}


def with_anomalies(x: torch.Tensor, gen: torch.Generator, settings: TrainSettings,
                   config: RegionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices ``x`` (B, S, S) with the training tasks' anomalies, patches from the other slices of
    the batch (other heads, other planes), and their targets."""
    return synthesise(x, body_mask(x, config), x.roll(1, 0), gen, settings.tasks, settings.label_sigma)


def localiser_step(batch: Batch, *, ddp: nn.Module, model: UNet, opt: torch.optim.Optimizer, d: Dist,
                   settings: TrainSettings, config: RegionConfig, average: WeightAverage) -> dict[str, float]:
    """One localiser step: anomalies drawn into the batch, per-pixel BCE against the change
    target. BCE because the target is a probability-like change score in [0, 1], and the map's
    values are read as probabilities (thresholds, fusion)."""
    x, target = with_anomalies(batch.x, batch.gen, settings, config)
    with _autocast(settings, d):
        logits = ddp(x, batch.coord)
    loss = F.binary_cross_entropy_with_logits(logits.float(), target)
    _optimise(loss, model, opt, settings)
    average.update(model, batch.step)
    return {"loss": float(loss.detach()), "changed": float((target > 0.5).float().mean())}


@torch.no_grad()
def evaluate_localiser(model: UNet, ev: tuple[torch.Tensor, torch.Tensor], d: Dist, settings: TrainSettings,
                       config: RegionConfig, average: WeightAverage) -> dict[str, float]:
    """The weights' average on fixed holdout slices with fixed anomalies of the training tasks:
    BCE (``loss``, the selection metric) and the pixel AP of its probabilities against the pixels
    that changed by more than ``label_sigma`` (``ap``, pooled over the slices)."""
    from sklearn.metrics import average_precision_score  # imported late: only evaluation needs it

    net = average.model.to(d.device).eval()
    gen = torch.Generator().manual_seed(20361)  # the same anomalies at every evaluation
    loss, n, probs, labels = 0.0, 0, [], []
    for x, coord in chunks(*ev, settings.batch_size):
        x, coord = x.to(d.device), coord.to(d.device)
        xa, target = with_anomalies(x, gen, settings, config)
        logits = net(xa, coord).float()
        loss += float(F.binary_cross_entropy_with_logits(logits, target, reduction="sum"))
        n += target.numel()
        probs.append(torch.sigmoid(logits).flatten().cpu())
        labels.append((target > 1 - math.exp(-0.5)).flatten().cpu())
    y, p = torch.cat(labels).numpy(), torch.cat(probs).numpy()
    return {"loss": loss / max(n, 1), "ap": float(average_precision_score(y, p)) if y.any() else float("nan")}


@torch.no_grad()
def evaluate_vqvae(model: VQVAE, ev: tuple[torch.Tensor, torch.Tensor], d: Dist,
                   settings: TrainSettings, background: float) -> dict[str, float]:
    """Holdout L1 reconstruction over whole slices (``recon``, the selection metric) and inside
    the body (``recon_fg``: voxels other than ``background``, where anomalies are scored), VQ
    terms, codes in use and perplexity on fixed slices (eval mode)."""
    was = model.training
    model.eval()
    total: dict[str, float] = {}
    counts = torch.zeros(model.config.n_codes, dtype=torch.float64)
    n, fg_sum, fg_n = 0, 0.0, 0
    for x, coord in chunks(*ev, settings.batch_size):
        x, coord = x.to(d.device), coord.to(d.device)
        recon, q = model(x, coord)
        losses = vq_losses(x, recon, q, model.codebook.weight, settings.commitment)
        for k, v in losses.items():
            total[k] = total.get(k, 0.0) + float(v) * x.shape[0]
        fg = x != background
        fg_sum += float((recon - x).abs()[fg].sum())
        fg_n += int(fg.sum())
        counts += torch.bincount(q.codes.flatten().cpu(), minlength=model.config.n_codes).double()
        n += x.shape[0]
    model.train(was)
    used, ppl = code_stats(counts)
    return {**{k: v / n for k, v in total.items()}, "recon_fg": fg_sum / max(fg_n, 1),
            "codes_used": used, "perplexity": ppl}


@torch.no_grad()
def evaluate_prior(model: PixelSNAIL, ev: tuple[torch.Tensor, torch.Tensor], d: Dist,
                   settings: TrainSettings, vq: VQVAE, config: RegionConfig) -> dict[str, float]:
    """Holdout NLL per code (nats) of the prior on ``vq``'s codes of fixed slices (eval mode):
    over all codes (``nll``, the selection metric) and over the codes of cells more than half
    inside the body (``nll_body``: where anomalies are; the whole-slice mean is mostly air)."""
    was = model.training
    model.eval()
    vq.to(d.device)
    nll, n, body_nll, n_body = 0.0, 0, 0.0, 0
    for x, coord in chunks(*ev, settings.batch_size):
        x, coord = x.to(d.device), coord.to(d.device)
        codes = codes_of(vq, x, coord)
        per_code = F.cross_entropy(model(codes, coord), codes, reduction="none")  # (B, L, L)
        body = cell_share(body_mask(x, config), codes.shape[-1]) > 0.5
        nll += float(per_code.sum())
        n += codes.numel()
        body_nll += float(per_code[body].sum())
        n_body += int(body.sum())
    model.train(was)
    return {"nll": nll / max(n, 1), "nll_body": body_nll / max(n_body, 1)}


__all__ = ["Batch", "codes_of", "evaluate_localiser", "evaluate_prior", "evaluate_vqvae", "localiser_step",
           "prior_step", "vqvae_step", "with_anomalies"]
