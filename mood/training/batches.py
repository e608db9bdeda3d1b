"""Training batches made where the model trains: slice banks in the device's memory, each batch
gathered and augmented there, the next one prepared while the current step runs.

In: the training banks (:class:`SliceBank`, any device), the batch size of this process, the
augmentation (or ``None``), the device, the run's seed and rank, and optionally the planes to draw
from (:func:`mood.training.data.tissue_planes`, CPU) and a crop size. Out: for each step its
generator and batch ``x`` (B, S, S) (or (B, crop, crop)), ``coord`` (B, 1) on the device: exactly
:func:`mood.training.data.draw_batch` of :func:`mood.training.data.step_generator` (seed, rank, step)
on the device-held banks. The random numbers come from the same CPU generator in the same order
(:mod:`mood.training.augment`), so on the CPU the batches are a CPU run's bit for bit, and on a GPU
they differ from them only by floating-point rounding.

- :func:`banks_on`: every bank's planes in one device tensor (N, S, S), the banks views of it;
- :class:`BatchStream`: the batch of a step; with ``prefetch`` (on by default off the CPU) one
  background thread prepares the next step's batch while the current step runs, because on a GPU
  a step takes milliseconds and the CPU's share of a batch (the random draws: about 1.6 million
  Gaussian numbers for a brain batch of 64) would otherwise stall it.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

from ..config import AugmentConfig
from .data import SliceBank, draw_batch, step_generator


def banks_on(banks: list[SliceBank], device: torch.device) -> list[SliceBank]:
    """``banks`` with their planes in one (N, S, S) tensor and positions in one (N, 1) tensor on
    ``device``; each returned bank is a view of its rows (its name, depth and order kept)."""
    slices = torch.cat([b.slices for b in banks]).to(device)  # (N, S, S), N = sum of depths
    positions = torch.cat([b.positions for b in banks]).to(device)  # (N, 1)
    out, start = [], 0
    for b in banks:
        out.append(SliceBank(name=b.name, slices=slices[start : start + b.depth],
                             positions=positions[start : start + b.depth]))
        start += b.depth
    return out


class BatchStream:
    """Batches of a run by step index: ``gen, x, coord = stream(step)``.

    ``gen`` is the step's generator after the batch was drawn (the step may draw more from it, as
    the VQ-VAE's code re-seeding does). Steps are normally asked for in order; asking for another
    step than the one prepared draws it directly, with the same result.
    """

    def __init__(self, banks: list[SliceBank], batch_size: int, aug: AugmentConfig | None,
                 device: torch.device, seed: int, rank: int = 0, prefetch: bool | None = None, *,
                 planes: list[torch.Tensor] | None = None, crop: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.banks = banks_on(banks, device)
        self.batch_size, self.aug, self.device = batch_size, aug, torch.device(device)
        self.seed, self.rank = seed, rank
        # plane indices stay on the CPU: sampling reads them one by one
        self.planes = None if planes is None else [p.cpu() for p in planes]
        self.crop = crop
        self.prefetch = self.device.type != "cpu" if prefetch is None else prefetch
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batches") if self.prefetch else None
        self._ahead: tuple[int, Future] | None = None

    def draw(self, step: int) -> tuple[torch.Generator, torch.Tensor, torch.Tensor]:
        """The batch of ``step``, drawn now: its generator, ``x`` (B, S, S) and ``coord`` (B, 1)."""
        gen = step_generator(self.seed, self.rank, step)
        x, coord = draw_batch(self.banks, self.batch_size, gen, self.aug, self.device, self.planes, self.crop)
        return gen, x, coord

    def __call__(self, step: int) -> tuple[torch.Generator, torch.Tensor, torch.Tensor]:
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == step:
            batch = ahead[1].result()
        else:
            if ahead is not None:
                ahead[1].result()  # an unused batch: let it finish before drawing another
            batch = self.draw(step)
        if self._pool is not None:
            self._ahead = (step + 1, self._pool.submit(self.draw, step + 1))
        return batch

    def close(self) -> None:
        """Finish the batch in preparation (if any) and stop the background thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._ahead = None

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BatchStream", "banks_on"]
