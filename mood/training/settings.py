"""Training settings: every default of a training run, defined once, and the learning-rate schedule.

In: nothing but keyword overrides. Out: a frozen :class:`TrainSettings` that ``mood train`` (its
option defaults), :func:`mood.training.train_vqvae` and :func:`mood.training.train_prior` all take
their defaults from, and which is stored in every checkpoint and card. No torch here, so that the
command line reads these defaults without importing it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from ..config import TRAINING_TASKS, RegionConfig, narrow, region_preset, relatent, tiny_preset


SCHEDULES = ("constant", "cosine")
CODEBOOK_UPDATES = ("loss", "ema")
QUANTISER_GRADIENTS = ("straight_through", "rotation")
PLANES = ("all", "tissue")
#: steps over which a fresh optimiser re-warms when a run resumes without its moments (at least)
REWARM_STEPS = 100


@dataclass(frozen=True)
class TrainSettings:
    """Everything that defines a training run besides the data and the architecture."""

    steps: int = 1000
    batch_size: int = 16  # global: split over the processes of a DDP run
    lr: float = 1e-4
    warmup: int = 0
    #: "constant" (the original's) or "cosine": decay from ``lr`` to ``lr / 10`` over ``steps``
    schedule: str = "constant"
    grad_clip: float = 1.0  # clip by value, as the original
    commitment: float = 0.25
    #: how the codebook learns: "loss" (a parameter trained by the codebook loss, the original's) or
    #: "ema" (each code the exponential moving average of the encoder outputs assigned to it, decay
    #: ``ema_decay``, as in VQ-VAE-2; no codebook loss)
    codebook_update: str = "loss"
    ema_decay: float = 0.99
    #: how the decoder's gradient crosses the quantiser to the encoder: "straight_through" (the
    #: original's copy) or "rotation" (the rotation trick, Fifty et al. 2024); inference is the same
    quantiser_gradient: str = "straight_through"
    kmeans_batches: int = 4
    kmeans_iters: int = 20
    reseed_every: int = 25
    augment: bool = True
    #: strength of augmentation's random intensity curve (:attr:`mood.config.AugmentConfig.remap`:
    #: the log-slopes' standard deviation; 0: off, as in the original)
    intensity_curve: float = 0.0
    #: largest factor of augmentation's lower resolution (:attr:`mood.config.AugmentConfig.resolution`;
    #: 1: off)
    resolution: float = 1.0
    #: which planes training draws: "all" (the whole extent, as inference scores it) or "tissue"
    #: (only planes with at least 1 % of their pixels inside the body)
    planes: str = "all"
    #: train the VQ-VAE on random ``crop`` x ``crop`` windows of the slices (0: whole slices); the
    #: networks are convolutional, so they still encode and score whole slices
    crop: int = 0
    eval_slices: int = 16  # per holdout volume
    ckpt_every: int = 100
    log_every: int = 10
    seed: int = 0
    channels_last: bool = True
    #: torch.compile the training forward pass: on this 2-core CPU the VQ-VAE step took 1.7 s instead
    #: of 2.1 s after a 60 s compile, the prior 1.6 s instead of 1.7 s after 160 s (batch 8)
    compile: bool = False
    #: forward passes and losses under bfloat16 autocast (weights, optimiser, holdout evaluation and
    #: the prior's input codes stay float32): on this project's CPU (AMX) a prior step took 0.44x the time
    bf16: bool = False
    #: stop (with a checkpoint) after this many seconds of this invocation, whatever ``steps`` says
    time_limit: float | None = None
    #: (localiser) the synthetic-anomaly task families it learns from (:mod:`mood.training.tasks`)
    tasks: tuple[str, ...] = TRAINING_TASKS
    #: (localiser) the change ``d`` (normalised units) at which the target reaches 1 - exp(-1/2)
    label_sigma: float = 0.1
    #: (localiser) decay of the weights' exponential moving average, which is what it evaluates and
    #: exports: a checkpoint's detections swing from one to the next, their average's less
    average: float = 0.999

    def __post_init__(self) -> None:
        for name, allowed in (("schedule", SCHEDULES), ("codebook_update", CODEBOOK_UPDATES),
                              ("quantiser_gradient", QUANTISER_GRADIENTS), ("planes", PLANES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.crop < 0:
            raise ValueError(f"crop must be 0 (whole slices) or a window size in pixels, not {self.crop}")
        if self.intensity_curve < 0:
            raise ValueError(f"intensity_curve must be 0 (off) or positive, not {self.intensity_curve}")
        if self.resolution < 1:
            raise ValueError(f"resolution must be 1 (off) or a larger down-sampling factor, not {self.resolution}")
        unknown = sorted(set(self.tasks) - set(TRAINING_TASKS))
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {', '.join(TRAINING_TASKS)}, not {self.tasks}")
        if self.label_sigma <= 0:
            raise ValueError(f"label_sigma must be positive, not {self.label_sigma}")
        if not 0.0 <= self.average < 1.0:
            raise ValueError(f"average must lie in [0, 1), not {self.average}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), not {self.ema_decay}")


def with_overrides(settings: TrainSettings | None, overrides: dict[str, Any]) -> TrainSettings:
    """``settings`` (default :class:`TrainSettings`) with ``overrides`` (field name -> value) applied."""
    unknown = sorted(set(overrides) - {f.name for f in fields(TrainSettings)})
    if unknown:
        raise TypeError(f"unknown training setting(s) {unknown}; TrainSettings has "
                        f"{[f.name for f in fields(TrainSettings)]}")
    return replace(settings or TrainSettings(), **overrides)


def learning_rate(step: int, base: float, warmup: int, schedule: str = "constant", steps: int = 0,
                  rewarm_from: int | None = None) -> float:
    """Learning rate at ``step``: an optional linear warm-up, then constant (the original's) or a
    cosine decay to a tenth of ``base`` at ``steps``; when ``rewarm_from`` is given (a fresh
    optimiser resumed mid-run), warmed up again over ``max(warmup, 100)`` steps from there, so that
    Adam's moments settle before full steps."""
    if warmup > 0 and step < warmup:
        lr = base * (step + 1) / warmup
    elif schedule == "constant":
        lr = base
    elif schedule == "cosine":
        t = min(1.0, (step - warmup) / max(1, steps - warmup))
        lr = base * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))
    else:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected {' or '.join(SCHEDULES)}")
    if rewarm_from is not None and step >= rewarm_from:
        lr *= min(1.0, (step - rewarm_from + 1) / max(warmup, REWARM_STEPS))
    return lr


def model_config(region: str, tiny: bool = False, width: float = 1.0, cell: int | None = None,
                 codes: int | None = None) -> RegionConfig:
    """The architecture a run trains: the region's preset (or its tiny twin), its latent cell and
    codebook size replaced when given (:func:`mood.config.relatent`), VQ-VAE channels scaled by
    ``width`` (:func:`mood.config.narrow`)."""
    return narrow(relatent(tiny_preset(region) if tiny else region_preset(region), cell, codes), width)


__all__ = ["CODEBOOK_UPDATES", "PLANES", "SCHEDULES", "TrainSettings", "learning_rate", "model_config", "with_overrides"]
