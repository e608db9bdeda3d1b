"""Distributed set-up: torchrun's environment -> this process's rank, world size and device.

DDP is detected from the variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``):
gloo on CPU, NCCL on CUDA. Without them a run is one process and nothing here does anything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the run (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Initialise DDP from torchrun's environment (if present) and pick this process's device."""
    from ..common.device import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=dev)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=dev)


def all_reduce(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """``t`` summed over the processes, in place (unchanged in a one-process run)."""
    if d.enabled:
        dist.all_reduce(t)
    return t


def barrier(d: Dist) -> None:
    """Wait for every process (nothing in a one-process run)."""
    if d.enabled:
        dist.barrier()


def teardown(d: Dist) -> None:
    """Wait for every process, then leave the process group."""
    if d.enabled:
        dist.barrier()
        dist.destroy_process_group()


__all__ = ["Dist", "all_reduce", "barrier", "setup_distributed", "teardown"]
