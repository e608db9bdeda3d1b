"""Folder of NIfTI files -> challenge predictions, one case at a time, never losing a case.

Every input gets either its output file or a one-line error; a bad file never stops the run.
Outputs are written atomically into the output folder and nowhere else; temporary files that a
killed run left there are removed at the start of the next.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .config import METHODS, REGIONS, TASKS, region_of_shape
from .detector import DEFAULT_RESTORATIONS, Detector
from .volume_io import (DEFAULT_MAX_VOXELS, InputError, is_nifti_name, list_inputs, load_volume,
                        output_path, remove_stale_temporaries, round_to_float16_, write_scores_nifti,
                        write_text)
from .weights import WeightsError

log = logging.getLogger("mood")


@dataclass
class RunSummary:
    total: int = 0
    scored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        parts = [f"scored {len(self.scored)} of {self.total} volume(s)"]
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
            progress: bool = True, method: str = "lsr") -> RunSummary:
    """Score every NIfTI volume in ``input`` (a folder or one file) into ``output``.

    ``sample`` writes ``<name>.txt`` with one score in [0, 1); ``pixel`` writes ``<name>``, a NIfTI
    of the input's shape and affine with voxel scores in [0, 1). ``method="reconstruction"`` scores
    with the VQ-VAE's reconstruction error instead (the baseline that shows what the prior adds).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if region != "auto" and region not in REGIONS:
        raise ValueError(f"region must be auto or one of {REGIONS}, not {region!r}")
    if restorations < 1:
        raise ValueError(f"--restorations must be at least 1, got {restorations}")
    start = time.perf_counter()
    input, output = Path(input), Path(output)
    files = list_inputs(input)
    _warn_ignored(input)
    output.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(output)
    if stale:
        log.info("removed %d temporary file(s) left in %s by an interrupted run", len(stale),
                 printable(output))
    summary = RunSummary(total=len(files))
    if not files:
        log.warning("no NIfTI files (.nii, .nii.gz) in %s", printable(input))

    detectors: dict[str, Detector | WeightsError] = {}
    suffix = ".txt" if task == "sample" else ""
    bar = tqdm(files, desc=f"mood {task}", unit="vol", disable=not progress, dynamic_ncols=True)
    for path in bar:
        name = path.name
        bar.set_postfix_str(printable(name)[-40:])
        try:
            out = output_path(path, output, suffix)
            if skip_existing and out.exists():
                summary.skipped.append(name)
                continue
            volume = load_volume(path, max_voxels)
            for note in volume.notes:
                log.warning("%s: %s", printable(name), note)
            reg = infer_region(volume.data.shape) if region == "auto" else region
            if reg not in detectors:
                try:
                    detectors[reg] = Detector.load(reg, weights, device)
                except WeightsError as exc:
                    detectors[reg] = exc
            det = detectors[reg]
            if isinstance(det, WeightsError):
                raise det
            scores = det.score(volume.data, task, method, slices, restorations, seed)
            _check_scores(scores)
            if task == "sample":
                write_text(out, f"{scores!r}\n")
            else:
                write_scores_nifti(out, round_to_float16_(scores), volume)
            summary.scored.append(name)
        except Exception as exc:  # one bad case never stops the run; the expected kinds read plainly
            expected = isinstance(exc, (InputError, WeightsError, ValueError, RuntimeError, OSError,
                                        MemoryError))
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not expected:
                reason = f"unexpected {type(exc).__name__}: {reason}"
            summary.failed.append((name, reason))
            tqdm.write(f"ERROR {printable(path)}: {printable(reason)}", file=sys.stderr)
    summary.seconds = time.perf_counter() - start
    return summary
