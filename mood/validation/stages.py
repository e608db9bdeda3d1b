"""A picture of what the networks make of held-out slices: the check that numbers alone do not give.

In: a :class:`mood.detection.detector.Detector`, and rows of (volume, voxel scores, label) of held-out
cases with the planes to draw. Out: one PNG, a row per plane, in the networks' own frame (the
normalised ``size`` x ``size`` slice that the VQ-VAE encodes, a0 down, a1 across):

    input (label outlined) | reconstruction decode(encode(x)) | one restoration | pixel map (label outlined)

A reconstruction that does not look like the input explains every AP that follows from it; a
restoration shows what the prior put in place of the codes it found unlikely.
:func:`restoration_on_normal` puts the same check in numbers for a normal volume, where every code a
restoration replaces and every voxel it moves away from the input is a false alarm;
:func:`nll_on_anomaly` the other half for an anomalous one: restoration replaces an anomaly only
where the prior finds its codes less likely than ``lambda_p``; :func:`context_gain` says how much
of that the prior can know from the neighbouring codes at all, :func:`surprise_on_anomaly` whether
the anomalous codes cost more than the prior expected at their cells, and :func:`rise_over_clean` what a
prior that knew each cell's normal NLL would still miss. :func:`encoder_view` asks the same of the
VQ-VAE's encoder before any code is chosen: whether an anomaly moves its encodings at all, and
whether they land far from every code; :func:`nearest_normal`, whether they land far from every
encoding of other normal heads (:func:`body_encodings`), a score that needs no code and no prior.
These take a volume or its :func:`coded` slices, codes and encodings.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..common.slicing import SliceGrid, body_mask, cell_share, extract_slices, normalise
from ..detection.detector import Detector, Slices
from ..lsr.networks.pixelsnail import code_nll
from .metrics import ScoreCounts, auroc
from .show import ensure_mpl_config

COLUMNS = ("input, label outlined", "reconstruction", "one restoration", "pixel map, label outlined")


@dataclass(frozen=True)
class Row:
    """One plane ``plane`` (along a2) of a case: its volume, voxel scores and label (a0, a1, a2)."""

    name: str
    volume: np.ndarray
    scores: np.ndarray
    label: np.ndarray
    plane: int


def planes_to_draw(label: np.ndarray, n: int) -> list[int]:
    """The ``n`` planes (along a2) with the most label voxels, or the middle plane of a normal case."""
    area = label.reshape(-1, label.shape[2]).sum(0)
    best = [int(k) for k in np.argsort(-area, kind="stable")[:n] if area[k] > 0]
    return sorted(best) or [label.shape[2] // 2]


def _plane(volume: np.ndarray, plane: int, size: int) -> np.ndarray:
    """One a2 plane of ``volume`` resampled as the detector resamples slices: (size, size)."""
    t = torch.as_tensor(np.ascontiguousarray(volume), dtype=torch.float32)
    return extract_slices(t, SliceGrid(tuple(volume.shape), (plane,)), size)[0].numpy()


@torch.no_grad()
def stage_images(det: Detector, row: Row, seed: int = 0) -> dict[str, np.ndarray]:
    """The four images of ``row`` (each (size, size)) and the label plane, as the detector computes them."""
    size = det.config.vqvae.image_size
    vol = torch.as_tensor(np.ascontiguousarray(row.volume), dtype=torch.float32, device=det.device)
    grid = SliceGrid(tuple(row.volume.shape), (row.plane,))
    # the whole volume's statistics normalise the plane, as at inference
    one = Slices(x=normalise(extract_slices(vol, grid, size), vol, det.config),
                 coord=grid.positions.to(det.device), grid=grid)
    codes = det.encode(one)
    return {"input": one.x[0].cpu().numpy(),
            "reconstruction": det.decode(codes, one.coord)[0].cpu().numpy(),
            "restoration": det.restorations(one, codes, 1, seed)[0, 0].cpu().numpy(),
            "pixel": _plane(row.scores, row.plane, size),
            "label": _plane(row.label.astype(np.float32), row.plane, size)}


@torch.no_grad()
def restoration_on_normal(det: Detector, volume: np.ndarray, n_slices: int | None = None,
                          restorations: int = 3, seed: int = 0) -> dict[str, float]:
    """What restoration does to a normal volume's scored slices: the share of codes above the
    resampling threshold (``above_threshold``), the share a restoration replaces (``changed``, mean
    over ``restorations``: the cascade of resampling included), and the mean ``|x - recon|`` and
    ``|x - restoration|`` inside the body (``recon_fg``, ``restoration_fg``)."""
    s = det.slices(volume, n_slices)
    codes = det.encode(s)
    restored = det.restored_codes(s, codes, restorations, seed)  # (S, n, L, L)
    images = det.decode_restorations(restored, s.coord)
    body = body_mask(s.x, det.config)
    recon = det.decode(codes, s.coord)
    return {"above_threshold": float((det.code_nll(codes, s.coord) > det.card.threshold_pixel).double().mean()),
            "changed": float((restored != codes.unsqueeze(1)).double().mean()),
            "recon_fg": float((s.x - recon).abs()[body].double().mean()),
            "restoration_fg": float((s.x.unsqueeze(1) - images).abs()[body.unsqueeze(1).expand_as(images)]
                                    .double().mean())}


class Coded(NamedTuple):
    """A volume's scored slices and their codes: the VQ-VAE's part of every reading here, done once
    by :func:`coded` when many priors read the same volumes on one frozen VQ-VAE."""

    slices: Slices
    codes: torch.Tensor  # (S, L, L)
    encodings: torch.Tensor  # (S, D, L, L) the encoder's outputs before quantisation


@torch.no_grad()
def coded(det: Detector, volume: np.ndarray | Coded, n_slices: int | None = None) -> Coded:
    """``volume``'s scored slices, codes and encodings (``volume`` itself when it is already :class:`Coded`)."""
    if isinstance(volume, Coded):
        return volume
    s = det.slices(volume, n_slices)
    q = det.vqvae.encode(s.x, s.coord)
    return Coded(s, q.codes, q.encodings)


