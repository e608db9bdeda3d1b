"""The challenge's metric, exactly as MOOD's ``scripts/evalresults.py`` computes it, plus AUROC and best Dice.

In: a prediction folder and a label folder in the MOOD toy layout. Out: a dict per task.

The rules (MIC-DKFZ/mood ``scripts/evalresults.py``, ``eval_dir``):

* Cases are the entries of the label folder, ``sorted(os.listdir(label_dir))``; the prediction of
  a case has the *same file name* in the prediction folder. So for the sample task the label
  ``toy_label/sample/toy_0.nii.gz.txt`` is matched with the prediction ``toy_0.nii.gz.txt``, and
  for the pixel task ``toy_label/pixel/toy_0.nii.gz`` with ``toy_0.nii.gz``.
* Sample task: the label is ``int(first line)``; the prediction ``float(first line)`` clipped to
  [0, 1]. A missing or unparsable prediction counts as 0.
* Pixel task: the label is ``rint(get_fdata())`` clipped to [0, 1], == 1; the prediction is
  ``nib.load(p).get_fdata(dtype=np.float16)`` clipped to [0, 1]. A missing or unreadable
  prediction, or one whose shape differs from the label's, counts as all zeros.
* A case whose label cannot be read is left out (the evaluator prints "Smth went fundamentally
  wrong" and goes on).
* The score is ``sklearn.metrics.average_precision_score`` over all cases (sample) or over all
  voxels of all cases pooled (pixel).

Pooling 256^3 or 512^3 volumes would need gigabytes, so the pixel task counts, per distinct float16
value, how many positive and negative voxels carry it. A float16 has 65536 bit patterns, so the
table is small, and average precision computed from it with sklearn's own arithmetic (same
thresholds, same float64 operations in the same order) is bit-for-bit equal to sklearn's result on
the pooled arrays (tested). AUROC (trapezoidal, ties count one half) and the best Dice over all
thresholds (pooled: 2 TP / (2 TP + FP + FN)) come from the same table.

A NaN prediction makes sklearn (and so the challenge's evaluator) fail; here it raises
``ValueError`` naming the file.

Both tasks can also be scored on groups of cases (``groups``: case -> the groups it counts in, e.g.
an anomaly kind or size and, for normal cases, every group), the same metric on each group's cases
alone: what the challenge's score would be if every anomaly were of that group.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

#: Voxels per chunk when counting (bounds the temporary int64 copy to 32 MB).
_CHUNK = 1 << 22
#: float16 bit patterns
N_HALF = 1 << 16


# -- readers (the evaluator's rules) ---------------------------------------------------------
def read_sample_label(path: str | Path) -> int:
    """The label of one sample case: ``int`` of the file's first line (the evaluator's parsing)."""
    with open(path) as fh:
        return int(fh.readline())


def read_sample_prediction(path: str | Path) -> tuple[float, str]:
    """One sample prediction as the evaluator reads it: ``(value, status)``.

    ``value`` is ``float(first line)`` clipped to [0, 1]; ``status`` is ``"ok"``, ``"missing"``
    (no file: value 0) or ``"unreadable"`` (unparsable: value 0). NaN stays NaN (the evaluator
    would fail on it).
    """
    if not os.path.exists(path):
        return 0.0, "missing"
    try:
        with open(path) as fh:
            value = float(fh.readline())
    except Exception:
        return 0.0, "unreadable"
    return float(np.clip(value, a_min=0.0, a_max=1.0)), "ok"


def read_pixel_label(path: str | Path) -> np.ndarray:
    """The pixel label of one case: bool (a0, a1, a2), ``rint(value) >= 1`` (== the evaluator's
    ``clip(rint(get_fdata()), 0, 1) == 1``), read without a float64 copy of the volume."""
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    if np.issubdtype(data.dtype, np.floating):
        return np.rint(data) >= 1
    return data >= 1


def read_pixel_prediction(path: str | Path, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str]:
    """One pixel prediction as the evaluator reads it: ``(array or None, status)``.

    The array is ``get_fdata(dtype=np.float16)`` clipped to [0, 1], of the label's ``shape``.
    ``None`` (all zeros) with status ``"missing"``, ``"unreadable"`` or ``"bad_shape"``.
    """
    if not os.path.exists(path):
        return None, "missing"
    try:
        img = nib.load(str(path))
        if tuple(img.shape) != tuple(shape):
            return None, "bad_shape"
        pred = img.get_fdata(dtype=np.float16)
    except Exception:
        return None, "unreadable"
    np.clip(pred, 0.0, 1.0, out=pred)
    return pred, "ok"


# -- counts per distinct score ---------------------------------------------------------------
@dataclass(frozen=True)
class ScoreCounts:
    """Positive and negative counts per distinct score, scores in *decreasing* order.

    This is all that average precision, ROC and Dice-over-thresholds depend on.
    """

    values: np.ndarray  # (n,) float64, strictly decreasing
    positives: np.ndarray  # (n,) int64
    negatives: np.ndarray  # (n,) int64

    @property
    def n_positive(self) -> int:
        return int(self.positives.sum())

    @property
    def n_total(self) -> int:
        return int(self.positives.sum() + self.negatives.sum())

    @classmethod
    def from_arrays(cls, scores: np.ndarray, labels: np.ndarray) -> "ScoreCounts":
        """From score and label arrays of any equal shape (labels: bool or 0/1)."""
        scores = np.asarray(scores).ravel()
        labels = np.asarray(labels).ravel().astype(bool)
        if scores.shape != labels.shape:
            raise ValueError(f"scores ({scores.size}) and labels ({labels.size}) differ in length")
        if np.isnan(scores).any():
            raise ValueError("scores contain NaN (sklearn, and so the challenge's evaluator, fails on NaN)")
        values, inverse = np.unique(scores, return_inverse=True)
        pos = np.bincount(inverse.ravel(), weights=labels, minlength=values.size).astype(np.int64)
        tot = np.bincount(inverse.ravel(), minlength=values.size).astype(np.int64)
        return cls(values[::-1].astype(np.float64), pos[::-1], (tot - pos)[::-1])


class Float16Histogram:
    """Accumulates positive/negative counts per float16 bit pattern over many volumes."""

    def __init__(self, counts: np.ndarray | None = None) -> None:
        """Empty, or holding ``counts`` (index = bits * 2 + label), e.g. a sum of other histograms' counts."""
        self.counts = np.zeros(2 * N_HALF, dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64)

    def add(self, scores: np.ndarray | None, labels: np.ndarray) -> None:
        """Add one case: ``scores`` float16 (any shape) or None for all zeros; ``labels`` bool."""
        labels = np.asarray(labels, dtype=bool).ravel()
        if scores is None:
            n_pos = int(np.count_nonzero(labels))
            self.counts[1] += n_pos  # bits of +0.0 are 0
            self.counts[0] += labels.size - n_pos
            return
        scores = np.asarray(scores, dtype=np.float16).ravel()
        if scores.size != labels.size:
            raise ValueError(f"scores ({scores.size}) and labels ({labels.size}) differ in length")
        bits = scores.view(np.uint16)
        for start in range(0, bits.size, _CHUNK):
            key = bits[start:start + _CHUNK].astype(np.int64) * 2 + labels[start:start + _CHUNK]
            self.counts += np.bincount(key, minlength=2 * N_HALF)

    def to_counts(self) -> ScoreCounts:
        """Merge bit patterns of equal value (+0.0 and -0.0) and sort by decreasing value."""
        table = self.counts.reshape(N_HALF, 2)
        used = np.flatnonzero(table.sum(axis=1))
        values = np.arange(N_HALF, dtype=np.uint16)[used].view(np.float16).astype(np.float64)
        if np.isnan(values).any():
            raise ValueError("predictions contain NaN (sklearn, and so the challenge's evaluator, fails on NaN)")
        uniq, inverse = np.unique(values, return_inverse=True)
        neg = np.bincount(inverse, weights=table[used, 0], minlength=uniq.size).astype(np.int64)
        pos = np.bincount(inverse, weights=table[used, 1], minlength=uniq.size).astype(np.int64)
        return ScoreCounts(uniq[::-1], pos[::-1], neg[::-1])


