"""Calibration: normal holdout volumes -> thresholds and score maps in the weights card.

In: a folder of normal volumes that the models did not train on, and a weights directory.
Out: the same directory's ``card.json`` with

- ``lambda_s`` / ``lambda_p``: the ``sample_percentile`` (98) and ``pixel_percentile`` (90)
  percentiles of the per-code NLL of the holdout volumes (the original's rule, DESIGN.md section 3);
- ``sample_map``: ``x / (x + scale)`` with ``scale = sample_margin * max(holdout raw sample score)``,
  so holdout normals map to at most ``1 / (1 + sample_margin)`` (1/3 by default);
- ``pixel_map``: ``scale`` = the ``pixel_scale_percentile`` (99.9) of the holdout raw voxel scores
  inside the body (normal tissue stays below 0.5 for all but 0.1 % of its voxels);
- ``localiser_sample_map``: as ``sample_map``, of the localiser's sample statistic (its top
  probabilities' mean); the localiser's pixel map stays ``p / (p + 1)``: its probabilities need no
  rescaling, and a smaller scale would crowd anomalous voxels near 1, where float16 (the
  evaluator's read type) resolves coarsely;
- ``info["calibration"]``: per method (``localiser``, ``lsr``) its files, settings and raw values.

Each part runs when the weights hold its networks (LSR's two, the localiser).

Raw scores come from the public stages of :class:`mood.detection.detector.Detector` (``nll``,
``pixel_raw``) with the new thresholds, exactly as at inference; the maps are fitted by
:func:`mood.common.maps.fit_sample_map` and :func:`mood.common.maps.fit_pixel_map`. Pixel
raw scores need restorations (slow on a CPU), so they use ``n_slices`` slices and
``restorations`` restorations per volume; the thresholds and the sample map use the
inference default number of slices.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..common import maps
from ..common.slicing import body_mask
from ..detection.detector import Detector, resolve_weights
from ..detection.weights import Card, write_card
from ..localiser import sample_statistic
from ..lsr import scoring
from ..volumes.convert import ensure_challenge_form
from ..volumes.volume_io import READABLE_SUFFIXES, list_inputs


def calibrate(region: str, data: Path, weights: Path, *, device: str = "auto",
              n_slices: int | None = 8, restorations: int = 3, seed: int = 0,
              sample_percentile: float = 98.0, pixel_percentile: float = 90.0,
              sample_margin: float = 2.0, pixel_scale_percentile: float = 99.9,
              pixel: bool = True, parts: tuple[str, ...] = ("localiser", "lsr"),
              slice_sigma: float | None = None) -> Card:
    """Fit thresholds and score maps on the normal volumes in ``data``; write and return the card.

    ``parts``: which methods' calibration to fit, each when the weights hold its networks (the
    others' stay as they were). ``n_slices`` and ``restorations`` apply to LSR's (slow) pixel part;
    ``pixel=False`` skips it and keeps the card's pixel map. ``slice_sigma`` (the localiser's):
    its smoothing across slices (:attr:`mood.config.LocaliserConfig.slice_sigma`), set before its
    sample map is fitted; None keeps the card's.
    """
    t0 = time.perf_counter()
    if n_slices is not None and n_slices < 3:
        raise ValueError(f"n_slices must be at least 3 (the pixel score smooths over 3 slices), got {n_slices}")
    files = list_inputs(Path(data), READABLE_SUFFIXES)
    if not files:
        raise ValueError(f"no volume files ({', '.join(READABLE_SUFFIXES)}) in {data}")
    det = Detector.load(region, weights, device)
    if slice_sigma is not None:
        if slice_sigma < 0:
            raise ValueError(f"slice_sigma must be at least 0, got {slice_sigma}")
        config = replace(det.config, localiser=replace(det.config.localiser, slice_sigma=float(slice_sigma)))
        det = det.with_card(replace(det.card, config=config))
    vols = [ensure_challenge_form(f, region)[0] for f in files]
    card, info, names = det.card, {}, [f.name for f in files]
    if "localiser" in parts and det.localiser is not None:
        card, info["localiser"] = _calibrate_localiser(det, vols, sample_margin)
    if "lsr" in parts and det.vqvae is not None and det.prior is not None:
        card, info["lsr"] = _calibrate_lsr(det.with_card(card), vols, n_slices=n_slices, restorations=restorations,
                                           seed=seed, sample_percentile=sample_percentile,
                                           pixel_percentile=pixel_percentile, sample_margin=sample_margin,
                                           pixel_scale_percentile=pixel_scale_percentile, pixel=pixel)
    if not info:
        raise ValueError(f"the weights in {weights} hold none of the networks of {', '.join(parts)}")
    info = {k: {"files": names, "seed": seed, **v} for k, v in info.items()}
    earlier = card.info.get("calibration", {})
    if "lambda_s" in earlier:  # a card from before the localiser: its calibration is LSR's
        earlier = {"lsr": earlier}
    kept = {k: earlier[k] for k in ("localiser", "lsr") if k in earlier and k not in info}
    card.info = {**card.info, "calibration": {**kept, **info, "seconds": round(time.perf_counter() - t0, 1)}}
    write_card(resolve_weights(region, weights), card)
    return card


def _calibrate_localiser(det: Detector, vols: list[np.ndarray], sample_margin: float) -> tuple[Card, dict]:
    """The localiser's sample map from its statistic on every plane of each normal volume."""
    raw = [sample_statistic(det.localiser_raw(v)[0]) for v in vols]
    card = replace(det.card, localiser_sample_map=maps.fit_sample_map(raw, sample_margin),
                   localiser_pixel_map=maps.ScoreMap(1.0))
    return card, {"slice_sigma": det.config.localiser.slice_sigma,
                  "sample": {"raw": [round(r, 6) for r in raw], "margin": sample_margin,
                             "scale": card.localiser_sample_map.scale}}


