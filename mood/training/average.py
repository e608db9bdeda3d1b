"""An exponential moving average of a model's weights: what the localiser evaluates and exports.

Its detections swing tenfold from one checkpoint to the next on a kind it never trained on (issue
36's probe); the average of the recent weights swings less. Batch-norm statistics are copied, not
averaged: they are already running averages.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """``average = d * average + (1 - d) * weights`` after every step, with ``d = min(decay, (1 + step)
    / (10 + step))`` so that the first steps' average forgets the random start quickly (``decay`` 0.999
    alone would still hold 78 % of the initial weights after 250 steps); ``decay = 0`` keeps the
    latest weights. Saved with each checkpoint (``state_dict`` / ``load_state_dict``)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Average in ``model``'s weights after 0-based step ``step`` (the average follows the model
        to its device)."""
        self.model.to(next(model.parameters()).device)
        decay = min(self.decay, (1 + step) / (10 + step))
        for avg, p in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(p.detach().to(avg.dtype), 1 - decay)
        for avg, b in zip(self.model.buffers(), model.buffers()):
            avg.copy_(b)

    def reset(self, model: nn.Module) -> None:
        """Start the average at ``model``'s weights (a fresh start or a model loaded into it)."""
        self.model.load_state_dict(model.state_dict())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


__all__ = ["WeightAverage"]
