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

from ..config import RegionConfig, narrow, region_preset, tiny_preset


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
    kmeans_batches: int = 4
    kmeans_iters: int = 20
    reseed_every: int = 25
    augment: bool = True
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


SCHEDULES = ("constant", "cosine")


def with_overrides(settings: TrainSettings | None, overrides: dict[str, Any]) -> TrainSettings:
    """``settings`` (default :class:`TrainSettings`) with ``overrides`` (field name -> value) applied."""
    unknown = sorted(set(overrides) - {f.name for f in fields(TrainSettings)})
    if unknown:
        raise TypeError(f"unknown training setting(s) {unknown}; TrainSettings has "
                        f"{[f.name for f in fields(TrainSettings)]}")
    return replace(settings or TrainSettings(), **overrides)


def learning_rate(step: int, base: float, warmup: int, schedule: str = "constant", steps: int = 0) -> float:
    """Learning rate at ``step``: an optional linear warm-up, then constant (the original's) or a
    cosine decay to a tenth of ``base`` at ``steps``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    if schedule == "cosine":
        t = min(1.0, (step - warmup) / max(1, steps - warmup))
        return base * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected {' or '.join(SCHEDULES)}")


def model_config(region: str, tiny: bool = False, width: float = 1.0) -> RegionConfig:
    """The architecture a run trains: the region's preset (or its tiny twin), VQ-VAE channels
    scaled by ``width`` (:func:`mood.config.narrow`)."""
    return narrow(tiny_preset(region) if tiny else region_preset(region), width)


__all__ = ["SCHEDULES", "TrainSettings", "learning_rate", "model_config", "with_overrides"]
