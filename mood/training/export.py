"""Models -> weights folders: a trained model's card with its provenance, random weights, copies.

Out: weights folders in the format of :mod:`mood.detection.weights` (``card.json`` + safetensors shards).

- :func:`save_trained_vqvae`, :func:`save_trained_prior`, :func:`save_trained_localiser`: what the
  loop exports when the holdout improves (the card records the run: data by folder name and
  checksums, never a machine path);
- :func:`init_weights`: randomly initialised models in the real format (tests, smoke runs);
- :func:`export_weights`: a copy of a weights folder stored as another dtype (e.g. float16);
- :func:`add_localiser`: a trained localiser (stored as another dtype) added to a weights folder
  that holds LSR's networks, under one card.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..common.maps import ScoreMap
from ..config import RegionConfig, networks_of
from ..detection.weights import Card, has_model, load_localiser, load_prior, load_vqvae, read_card, save_models
from ..localiser.unet import UNet
from ..lsr.networks import VQVAE, PixelSNAIL
from .codebook import CODEBOOK_REMEDY
from .data import provenance
from .settings import model_config


def _weights_shape(config: RegionConfig) -> RegionConfig:
    """``config`` without what acts only in training (dropout) or on the outputs (the localiser's
    smoothing): what its weights' shapes follow."""
    config = networks_of(config)
    return replace(config, vqvae=replace(config.vqvae, dropout=0.0), prior=replace(config.prior, dropout=0.0))


def checked_card(init_from: Path, config: RegionConfig) -> Card:
    """The card of ``init_from``, refused unless its architecture is ``config`` (dropout aside: a
    model may be fine-tuned with another)."""
    card = read_card(init_from)
    if _weights_shape(card.config) != _weights_shape(config):
        raise ValueError(f"--init-from {init_from}: its architecture differs from the one being trained")
    return card


def weights_note(folder: Path, kind: str) -> dict[str, Any]:
    """A weights folder's ``kind`` model by name and checksums (no machine path)."""
    folder = Path(folder)
    return {"weights": folder.resolve().name,
            "sha256": provenance(sorted(folder.glob(f"{kind}-*.safetensors")), folder)}


def init_note(init_from: Path, kind: str) -> dict[str, Any]:
    """Where a fine-tuned model started: its weights and that model's own training record."""
    earlier = read_card(init_from).info.get("training", {}).get(kind, {})
    return {**weights_note(init_from, kind), "steps": earlier.get("steps"),
            "init_from": earlier.get("init_from")}


def save_trained_vqvae(info: dict[str, Any], *, out: Path, config: RegionConfig, model: VQVAE,
                       init_from: Path | None) -> None:
    """``out``: the VQ-VAE with a card whose ``training.vqvae`` is ``info`` (no prior yet)."""
    if init_from is not None:
        info = {**info, "init_from": init_note(init_from, "vqvae")}
    card = Card(config=config, info={"training": {"vqvae": {**info, "codebook": CODEBOOK_REMEDY}}})
    save_models(out, card, model, None)


def save_trained_prior(info: dict[str, Any], *, out: Path, config: RegionConfig, vq_card: Card, vq: VQVAE,
                       vqvae: Path, model: PixelSNAIL, init_from: Path | None) -> None:
    """``out``: both models (architecture ``config``), the VQ-VAE's card info kept, ``training.prior``
    = ``info``; calibration reset."""
    if init_from is not None:
        info = {**info, "init_from": init_note(init_from, "prior")}
    vq_info = vq_card.info.get("training", {}).get("vqvae", {})
    card = Card(config=config, info={
        **vq_card.info, "training": {"vqvae": vq_info, "prior": {**info, "vqvae_from": weights_note(vqvae, "vqvae")}}})
    save_models(out, card, vq, model)


