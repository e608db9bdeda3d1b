"""The trainings: a region's data -> VQ-VAE weights, then frozen VQ-VAE codes -> prior weights (LSR);
a region's data with synthetic anomalies -> localiser weights.

In: a folder of volumes (any grid; converted to challenge form once and cached), a region, and
:class:`TrainSettings` (given whole, or field by field as keyword overrides of its defaults).
Out: a weights directory (``card.json`` + safetensors shards, loadable with
:func:`mood.detection.weights.load_vqvae` / :func:`mood.detection.weights.load_prior`) and, beside the weights,
``train/<model>/`` with the resumable checkpoint and the JSON-lines loss log.

Each function builds its model and a :class:`Recipe` (start, step, evaluation, export as plain
functions with their arguments bound) and hands it to :func:`mood.training.loop.run_loop`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..config import RegionConfig, is_tiny, resize_prior
from ..detection.weights import Card, load_localiser, load_prior, load_vqvae, read_card
from ..localiser.unet import UNet
from ..lsr.networks import VQVAE, PixelSNAIL
from .average import WeightAverage
from .codebook import CodebookState, init_codebook
from .data import SliceBank, default_cache
from .distributed import Dist
from .export import checked_card, save_trained_localiser, save_trained_prior, save_trained_vqvae
from .loop import Recipe, run_loop
from .settings import TrainSettings, model_config, with_overrides
from .steps import evaluate_localiser, evaluate_prior, evaluate_vqvae, localiser_step, prior_step, vqvae_step


def _start(banks: list[SliceBank], d: Dist, *, model: VQVAE | PixelSNAIL, settings: TrainSettings,
           config: RegionConfig, init_from: Path | None, load: Callable[[Path, Card], torch.nn.Module]) -> None:
    """A fresh start: ``init_from``'s model if given, else the VQ-VAE's k-means codebook (a prior
    starts from its random initialisation)."""
    if init_from is not None:
        model.load_state_dict(load(init_from, checked_card(init_from, config)).state_dict())
    elif isinstance(model, VQVAE):
        init_codebook(model, banks, d, settings)


def train_vqvae(region: str, data: Path, out: Path, *, settings: TrainSettings | None = None,
                holdout: list[str] | None = None, resume: bool = False, tiny: bool = False,
                device: str = "auto", threads: int | None = None, cache_dir: Path | None = None,
                volume_shape: tuple[int, int, int] | None = None, init_from: Path | None = None,
                width: float = 1.0, cell: int | None = None, codes: int | None = None,
                **overrides: Any) -> Path:
    """Train the slice VQ-VAE of ``region`` on the volumes in ``data``; returns the weights dir ``out``.

    ``settings`` (default :class:`TrainSettings`) with ``overrides`` applied (``steps=``, ``lr=``,
    ... any of its fields). ``out`` receives ``card.json`` + ``vqvae-*.safetensors`` whenever the
    holdout loss improves, and ``train/vqvae/`` with the resumable checkpoint and ``log.jsonl``.
    ``init_from``: a weights folder to start from (fine-tuning; fresh optimiser) instead of a
    k-means-initialised codebook. ``width`` scales the VQ-VAE's channels (:func:`mood.config.narrow`);
    ``cell`` and ``codes`` set its latent cell's pixels and codebook size (:func:`mood.config.relatent`).
    ``volume_shape`` overrides the region's challenge shape (tests and quick runs only).
    """
    config = model_config(region, tiny, width, cell, codes)
    settings = with_overrides(settings, overrides)
    levels = len(config.vqvae.channels) - 1
    if settings.crop % 2**levels:
        raise ValueError(f"crop {settings.crop} is not a multiple of {2**levels}, the VQ-VAE's downsampling")
    torch.manual_seed(settings.seed)  # identical initial weights on every process
    model = VQVAE(config.vqvae)
    # an EMA codebook is not the optimiser's: the loop's Adam takes only parameters that need gradients
    model.codebook.weight.requires_grad_(settings.codebook_update == "loss")
    codebook = CodebookState.empty(config.vqvae.n_codes)
    out = Path(out)
    recipe = Recipe(
        kind="vqvae", config=config, model=model, select="recon",
        init=partial(_start, model=model, settings=settings, init_from=init_from, config=config, load=load_vqvae),
        step=partial(vqvae_step, settings=settings, codebook=codebook), carried=codebook,
        evaluate=partial(evaluate_vqvae, settings=settings, background=config.background),
        export=partial(save_trained_vqvae, out=out, config=config, model=model, init_from=init_from))
    return run_loop(recipe, region=region, data=data, out=out, settings=settings, holdout=holdout, resume=resume,
                    threads=threads, device=device, cache_dir=cache_dir or default_cache(out),
                    volume_shape=volume_shape)


def train_prior(region: str, data: Path, out: Path, *, vqvae: Path, settings: TrainSettings | None = None,
                holdout: list[str] | None = None, resume: bool = False, tiny: bool = False,
                device: str = "auto", threads: int | None = None, cache_dir: Path | None = None,
                volume_shape: tuple[int, int, int] | None = None, init_from: Path | None = None,
                prior_channels: int | None = None, prior_blocks: int | None = None,
                prior_dropout: float | None = None, **overrides: Any) -> Path:
    """Train the PixelSNAIL prior on the codes of the frozen VQ-VAE in weights dir ``vqvae``.

    Settings as for :func:`train_vqvae`. The architecture comes from ``vqvae``'s card (``tiny``
    must agree with it), the prior's channels, blocks and dropout replaced by ``prior_channels``,
    ``prior_blocks`` and ``prior_dropout`` when given (:func:`mood.config.resize_prior`). ``out`` becomes a complete
    weights directory (both models; calibration reset) plus ``train/prior/``, exported whenever the
    holdout NLL improves. ``init_from``: a weights folder whose prior to start from (it must have
    been trained on this VQ-VAE's codes to be of use).
    """
    vq_card = read_card(vqvae)
    if vq_card.config.region != region:
        raise ValueError(f"{vqvae} holds a {vq_card.config.region} VQ-VAE, not {region}")
    if tiny != is_tiny(vq_card.config):
        raise ValueError(f"tiny={tiny} disagrees with the VQ-VAE in {vqvae}")
    config = resize_prior(vq_card.config, prior_channels, prior_blocks, prior_dropout)
    settings = with_overrides(settings, overrides)
    if settings.crop:
        raise ValueError("crop applies to the VQ-VAE; the prior learns whole slices' code grids")
    torch.manual_seed(settings.seed)
    vq = load_vqvae(vqvae, vq_card)
    for p in vq.parameters():
        p.requires_grad_(False)
    model = PixelSNAIL(config.prior)
    out = Path(out)
    recipe = Recipe(
        kind="prior", config=config, model=model, select="nll",
        init=partial(_start, model=model, settings=settings, init_from=init_from, config=config, load=load_prior),
        step=partial(prior_step, settings=settings, vq=vq),
        evaluate=partial(evaluate_prior, settings=settings, vq=vq, config=config),
        export=partial(save_trained_prior, out=out, config=config, vq_card=vq_card, vq=vq, vqvae=vqvae, model=model,
                       init_from=init_from))
    return run_loop(recipe, region=region, data=data, out=out, settings=settings, holdout=holdout, resume=resume,
                    threads=threads, device=device, cache_dir=cache_dir or default_cache(out),
                    volume_shape=volume_shape)


def _start_localiser(banks: list[SliceBank], d: Dist, *, model: UNet, average: WeightAverage,
                     init_from: Path | None) -> None:
    """A fresh start: ``init_from``'s localiser if given; the weights' average starts there."""
    if init_from is not None:
        card = read_card(init_from)
        if card.config.localiser.network != model.config.network:
            raise ValueError(f"--init-from {init_from}: its localiser differs from the one being trained")
        model.load_state_dict(load_localiser(init_from, card).state_dict())
    average.reset(model)


def train_localiser(region: str, data: Path, out: Path, *, settings: TrainSettings | None = None,
                    holdout: list[str] | None = None, resume: bool = False, tiny: bool = False,
                    device: str = "auto", threads: int | None = None, cache_dir: Path | None = None,
                    volume_shape: tuple[int, int, int] | None = None, init_from: Path | None = None,
                    channels: tuple[int, ...] | None = None, image_size: int | None = None,
                    **overrides: Any) -> Path:
    """Train the localiser of ``region`` on the volumes in ``data`` with synthetic anomalies of
    ``settings.tasks`` drawn into every batch; returns the weights dir ``out``.

    ``out`` receives ``card.json`` + ``localiser-*.safetensors`` (the weights' moving average)
    whenever the holdout loss improves; a card already there (LSR's networks) is kept and extended.
    ``channels`` and ``image_size`` replace the region's :class:`mood.config.LocaliserConfig`.
    Other arguments as for :func:`train_vqvae`.
    """
    base = model_config(region, tiny)
    config = replace(base, localiser=replace(base.localiser, channels=tuple(channels or base.localiser.channels),
                                             image_size=image_size or base.localiser.image_size))
    settings = with_overrides(settings, overrides)
    if settings.crop:
        raise ValueError("crop applies to the VQ-VAE; the localiser learns whole slices")
    held = read_card(out).config.region if (Path(out) / "card.json").is_file() else region
    if held != region:
        raise ValueError(f"{out} holds {held} weights; a {region} localiser needs its own folder")
    if config.localiser.image_size % 2**config.localiser.levels:
        raise ValueError(f"image size {config.localiser.image_size} is not a multiple of "
                         f"{2**config.localiser.levels}, the localiser's downsampling")
    torch.manual_seed(settings.seed)
    model = UNet(config.localiser)
    average = WeightAverage(model, settings.average)
    out = Path(out)
    recipe = Recipe(
        kind="localiser", config=config, model=model, select="loss", carried=average,
        image_size=config.localiser.image_size,
        init=partial(_start_localiser, model=model, average=average, init_from=init_from),
        step=partial(localiser_step, settings=settings, config=config, average=average),
        evaluate=partial(evaluate_localiser, settings=settings, config=config, average=average),
        export=partial(save_trained_localiser, out=out, config=config, model=average.model, init_from=init_from))
    return run_loop(recipe, region=region, data=data, out=out, settings=settings, holdout=holdout, resume=resume,
                    threads=threads, device=device, cache_dir=cache_dir or default_cache(out),
                    volume_shape=volume_shape)


__all__ = ["train_localiser", "train_prior", "train_vqvae"]