def _body_cells(det: Detector, s: Slices, cells: int) -> torch.Tensor:
    """Mask (S, L, L) of the latent cells mostly inside the body."""
    return cell_share(body_mask(s.x, det.config), cells) > 0.5


def _cells(det: Detector, s: Slices, label: np.ndarray, cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks (S, L, L) of the latent cells mostly inside ``label`` and of the body's cells it does not touch."""
    lab = cell_share(extract_slices(torch.as_tensor(label, dtype=torch.float32, device=s.x.device), s.grid, s.x.shape[-1]),
                     cells)
    return lab > 0.5, _body_cells(det, s, cells) & (lab == 0)


@torch.no_grad()
def nll_on_anomaly(det: Detector, volume: np.ndarray | Coded, label: np.ndarray,
                   n_slices: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code NLL of an anomalous volume's scored slices, by latent cell: ``(anomalous, normal)``,
    float64 values of the cells mostly inside the label and of the body's cells it does not touch.

    A cell is the patch of the slice that one code stands for; the label and the body are resampled
    as the volume is (:func:`mood.common.slicing.extract_slices`), then averaged over each cell.
    """
    s, codes, _ = coded(det, volume, n_slices)
    nll = det.code_nll(codes, s.coord)  # (S, L, L)
    anomalous, normal = _cells(det, s, label, nll.shape[-1])
    return nll[anomalous].double().cpu(), nll[normal].double().cpu()


@torch.no_grad()
def surprise_on_anomaly(det: Detector, volume: np.ndarray | Coded, label: np.ndarray,
                        n_slices: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nll_on_anomaly`'s cells, each code's NLL less the entropy of the prior's prediction at
    its cell (what the prior expected to pay there): ``(anomalous, normal)``, float64.

    A cell whose context leaves many codes open costs many nats even when it is normal; a threshold
    on this surprise instead of the NLL would flag only codes that cost more than their context
    made likely, if the prior's uncertainty is what hides the anomalies.
    """
    s, codes, _ = coded(det, volume, n_slices)
    logits = det.prior(codes, s.coord)  # (S, K, L, L)
    logp = torch.log_softmax(logits.float(), dim=1)
    surprise = code_nll(logits, codes) + (logp.exp() * logp).sum(1)
    anomalous, normal = _cells(det, s, label, codes.shape[-1])
    return surprise[anomalous].double().cpu(), surprise[normal].double().cpu()


@torch.no_grad()
def rise_over_clean(det: Detector, volume: np.ndarray | Coded, clean: np.ndarray | Coded, label: np.ndarray,
                    n_slices: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """An oracle's view of one anomalous case: the volume against ``clean``, the normal volume it was
    made from (same form), cell by cell. Returns the NLL's rise over the clean volume's at the same
    cell (float64) of the anomalous cells and of the normal body's, and the share of anomalous
    cells whose code the anomaly changed (nan when the label covers no cell).

    The rise is what a prior that knew each cell's normal NLL would score: if it separates the
    anomalous cells no better than :func:`nll_on_anomaly`'s NLL, a better-trained prior cannot either;
    codes the anomaly leaves unchanged no prior can flag.
    """
    (s, codes, _), (r, clean_codes, _) = coded(det, volume, n_slices), coded(det, clean, n_slices)
    rise = det.code_nll(codes, s.coord) - det.code_nll(clean_codes, r.coord)
    anomalous, normal = _cells(det, s, label, rise.shape[-1])
    changed = float((codes != clean_codes)[anomalous].double().mean()) if anomalous.any() else float("nan")
    return rise[anomalous].double().cpu(), rise[normal].double().cpu(), changed


@torch.no_grad()
def encoder_view(det: Detector, volume: np.ndarray | Coded, clean: np.ndarray | Coded, label: np.ndarray,
                 n_slices: int | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """What the encoder makes of one anomalous case, cell by cell, as ``(anomalous, normal)``
    float64 values of the cells mostly inside the label and of the body's cells it does not touch:

    - ``shift``: the distance of each cell's encoding from the clean volume's (``clean``: the
      normal volume the case was made from) at the same cell. An oracle, like
      :func:`rise_over_clean`: if an anomaly hardly moves its encodings, no code, prior or
      threshold downstream can find it, and the encoder is what must change.
    - ``residual``: the distance of each cell's encoding from its code's vector, which needs no
      clean volume: an encoding that no code fits is itself a sign of something never trained on.
    """
    (s, codes, z), (_, _, z_clean) = coded(det, volume, n_slices), coded(det, clean, n_slices)
    anomalous, normal = _cells(det, s, label, codes.shape[-1])
    vectors = det.vqvae.codebook(codes).permute(0, 3, 1, 2)
    readings = {"shift": (z - z_clean).norm(dim=1), "residual": (z - vectors).norm(dim=1)}
    return {k: (v[anomalous].double().cpu(), v[normal].double().cpu()) for k, v in readings.items()}


@torch.no_grad()
def body_encodings(det: Detector, volume: np.ndarray | Coded, n_slices: int | None = None) -> torch.Tensor:
    """The encodings (N, D) of ``volume``'s latent cells mostly inside the body: a bank of normal
    tissue for :func:`nearest_normal`."""
    s, codes, z = coded(det, volume, n_slices)
    return z.permute(0, 2, 3, 1)[_body_cells(det, s, codes.shape[-1])]


@torch.no_grad()
def nearest_normal(det: Detector, volume: np.ndarray | Coded, label: np.ndarray, bank: torch.Tensor,
                   n_slices: int | None = None, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Each cell's distance from its encoding to the nearest of ``bank`` (N, D: :func:`body_encodings`
    of normal heads other than the one the case was made from), as :func:`nll_on_anomaly`'s
    ``(anomalous, normal)`` float64 cells.

    A nearest-neighbour score of patch features (as PatchCore's), on the encoder's own: it needs no
    code and no prior, so it reads whether the encoder's view of an anomaly, which moves far from
    the clean head's (:func:`encoder_view`), is also far from all normal tissue, or lands where
    another head's normal tissue lies.
    """
    s, codes, z = coded(det, volume, n_slices)
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    distance = torch.cat([torch.cdist(part, bank).min(1).values for part in flat.split(chunk)]).reshape(codes.shape)
    anomalous, normal = _cells(det, s, label, codes.shape[-1])
    return distance[anomalous].double().cpu(), distance[normal].double().cpu()


def pooled_auroc(anomalous: torch.Tensor, normal: torch.Tensor) -> float:
    """AUROC of scores, ``anomalous`` ones against ``normal`` ones (0.5: chance)."""
    labels = np.r_[np.ones(len(anomalous), bool), np.zeros(len(normal), bool)]
    return auroc(ScoreCounts.from_arrays(torch.cat([anomalous, normal]).numpy(), labels))


def code_separation(splits: list[tuple[torch.Tensor, torch.Tensor]], lambda_p: float) -> dict:
    """:func:`nll_on_anomaly`'s ``(anomalous, normal)`` splits of some cases, pooled: the AUROC of
    per-code NLL, anomalous codes against the normal body's (``code_auroc``: whether any lambda_p
    could tell them apart; 0.5 is chance), the share of each above ``lambda_p`` (what restoration
    replaces first) and the median NLL of each, rounded to 4 places."""
    anomalous, normal = (torch.cat([sp[i] for sp in splits]) for i in (0, 1))
    out = {"cases": len(splits), "anomalous_codes": len(anomalous)}
    if len(anomalous) and len(normal):
        out["code_auroc"] = round(pooled_auroc(anomalous, normal), 4)
    for what, v in (("anomalous", anomalous), ("normal", normal)):
        if len(v):
            out[f"{what}_above_lambda_p"] = round(float((v > lambda_p).double().mean()), 4)
            out[f"{what}_nll_median"] = round(float(v.median()), 4)
    return out


@torch.no_grad()
def context_gain(det: Detector, volume: np.ndarray | Coded, n_slices: int | None = None) -> dict[str, float]:
    """How much the prior gets from the context on a normal volume's body codes: their mean NLL
    (``nll``), the entropy of their own frequencies (``unigram``: what a prior that knew only how
    often each code occurs in this very volume would pay) and the difference (``gain``, nats).

    A prior that gains little finds a code out of place hardly less likely than a normal one.
    """
    s, codes, _ = coded(det, volume, n_slices)
    nll = det.code_nll(codes, s.coord)
    body = cell_share(body_mask(s.x, det.config), nll.shape[-1]) > 0.5
    freq = torch.bincount(codes[body], minlength=det.config.prior.n_codes).double() / body.sum()
    mean_nll, unigram = float(nll[body].double().mean()), float(-freq[codes[body]].log().mean())
    return {"nll": mean_nll, "unigram": unigram, "gain": unigram - mean_nll}


def draw_stages(det: Detector, rows: list[Row], png: Path, title: str, seed: int = 0) -> Path:
    """Draw ``rows`` (see the module's notes) into ``png``; returns its path."""
    ensure_mpl_config()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * 2.4, len(rows) * 2.5 + 0.5), dpi=100)
    fig.patch.set_facecolor("black")
    for r, row in enumerate(rows):
        im = stage_images(det, row, seed)
        lo, hi = np.percentile(im["input"], [0.5, 99.5])
        hi = hi if hi > lo else lo + 1.0
        panels = (("input", "gray", lo, hi), ("reconstruction", "gray", lo, hi),
                  ("restoration", "gray", lo, hi), ("pixel", "inferno", 0.0, max(1e-6, float(im["pixel"].max()))))
        for c, (key, cmap, vmin, vmax) in enumerate(panels):
            ax = fig.add_subplot(len(rows), 4, r * 4 + c + 1)
            ax.imshow(im[key], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            if key in ("input", "pixel") and im["label"].max() > 0.5:
                ax.contour(im["label"], levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(COLUMNS[c], color="white", fontsize=8)
            if c == 0:
                ax.text(0.02, 0.02, f"{row.name} z={row.plane}", color="yellow", fontsize=7, transform=ax.transAxes)
            if c == 3:
                ax.text(0.98, 0.02, f"max {im['pixel'].max():.2f}", color="white", fontsize=7, ha="right",
                        transform=ax.transAxes)
    fig.suptitle(f"{title}  (the networks' frame: normalised slice, a0 down, a1 across)", color="white",
                 fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.5 / (len(rows) * 2.5 + 0.5),
                        wspace=0.03, hspace=0.05)
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, facecolor="black")
    return png


__all__ = ["COLUMNS", "Row", "code_separation", "context_gain", "draw_stages", "nll_on_anomaly", "planes_to_draw", "pooled_auroc", "restoration_on_normal", "rise_over_clean",
           "stage_images"]
