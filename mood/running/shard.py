"""Which inputs one process scores: a deterministic partition of a folder by file name.

A shard ``I/N`` (0 <= I < N) owns the files whose name hashes to ``I`` modulo ``N``. The hash is
of the name, not of the position in the sorted list, so adding files to a folder never moves an
existing file to another shard (a resumed run finds its own outputs), and the N shards are
disjoint and together cover every file, whatever each process sees in the folder.

Under ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``) the
shard comes from the environment; an explicit ``--shard I/N`` is then split further among the
launcher's processes (:meth:`Shard.split`), so that a SLURM array of nodes, each running one
process per GPU, still partitions the folder exactly.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

#: What torchrun sets for each process; other launchers (mpirun wrappers, the multi-GPU workers of
#: :mod:`mood.running.workers`) set the same three.
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: expected I/N with 0 <= I < N, e.g. 0/4 ... 3/4")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"I/N"`` -> Shard(I, N); a ValueError that says the form otherwise."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise ValueError(f"shard {text!r}: expected I/N with 0 <= I < N, e.g. --shard 0/4")
        return cls(int(match[1]), int(match[2]))

    def owns(self, name: str) -> bool:
        """Whether the file called ``name`` (a base name) belongs to this shard."""
        return bucket(name) % self.count == self.index

    def select(self, files: list[Path]) -> list[Path]:
        """The files of this shard, in their given order."""
        return files if self.count == 1 else [f for f in files if self.owns(f.name)]

    def split(self, part: int, parts: int) -> "Shard":
        """Part ``part`` of ``parts`` of this shard: the files of ``I/N`` whose hash divided by N
        is ``part`` modulo ``parts``. The parts of a shard partition exactly that shard, because
        ``h mod (N*P) = (h mod N) + N * ((h div N) mod P)``."""
        return Shard(self.index + self.count * Shard(part, parts).index, self.count * parts)


def bucket(name: str) -> int:
    """A 64-bit hash of a file name, the same on every machine and Python (unlike ``hash``);
    undecodable bytes of a name hash as they are on disk."""
    return int.from_bytes(hashlib.blake2b(os.fsencode(name), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Placement:
    """Where this process runs: its shard of the inputs and its device name."""

    shard: Shard
    device: str
    launched: bool  # RANK/WORLD_SIZE/LOCAL_RANK came from a launcher


def placement(shard: Shard | None = None, device: str = "auto",
              environ: dict[str, str] | None = None) -> Placement:
    """This process's shard and device from ``--shard``, ``--device`` and the launcher's variables.

    Without a launcher: ``shard`` (default 0/1) and ``device`` as given. Under one with
    ``WORLD_SIZE`` W > 1: part ``RANK`` of W of ``shard``, and for ``auto``/``cuda`` the GPU
    ``LOCAL_RANK`` (modulo the visible GPUs; the CPU when there is none).
    """
    env = os.environ if environ is None else environ
    shard = shard or Shard()
    if not all(env.get(k, "").strip() for k in RANK_VARIABLES):
        return Placement(shard, device, launched=False)
    try:
        rank, world, local_rank = (int(env[k]) for k in RANK_VARIABLES)
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them), "
                         f"got {', '.join(repr(env[k]) for k in RANK_VARIABLES)}") from None
    if not 0 <= rank < world or local_rank < 0:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local_rank}: need "
                         f"0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local_rank % torch.cuda.device_count()}"
    return Placement(shard.split(rank, world), device, launched=True)


def under_torchrun(environ: dict[str, str] | None = None) -> bool:
    """Whether torchrun started this process: it stops every other process of the launch as soon as
    one exits with a non-zero status."""
    return bool((os.environ if environ is None else environ).get("TORCHELASTIC_RUN_ID"))