def save_trained_localiser(info: dict[str, Any], *, out: Path, config: RegionConfig, model: UNet,
                           init_from: Path | None) -> None:
    """``out``: the localiser with a card whose ``training.localiser`` is ``info``. A card already in
    ``out`` (e.g. a folder with LSR's networks) keeps its networks, LSR's calibration and its record;
    the localiser's architecture, weights and record are replaced and its calibration reset."""
    if init_from is not None:
        info = {**info, "init_from": init_note(init_from, "localiser")}
    if (Path(out) / "card.json").is_file():
        card = reset_localiser_calibration(read_card(out))
        card.config = replace(card.config, localiser=config.localiser)
        card.info = {**card.info, "training": {**card.info.get("training", {}), "localiser": info}}
    else:
        card = Card(config=config, info={"training": {"localiser": info}})
    save_models(out, card, None, None, localiser=model)


def init_weights(region: str, out: Path, tiny: bool = False, seed: int = 0) -> Path:
    """Write randomly initialised models (real card and shard format) to ``out``; for tests and smoke runs."""
    config = model_config(region, tiny)
    torch.manual_seed(seed)
    vq, prior = VQVAE(config.vqvae).eval(), PixelSNAIL(config.prior).eval()
    card = Card(config=config, info={"random_init": True, "seed": seed,
                                     "note": "random weights: for tests and smoke runs only"})
    save_models(out, card, vq, prior, localiser=UNet(config.localiser).eval())
    return Path(out)


def export_weights(src: Path, dst: Path, dtype: torch.dtype = torch.float32,
                   info: dict[str, Any] | None = None) -> Path:
    """Copy a weights directory (card and the models it holds) to ``dst``, stored as ``dtype``;
    ``info`` is merged into the card's ``info``. Shards stay below the size limit of
    :mod:`mood.detection.weights`."""
    card = read_card(src)
    lsr = has_model(src, "vqvae")
    vq = load_vqvae(src, card) if lsr else None
    prior = load_prior(src, card) if has_model(src, "prior") else None
    localiser = load_localiser(src, card) if has_model(src, "localiser") else None
    card.info = {**card.info, **(info or {}), "storage_dtype": str(dtype).replace("torch.", "")}
    save_models(dst, card, vq, prior, dtype=dtype, localiser=localiser)
    return Path(dst)


def reset_localiser_calibration(card: Card) -> Card:
    """``card`` with the localiser's maps and calibration record reset (a new localiser's scores
    are not the old one's)."""
    calibration = {k: v for k, v in card.info.get("calibration", {}).items() if k != "localiser"}
    return replace(card, localiser_sample_map=ScoreMap(), localiser_pixel_map=ScoreMap(),
                   info={**card.info, "calibration": calibration} if calibration else
                   {k: v for k, v in card.info.items() if k != "calibration"})


def add_localiser(src: Path, dst: Path, dtype: torch.dtype = torch.float16,
                  info: dict[str, Any] | None = None) -> Path:
    """The localiser of ``src`` (and its training record) into the weights folder ``dst``, stored as
    ``dtype``; ``dst``'s other networks, calibration and record stay; ``info`` is merged into its
    card's ``info``. The localiser's maps are reset: calibrate it next (``mood calibrate --networks localiser``)."""
    src_card, card = read_card(src), read_card(dst)
    if src_card.config.region != card.config.region:
        raise ValueError(f"{src} holds a {src_card.config.region} localiser, {dst} {card.config.region} weights")
    localiser = load_localiser(src, src_card)
    card = reset_localiser_calibration(card)
    card.config = replace(card.config, localiser=src_card.config.localiser)
    training = {**card.info.get("training", {}), "localiser": src_card.info["training"]["localiser"]}
    card.info = {**card.info, "training": training, **(info or {})}
    save_models(dst, card, None, None, dtype=dtype, localiser=localiser)
    return Path(dst)


__all__ = ["add_localiser", "checked_card", "export_weights", "init_note", "init_weights", "save_trained_localiser", "save_trained_prior",
           "save_trained_vqvae", "weights_note"]
