"""Run the package or a container image on a MOOD toy layout and score it as the challenge does.

In: ``data`` laid out like the challenge's toy data (either region may be absent)::

    data/brain/toy/*.nii.gz
    data/brain/toy_label/sample/<case>.txt   data/brain/toy_label/pixel/<case>
    data/abdom/...

Out: a dict with one row per region and task (AP, AUROC, best Dice, cases, missing, ...) and
per-case details, optionally written as JSON, and optionally one PNG per case (volume, pixel
prediction, label outline); :func:`format_table` renders the rows. Nothing is printed here: the
command line (``mood validate``, :mod:`mood.cli`) prints the table.

The predictor runs once per region and task, as either

* the package: ``python -m mood TASK --input toy --output pred --region REGION [extra args]``, or
* a container image, exactly as the challenge calls it: ``docker run --rm --read-only
  --network none -v toy:/mnt/data:ro -v pred:/mnt/pred IMAGE sh /workspace/run_TASK_REGION.sh
  /mnt/data /mnt/pred`` (plus ``--gpus all`` when ``docker info`` lists an nvidia runtime).

A non-zero exit status (1 means that some files failed and the others were written) is recorded
and scoring goes on: missing predictions count as the challenge counts them (0 / all zeros).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import REGIONS
from .metrics import Groups, pixel_metrics, sample_metrics
from ..volumes.volume_io import write_json

log = logging.getLogger(__name__)

TASKS = ("sample", "pixel")
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


# -- running a predictor ---------------------------------------------------------------------
def docker_gpu_args() -> list[str]:
    """``["--gpus", "all"]`` when ``docker info`` reports an nvidia runtime, else ``[]``."""
    try:
        info = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    return ["--gpus", "all"] if "nvidia" in info.stdout.lower() else []


def predictor_command(task: str, region: str, toy_dir: Path, pred_dir: Path, docker: str | None = None,
                      extra_args: Sequence[str] = (), gpu_args: Sequence[str] = ()) -> list[str]:
    """The command line that predicts ``task`` for the volumes in ``toy_dir`` into ``pred_dir``."""
    if docker is None:
        return [sys.executable, "-m", "mood", task, "--input", str(toy_dir), "--output", str(pred_dir),
                "--region", region, *extra_args]
    return ["docker", "run", "--rm", "--read-only", "--network", "none", *gpu_args,
            "-v", f"{Path(toy_dir).resolve()}:/mnt/data:ro", "-v", f"{Path(pred_dir).resolve()}:/mnt/pred",
            *extra_args, docker, "sh", f"/workspace/run_{task}_{region}.sh", "/mnt/data", "/mnt/pred"]


def run_predictor(task: str, region: str, toy_dir: Path, pred_dir: Path, docker: str | None = None,
                  extra_args: Sequence[str] = ()) -> int:
    """Run the package (or the ``docker`` image) on ``toy_dir``, writing into ``pred_dir``.

    With ``docker``, ``extra_args`` go to ``docker run`` (before the image); otherwise to
    ``python -m mood``. Returns the exit status; output streams through to the terminal.
    """
    env = None
    if docker is None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(_PACKAGE_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        gpu: list[str] = []
    else:
        gpu = docker_gpu_args()  # the image runs as pred_dir's owner: no permissions to change
    cmd = predictor_command(task, region, toy_dir, pred_dir, docker, extra_args, gpu)
    log.info("running: %s", " ".join(cmd))
    try:
        return subprocess.run(cmd, env=env).returncode
    except OSError as exc:
        log.error("could not start %s: %s", cmd[0], exc)
        return 127


# -- scoring ---------------------------------------------------------------------------------
_SUMMARY_KEYS = ("region", "task", "ap", "auroc", "best_dice", "best_threshold", "n_cases", "n_missing",
                 "n_bad_shape", "n_unreadable", "n_skipped", "n_positive", "n_total", "returncode",
                 "seconds", "error", "groups")


def _clean(value: Any) -> Any:
    """NaN -> None and numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of the result rows."""
    def num(v: Any, digits: int = 4) -> str:
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"

    head = f"{'region':<7}{'task':<8}{'AP':>8}{'AUROC':>8}{'bestDice':>9}{'cases':>7}{'missing':>8}" \
           f"{'badshape':>9}{'unread':>7}{'exit':>6}{'time(s)':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['region']:<7}{r['task']:<8}{num(r.get('ap')):>8}{num(r.get('auroc')):>8}"
            f"{num(r.get('best_dice')):>9}{r.get('n_cases', 0):>7}{r.get('n_missing', 0):>8}"
            f"{r.get('n_bad_shape', 0):>9}{r.get('n_unreadable', 0):>7}"
            f"{'-' if r.get('returncode') is None else r['returncode']:>6}{num(r.get('seconds'), 1):>9}")
        if r.get("error"):
            lines.append(f"  error: {r['error']}")
    return "\n".join(lines)


def _pictures(region_dir: Path, pred_root: Path, out: Path, tasks: Sequence[str]) -> list[Path]:
    from .show import show

    toy_dir = region_dir / "toy"
    written = []
    for volume in sorted(p for p in toy_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        name = volume.name
        pred = pred_root / "pixel" / name
        label = region_dir / "toy_label" / "pixel" / name
        sample_pred = pred_root / "sample" / f"{name}.txt"
        sample_label = region_dir / "toy_label" / "sample" / f"{name}.txt"
        title = name
        if "sample" in tasks and sample_pred.is_file():
            title += f"  sample score {sample_pred.read_text().strip()[:10]}"
        if sample_label.is_file():
            title += f"  label {sample_label.read_text().strip()[:3]}"
        png = out / region_dir.name / (name.split(".nii")[0] + ".png")
        try:
            scores = pred if ("pixel" in tasks and pred.is_file()) else None
            written.append(show(volume, png, scores=scores, label=label if label.is_file() else None,
                                title=title))
        except ValueError as exc:  # e.g. a prediction of the wrong shape: draw without it
            log.warning("%s: %s; drawn without the prediction", name, exc)
            written.append(show(volume, png, label=label if label.is_file() else None, title=title))
    return written


def validate(data: Path, output_json: Path | None = None, docker: str | None = None,
             tasks: Sequence[str] = TASKS, regions: Sequence[str] = REGIONS, pictures: Path | None = None,
             extra_args: Sequence[str] = (), workdir: Path | None = None,
             groups: Groups | None = None) -> dict[str, Any]:
    """Predict and score every region and task found under ``data``.

    Args:
        data: folder with ``<region>/toy`` and ``<region>/toy_label/{sample,pixel}``.
        output_json: write the returned dict here as JSON (NaN as null).
        docker: an image name to run instead of the package.
        tasks, regions: what to run; regions without a ``toy`` folder and tasks without labels are
            skipped (listed under ``"skipped"``).
        pictures: folder for one PNG per case (``<region>/<case>.png``).
        extra_args: passed to ``python -m mood`` (or to ``docker run``).
        workdir: predictions go to ``workdir/<region>/<task>`` (emptied first) and are kept;
            default a temporary folder that is removed afterwards.
        groups: case name -> the groups it counts in; each row then also holds ``groups``, the
            metric per group (:func:`mood.validation.metrics.sample_metrics`).

    Returns:
        ``{"data", "predictor", "results": [row, ...], "skipped": [...], "cases": {...}}``; each row
        holds region, task, ap, auroc, best_dice, best_threshold, n_cases, n_missing,
        n_bad_shape, n_unreadable, n_skipped, n_positive, n_total, returncode, seconds, error.
    """
    data = Path(data)
    if not data.is_dir():
        raise ValueError(f"data folder {data} does not exist")
    bad = [t for t in tasks if t not in TASKS] + [r for r in regions if r not in REGIONS]
    if bad or not tasks or not regions:
        raise ValueError(f"unknown or no tasks/regions {bad}; tasks: {', '.join(TASKS)}; "
                         f"regions: {', '.join(REGIONS)}")
    temporary = workdir is None
    root = Path(tempfile.mkdtemp(prefix="mood-validate-")) if temporary else Path(workdir)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    cases: dict[str, Any] = {}
    try:
        for region in regions:
            region_dir = data / region
            if not (region_dir / "toy").is_dir():
                skipped.append(f"{region}: no {region_dir / 'toy'}")
                continue
            for task in tasks:
                label_dir = region_dir / "toy_label" / task
                if not label_dir.is_dir():
                    skipped.append(f"{region}/{task}: no {label_dir}")
                    continue
                pred_dir = root / region / task
                if pred_dir.exists():
                    shutil.rmtree(pred_dir)
                pred_dir.mkdir(parents=True)
                start = time.perf_counter()
                rc = run_predictor(task, region, region_dir / "toy", pred_dir, docker, extra_args)
                seconds = time.perf_counter() - start
                row: dict[str, Any] = {"region": region, "task": task, "returncode": rc, "seconds": seconds,
                                       "error": None}
                try:
                    scored = (sample_metrics if task == "sample" else pixel_metrics)(pred_dir, label_dir, groups)
                    cases[f"{region}/{task}"] = scored.pop("cases")
                    row.update(scored)
                except ValueError as exc:
                    row["error"] = str(exc)
                rows.append({k: row.get(k) for k in _SUMMARY_KEYS if k != "groups" or groups is not None})
            if pictures is not None:
                _pictures(region_dir, root / region, Path(pictures), tasks)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)

    report = _clean({"data": str(data), "predictor": f"docker:{docker}" if docker else "package",
                     "extra_args": list(extra_args), "results": rows, "skipped": skipped,
                     "workdir": None if temporary else str(root), "cases": cases})
    if output_json is not None:
        output_json = Path(output_json)
        output_json.parent.mkdir(parents=True, exist_ok=True)
        write_json(output_json, report)
    return report


def succeeded(rows: list[dict[str, Any]]) -> bool:
    """Whether there were result rows and every predictor run exited 0 and was scored."""
    return bool(rows) and all(r["returncode"] == 0 and not r["error"] for r in rows)


__all__ = ["TASKS", "validate", "succeeded", "run_predictor", "predictor_command", "docker_gpu_args",
           "format_table"]