# -- metrics from counts ---------------------------------------------------------------------
def average_precision(counts: ScoreCounts) -> float:
    """sklearn's ``average_precision_score``, with its arithmetic step by step.

    (``precision_recall_curve``: cumulative TP/FP per decreasing threshold in float64; precision
    = TP / (TP + FP); recall = TP / TP[-1], or 1 everywhere without positives; reversed, with
    (precision 1, recall 0) appended; AP = max(0, -sum(diff(recall) * precision[:-1])).)
    """
    if counts.values.size == 0:
        return float("nan")
    tps = np.cumsum(counts.positives, dtype=np.float64)
    fps = np.cumsum(counts.negatives, dtype=np.float64)
    ps = tps + fps
    precision = np.where(ps != 0, np.divide(tps, ps, out=np.zeros_like(tps), where=ps != 0), 0.0)
    recall = np.full(tps.shape, 1.0) if tps[-1] == 0 else tps / tps[-1]
    precision = np.concatenate((np.flip(precision), np.asarray([1.0])))
    recall = np.concatenate((np.flip(recall), np.asarray([0.0])))
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def auroc(counts: ScoreCounts) -> float:
    """Area under the ROC curve (ties count one half); NaN unless both classes are present."""
    n_pos, n_neg = counts.n_positive, int(counts.negatives.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    tpr = np.concatenate(([0.0], np.cumsum(counts.positives, dtype=np.float64) / n_pos))
    fpr = np.concatenate(([0.0], np.cumsum(counts.negatives, dtype=np.float64) / n_neg))
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def best_dice(counts: ScoreCounts) -> tuple[float, float]:
    """``(best Dice, threshold)`` over all thresholds ``score >= t`` (pooled over everything).

    Dice = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + P). NaN without positives.
    """
    n_pos = counts.n_positive
    if n_pos == 0 or counts.values.size == 0:
        return float("nan"), float("nan")
    tps = np.cumsum(counts.positives, dtype=np.float64)
    fps = np.cumsum(counts.negatives, dtype=np.float64)
    dice = 2.0 * tps / (tps + fps + n_pos)
    i = int(np.argmax(dice))
    return float(dice[i]), float(counts.values[i])


def summarise(counts: ScoreCounts) -> dict[str, Any]:
    """``ap``, ``auroc``, ``best_dice``, ``best_threshold``, ``n_positive``, ``n_total``."""
    dice, threshold = best_dice(counts)
    return {"ap": average_precision(counts), "auroc": auroc(counts), "best_dice": dice,
            "best_threshold": threshold, "n_positive": counts.n_positive, "n_total": counts.n_total}


# -- folders ---------------------------------------------------------------------------------
def case_names(label_dir: Path) -> list[str]:
    """The cases of a label folder, in the evaluator's order: ``sorted(os.listdir(label_dir))``."""
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise ValueError(f"label folder {label_dir} does not exist")
    return sorted(os.listdir(label_dir))


def _empty_result(names: list[str]) -> dict[str, Any]:
    return {"n_cases": 0, "n_missing": 0, "n_bad_shape": 0, "n_unreadable": 0, "n_skipped": 0,
            "cases": {}, "n_listed": len(names)}


#: case volume name -> names of the groups it counts in
Groups = Mapping[str, Sequence[str]]


def _group_result(summary: dict[str, Any], members: list[str]) -> dict[str, Any]:
    return {**{k: summary[k] for k in ("ap", "auroc", "best_dice", "n_positive", "n_total")},
            "n_cases": len(members), "cases": members}


def sample_metrics(pred_dir: str | Path, label_dir: str | Path, groups: Groups | None = None) -> dict[str, Any]:
    """The sample task's metric for one region, exactly as the challenge's evaluator computes it.

    Args:
        pred_dir: folder with ``<case>.txt`` predictions (e.g. ``toy_0.nii.gz.txt``).
        label_dir: ``toy_label/sample``; every entry is a case.

    Returns:
        ``ap`` (the challenge's score), ``auroc``, ``best_dice`` (best F1 over thresholds),
        ``best_threshold``, ``n_cases`` (scored), ``n_missing``, ``n_bad_shape`` (always 0 here),
        ``n_unreadable`` (unparsable predictions, scored 0), ``n_skipped`` (unreadable labels,
        left out), ``n_positive``, ``n_total`` and ``cases``: ``{name: {"label", "score",
        "status"}}``; with ``groups`` (keyed by volume name, the label's name without ``.txt``) also
        ``groups``: ``{group: {"ap", "auroc", "best_dice", "n_positive", "n_total", "n_cases",
        "cases"}}``.
    """
    names = case_names(Path(label_dir))
    result = _empty_result(names)
    scores, labels = [], []
    for name in names:
        try:
            label = read_sample_label(Path(label_dir) / name)
        except Exception:
            result["n_skipped"] += 1
            result["cases"][name] = {"label": None, "score": None, "status": "label_unreadable"}
            continue
        value, status = read_sample_prediction(Path(pred_dir) / name)
        if np.isnan(value):
            raise ValueError(f"{Path(pred_dir) / name}: prediction is NaN (the challenge's evaluator fails on it)")
        if status != "ok":
            result[f"n_{status}"] += 1
        scores.append(value)
        labels.append(label)
        result["cases"][name] = {"label": label, "score": value, "status": status}
    result["n_cases"] = len(scores)
    if not scores:
        raise ValueError(f"no readable labels in {label_dir}")
    counts = ScoreCounts.from_arrays(np.asarray(scores, dtype=np.float64), np.asarray(labels) == 1)
    result.update(summarise(counts))
    if groups is not None:
        result["groups"] = {}
        scored = [n for n in names if result["cases"][n]["label"] is not None]
        for group in sorted({g for gs in groups.values() for g in gs}):
            members = [n for n in scored if group in groups.get(n.removesuffix(".txt"), ())]
            if members:
                sub = ScoreCounts.from_arrays(np.array([result["cases"][n]["score"] for n in members]),
                                              np.array([result["cases"][n]["label"] == 1 for n in members]))
                result["groups"][group] = _group_result(summarise(sub), members)
    return result


def pixel_metrics(pred_dir: str | Path, label_dir: str | Path, groups: Groups | None = None) -> dict[str, Any]:
    """The pixel task's metric for one region, exactly as the challenge's evaluator computes it.

    Args:
        pred_dir: folder with ``<case>`` NIfTI predictions (e.g. ``toy_0.nii.gz``).
        label_dir: ``toy_label/pixel``; every entry is a case.

    Returns:
        ``ap`` (the challenge's score: all voxels of all cases pooled), ``auroc``, ``best_dice``
        (pooled, best over thresholds), ``best_threshold``, ``n_cases``, ``n_missing``,
        ``n_bad_shape`` (scored as zeros), ``n_unreadable`` (scored as zeros), ``n_skipped``
        (unreadable labels, left out), ``n_positive`` and ``n_total`` (voxels), and ``cases``:
        ``{name: {"status", "n_positive"}}``; with ``groups``, also ``groups`` as in
        :func:`sample_metrics` (each group's voxels pooled over its cases).
    """
    names = case_names(Path(label_dir))
    result = _empty_result(names)
    hist = Float16Histogram()
    group_hists: dict[str, Float16Histogram] = {}
    members: dict[str, list[str]] = {}
    for name in names:
        try:
            label = read_pixel_label(Path(label_dir) / name)
        except Exception:
            result["n_skipped"] += 1
            result["cases"][name] = {"status": "label_unreadable", "n_positive": None}
            continue
        pred, status = read_pixel_prediction(Path(pred_dir) / name, label.shape)
        if pred is not None and np.isnan(pred).any():
            raise ValueError(f"{Path(pred_dir) / name}: prediction contains NaN "
                             "(the challenge's evaluator fails on it)")
        case = Float16Histogram()
        case.add(pred, label)
        hist.counts += case.counts  # a case's counts once, summed into every table it belongs to
        for group in (groups or {}).get(name, ()):
            group_hists.setdefault(group, Float16Histogram()).counts += case.counts
            members.setdefault(group, []).append(name)
        if status != "ok":
            result[f"n_{status}"] += 1
        result["n_cases"] += 1
        result["cases"][name] = {"status": status, "n_positive": int(np.count_nonzero(label))}
        del pred, label
    if result["n_cases"] == 0:
        raise ValueError(f"no readable labels in {label_dir}")
    result.update(summarise(hist.to_counts()))
    if groups is not None:
        result["groups"] = {g: _group_result(summarise(group_hists[g].to_counts()), members[g])
                            for g in sorted(group_hists)}
    return result


__all__ = ["N_HALF", "case_names", "read_sample_label", "read_sample_prediction", "read_pixel_label",
           "read_pixel_prediction", "ScoreCounts", "Float16Histogram", "average_precision", "auroc",
           "best_dice", "summarise", "Groups", "sample_metrics", "pixel_metrics"]
