"""Folder of NIfTI files -> challenge predictions, one case at a time, never losing a case.

Every input gets either its output file or a one-line error; a bad file never stops the run.
Outputs are written atomically into the output folder and nowhere else; temporary files that a
killed run left there are removed at the start of the next. A run may score one shard of the
folder (:mod:`mood.running.shard`); the next volumes are read, and the previous outputs written, while the
current one is scored (:mod:`mood.running.overlap`).
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from ..config import DEFAULT_IN_FLIGHT, DEFAULT_METHOD, METHODS, REGIONS, TASKS, region_of_shape
from ..detection.detector import DEFAULT_RESTORATIONS, Detector
from ..detection.weights import WeightsError
from ..volumes.volume_io import (DEFAULT_MAX_VOXELS, InputError, Volume, is_nifti_name, list_inputs,
                                 load_volume, output_path, remove_stale_temporaries, round_to_float16_,
                                 write_scores_nifti, write_text)
from .overlap import Overlap
from .shard import Shard

log = logging.getLogger("mood")


@dataclass
class RunSummary:
    total: int = 0  # inputs of this shard
    scored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    seconds: float = 0.0
    shard: Shard = field(default_factory=Shard)
    listed: int = 0  # inputs of all shards
    device: str = ""  # where the models ran ("" if none was loaded)

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        parts = [f"scored {len(self.scored)} of {self.total} volume(s)"]
        if self.shard.count > 1:
            parts[0] = f"shard {self.shard} ({self.listed} in all): " + parts[0]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped (output exists)")
        parts.append(f"{len(self.failed)} failed")
        return ", ".join(parts) + f" in {self.seconds:.1f} s"


def printable(text: str | Path) -> str:
    """``text`` safe for one line of any terminal: undecodable bytes of file names as ``\\xff``,
    control characters (a newline in a name) escaped."""
    text = os.fsencode(str(text)).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _warn_ignored(input: Path) -> None:
    """Say which entries of an input folder are not read (not a .nii/.nii.gz name, or hidden)."""
    if not input.is_dir():
        return
    ignored = sorted(p.name for p in input.iterdir() if not is_nifti_name(p))
    if ignored:
        shown = ", ".join(printable(n) for n in ignored[:5]) + (", ..." if len(ignored) > 5 else "")
        log.warning("ignoring %d entr%s of %s that %s not .nii/.nii.gz (or hidden): %s", len(ignored),
                    "y" if len(ignored) == 1 else "ies", printable(input),
                    "is" if len(ignored) == 1 else "are", shown)


def _check_scores(scores: np.ndarray | float) -> None:
    """Never write a score outside [0, 1] (or NaN): the case fails instead, loudly."""
    lo, hi = float(np.min(scores)), float(np.max(scores))
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo and hi <= 1.0):
        raise RuntimeError(f"internal error: scores in [{lo}, {hi}], not in [0, 1]; nothing written")


def infer_region(shape: tuple[int, ...]) -> str:
    """Brain for 256^3, abdomen for 512^3; anything else needs an explicit --region."""
    region = region_of_shape(shape)
    if region is not None:
        return region
    raise InputError(f"cannot tell the region from shape {tuple(shape)} (brain is 256x256x256, "
                     f"abdomen 512x512x512); pass --region brain or --region abdom")


def predict(task: str, input: str | Path, output: str | Path, *, region: str = "auto",
            device: str = "auto", weights: str | Path | None = None, seed: int = 0,
            restorations: int = DEFAULT_RESTORATIONS, slices: int | None = None,
            skip_existing: bool = False, max_voxels: int = DEFAULT_MAX_VOXELS,
            progress: bool = True, method: str = DEFAULT_METHOD, shard: Shard | None = None,
            in_flight: int = DEFAULT_IN_FLIGHT) -> RunSummary:
    """Score every NIfTI volume in ``input`` (a folder or one file) into ``output``.

    ``sample`` writes ``<name>.txt`` with one score in [0, 1); ``pixel`` writes ``<name>``, a NIfTI
    of the input's shape and affine with voxel scores in [0, 1), by ``method``
    (:data:`mood.config.METHODS`; :meth:`mood.detection.detector.Detector.score`).
    With ``shard`` only that shard's inputs are scored (the same bytes as in an unsharded run: the
    seed applies to every volume alike, whatever its position). At most ``in_flight`` volumes are
    held at once, read ahead of and written behind the one being scored.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    if method not in ("auto",) + METHODS:
        raise ValueError(f"method must be auto or one of {METHODS}, not {method!r}")
    if region != "auto" and region not in REGIONS:
        raise ValueError(f"region must be auto or one of {REGIONS}, not {region!r}")
    if restorations < 1:
        raise ValueError(f"--restorations must be at least 1, got {restorations}")
    if in_flight < 1:
        raise ValueError(f"--in-flight must be at least 1, got {in_flight}")
    start = time.perf_counter()
    input, output, shard = Path(input), Path(output), shard or Shard()
    files = list_inputs(input)
    _warn_ignored(input)
    output.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(output)
    if stale:
        log.info("removed %d temporary file(s) left in %s by an interrupted run", len(stale),
                 printable(output))
    mine = shard.select(files)
    summary = RunSummary(total=len(mine), shard=shard, listed=len(files))
    if not files:
        log.warning("no NIfTI files (.nii, .nii.gz) in %s", printable(input))

    suffix = ".txt" if task == "sample" else ""
    todo: list[tuple[Path, Path]] = []  # (input, output)
    for path in mine:
        try:
            out = output_path(path, output, suffix)
        except InputError as exc:
            _fail(summary, path, exc)
            continue
        if skip_existing and out.exists():
            summary.skipped.append(path.name)
        else:
            todo.append((path, out))

    detectors: dict[str, Detector | WeightsError] = {}

    def score(volume: Volume, out: Path) -> Callable[[], None]:
        """Score one volume; returns the task that writes its output."""
        reg = infer_region(volume.data.shape) if region == "auto" else region
        if reg not in detectors:
            try:
                detectors[reg] = Detector.load(reg, weights, device)
                summary.device = str(detectors[reg].device)
            except WeightsError as exc:
                detectors[reg] = exc
        det = detectors[reg]
        if isinstance(det, WeightsError):
            raise det
        scores = det.score(volume.data, task, method, slices, restorations, seed)
        _check_scores(scores)
        if task == "sample":
            return lambda: write_text(out, f"{scores!r}\n")
        return lambda: write_scores_nifti(out, round_to_float16_(scores), volume)

    writes: list[tuple[Path, Future]] = []
    bar = tqdm(total=len(todo), desc=f"mood {task}", unit="vol", disable=not progress, dynamic_ncols=True)
    with Overlap(todo, lambda job: load_volume(job[0], max_voxels), in_flight) as overlap:
        for (path, out), volume, error in overlap:
            bar.set_postfix_str(printable(path.name)[-40:])
            try:
                if error is not None:
                    raise error
                for note in volume.notes:
                    log.warning("%s: %s", printable(path.name), note)
                writes.append((path, overlap.write(score(volume, out))))
            except Exception as exc:  # one bad case never stops the run
                overlap.release()
                _fail(summary, path, exc)
            del volume  # its place in flight is the writer's now: hold no reference here
            bar.update()
            writes = _finished_writes(writes, summary)
    bar.close()
    _finished_writes(writes, summary, wait=True)
    summary.seconds = time.perf_counter() - start
    return summary


def _finished_writes(writes: list[tuple[Path, Future]], summary: RunSummary,
                     wait: bool = False) -> list[tuple[Path, Future]]:
    """Count the finished writes as scored or failed; returns those still running."""
    running = []
    for path, future in writes:
        if not (wait or future.done()):
            running.append((path, future))
        elif future.exception() is not None:
            _fail(summary, path, future.exception())
        else:
            summary.scored.append(path.name)
    return running


def _fail(summary: RunSummary, path: Path, exc: BaseException) -> None:
    """Record one failed case and say so in one line; the expected kinds read plainly."""
    expected = isinstance(exc, (InputError, WeightsError, ValueError, RuntimeError, OSError, MemoryError))
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not expected:
        reason = f"unexpected {type(exc).__name__}: {reason}"
    summary.failed.append((path.name, reason))
    tqdm.write(f"ERROR {printable(path)}: {printable(reason)}", file=sys.stderr)
