"""Training: normal volumes -> VQ-VAE weights, then frozen VQ-VAE codes -> PixelSNAIL prior weights
(LSR); normal volumes with synthetic anomalies -> localiser weights; then calibration of their scores.

One job per module, in the order a run uses them:

==================  ==========================================================================
``settings``        :class:`TrainSettings` (every training default, once) and the learning rate
``data``            volumes -> slice banks (cached) -> random batches and fixed holdout slices
``batches``         the banks in the training device's memory, batches made there (next one prefetched)
``distributed``     DDP from torchrun's environment
``codebook``        codebook health: k-means initialisation, EMA updates, code statistics, dead-code re-seeding
``tasks``           the localiser's teachers: synthetic anomalies drawn into training slices, and their targets
``average``         the moving average of the localiser's weights, which it evaluates and exports
``steps``           each model's training step and holdout evaluation, as plain functions
``checkpoints``     the resumable checkpoint (safetensors + JSON) and the loss log
``loop``            the loop every model shares
``runs``            :func:`train_vqvae`, :func:`train_prior`, :func:`train_localiser`: a model and its recipe into the loop
``export``          trained models -> weights folders; :func:`init_weights`, :func:`export_weights`
``snapshot``        a run as a small committed snapshot (16-bit, moments if they fit), and back to a run
``augment``         training augmentation of normalised slices, random numbers from the CPU, arithmetic on the slices' device
``calibrate``       normal holdout volumes -> thresholds and score maps in the weights card
==================  ==========================================================================

The public names below are importable from ``mood.training``; they are loaded on first use, so
that the command line can read :mod:`mood.training.settings` without importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "TrainSettings": "settings", "learning_rate": "settings",
    "Dist": "distributed", "setup_distributed": "distributed",
    "CODEBOOK_REMEDY": "codebook", "code_stats": "codebook", "kmeans": "codebook",
    "reseed_dead_codes": "codebook",
    "evaluate_vqvae": "steps", "evaluate_prior": "steps",
    "load_checkpoint": "checkpoints", "save_checkpoint": "checkpoints",
    "train_vqvae": "runs", "train_prior": "runs", "train_localiser": "runs",
    "export_weights": "export", "init_weights": "export",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])


__all__ = sorted(_HOME)
