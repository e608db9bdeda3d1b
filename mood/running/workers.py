"""One machine, several GPUs: one ``mood sample|pixel`` worker process per GPU, each with its shard.

The workers are started the way ``torchrun --nproc_per_node=G`` starts its processes (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` in the environment), so that :func:`mood.running.shard.placement` gives
each its part of the run's shard and its own GPU; nothing else distinguishes the two launches.
No collectives: the workers never talk to each other.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import torch

from .shard import Placement


def worker_count(requested: str, place: Placement, device: str) -> int:
    """How many worker processes ``--workers`` asks for.

    ``auto``: one per visible GPU when ``--device`` is ``auto`` or ``cuda`` and more than one is
    visible; otherwise one (the CPU, a named GPU such as ``cuda:1``, or a process that a launcher
    such as torchrun already placed)."""
    if requested == "auto":
        if place.launched or device not in ("auto", "cuda") or not torch.cuda.is_available():
            return 1
        return max(1, torch.cuda.device_count())
    try:
        count = int(requested)
    except ValueError:
        raise ValueError(f"--workers must be auto or a positive integer, got {requested!r}") from None
    if count < 1:
        raise ValueError(f"--workers must be auto or a positive integer, got {count}")
    if count > 1 and place.launched:
        raise ValueError("--workers N > 1 under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set): the launcher "
                         "already starts the processes; leave --workers at auto")
    return count


def worker_environment(rank: int, count: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of worker ``rank`` of ``count``: torchrun's variables, and (like torchrun)
    one OpenMP thread per worker's share of the CPU cores unless ``OMP_NUM_THREADS`` is set."""
    env = dict(os.environ if base is None else base)
    env.update(RANK=str(rank), WORLD_SIZE=str(count), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(count))
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // count)))
    return env


def run_workers(argv: list[str], count: int) -> int:
    """Run ``mood ARGV --workers 1`` as ``count`` workers (progress bar on worker 0 only) and wait
    for all; SIGTERM and SIGINT are passed on to them. Returns the worst exit status (a worker
    killed by signal S counts as 128 + S)."""
    procs = [subprocess.Popen([sys.executable, "-m", "mood", *argv, "--workers", "1",
                               *(["--quiet"] if rank else [])], env=worker_environment(rank, count))
             for rank in range(count)]

    def forward(signum: int, _frame) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return max(code if code >= 0 else 128 - code for code in codes)