def _calibrate_lsr(det: Detector, vols: list[np.ndarray], *, n_slices: int | None, restorations: int, seed: int,
                   sample_percentile: float, pixel_percentile: float, sample_margin: float,
                   pixel_scale_percentile: float, pixel: bool) -> tuple[Card, dict]:
    """LSR's thresholds and maps (the original's rule)."""
    # 1. thresholds from the pooled per-code NLL at the inference slice count
    nlls = [det.nll(v) for v in vols]  # (S, L, L) each
    nll = torch.cat([n.flatten().double().cpu() for n in nlls]).numpy()
    lambda_s = float(np.percentile(nll, sample_percentile))
    lambda_p = float(np.percentile(nll, pixel_percentile))

    # 2. sample map from the raw sample scores of the same codes with the new lambda_s
    sample_raw = [scoring.sample_raw_score(n, lambda_s) for n in nlls]
    card = replace(det.card, lambda_s=lambda_s, lambda_p=lambda_p,
                   sample_map=maps.fit_sample_map(sample_raw, sample_margin))
    s_scale = card.sample_map.scale

    # 3. pixel map from the raw voxel scores inside the body, restored with the new lambda_p
    pixel_info: dict = {"skipped": True}
    if pixel:
        tp = time.perf_counter()
        det = det.with_card(card)
        values = []
        for i, v in enumerate(vols):
            raw, s = det.pixel_raw(v, n_slices, restorations, seed + i)
            values.append(raw[body_mask(s.x, det.config)].double().cpu())
        pv = torch.cat(values).numpy()
        card = replace(card, pixel_map=maps.fit_pixel_map(pv, pixel_scale_percentile))
        pixel_info = {"n_slices": n_slices, "restorations": restorations, "voxels": int(pv.size),
                      "raw_p50": float(np.percentile(pv, 50)) if pv.size else None,
                      "raw_p99": float(np.percentile(pv, 99)) if pv.size else None,
                      "raw_max": float(pv.max()) if pv.size else None,
                      "scale_percentile": pixel_scale_percentile, "seconds": round(time.perf_counter() - tp, 1)}

    return card, {
        "lambda_s": {"percentile": sample_percentile, "value": card.lambda_s},
        "lambda_p": {"percentile": pixel_percentile, "value": card.lambda_p},
        "nll": {"codes": int(nll.size), "mean": float(nll.mean()), "p50": float(np.percentile(nll, 50)),
                "p99": float(np.percentile(nll, 99))},
        "sample": {"raw": [round(r, 4) for r in sample_raw], "margin": sample_margin, "scale": s_scale,
                   "mapped_max": float(max(sample_raw) / (max(sample_raw) + s_scale))},
        "pixel": pixel_info,
    }


__all__ = ["calibrate"]
