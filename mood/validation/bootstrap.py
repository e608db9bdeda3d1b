"""How sure a held-out comparison is: the paired case bootstrap of the challenge's metric.

A dozen held-out cases cannot tell a pixel AP of 0.0052 from one of 0.0049, and the difference
between two weights' numbers says nothing until it comes with its spread. This resamples the
*cases* (what varies between data sets), with replacement, separately among the normal and the
anomalous ones so that every resample has both, and recomputes both weights' metrics on the same
resampled cases: the spread of the difference is what the comparison is worth.

The pixel AP of a resample is exact: each case's predictions are kept as counts per float16 value
(:class:`mood.validation.metrics.Float16Histogram`, the evaluator's own reading), and a resample's
table is the sum of its cases' tables, a case drawn twice counted twice.

In: two prediction folders of the same toy set (``validate_weights.py`` writes them) and its
labels, or the case scores read from them and kept (:func:`save_case_scores`). Out: per metric,
both point estimates, the 5th-95th percentile of each and of the difference, and the share of
resamples in which the new weights are ahead.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mood.validation.metrics import (N_HALF, Float16Histogram, ScoreCounts, auroc, average_precision, case_names,
                                     read_pixel_label, read_pixel_prediction, read_sample_label,
                                     read_sample_prediction)


@dataclass(frozen=True)
class CaseScores:
    """One set of predictions, per case, in the order of ``names``.

    ``pixel``: (n_cases, 2 * 65536) int64, each case's counts per float16 bit pattern and label
    (:attr:`Float16Histogram.counts`); ``sample``: (n_cases,) the sample scores; ``anomalous``:
    (n_cases,) bool, the sample labels.
    """

    names: tuple[str, ...]
    pixel: np.ndarray
    sample: np.ndarray
    anomalous: np.ndarray


def read_case_scores(pred_dir: str | Path, label_dir: str | Path) -> CaseScores:
    """Both tasks' predictions of one toy set, read exactly as the evaluator reads them.

    Args:
        pred_dir: holds ``pixel/`` and ``sample/`` predictions (``<out>/<region>`` of ``mood validate``).
        label_dir: the toy set's ``toy_label`` (holding ``pixel/`` and ``sample/``).
    """
    pred_dir, label_dir = Path(pred_dir), Path(label_dir)
    names = tuple(case_names(label_dir / "pixel"))
    pixel, sample, anomalous = [], [], []
    for name in names:
        label = read_pixel_label(label_dir / "pixel" / name)
        pred, _ = read_pixel_prediction(pred_dir / "pixel" / name, label.shape)
        hist = Float16Histogram()
        hist.add(pred, label)
        pixel.append(hist.counts)
        sample.append(read_sample_prediction(pred_dir / "sample" / f"{name}.txt")[0])
        anomalous.append(read_sample_label(label_dir / "sample" / f"{name}.txt") == 1)
    return CaseScores(names, np.stack(pixel), np.asarray(sample, dtype=np.float64), np.asarray(anomalous))


def save_case_scores(path: str | Path, scores: CaseScores, toy_manifest: dict) -> None:
    """Keep one validation's case scores beside its toy set's manifest, so that later comparisons
    need not score those weights again (a few hundred kB: each case's nonzero counts only)."""
    used = [np.flatnonzero(row) for row in scores.pixel]
    np.savez_compressed(path, names=np.array(scores.names), sample=scores.sample, anomalous=scores.anomalous,
                        pixel_index=np.concatenate(used).astype(np.uint32),
                        pixel_count=np.concatenate([row[i] for row, i in zip(scores.pixel, used)]),
                        pixel_offsets=np.cumsum([0] + [i.size for i in used]), manifest=json.dumps(toy_manifest))


def load_case_scores(path: str | Path) -> tuple[CaseScores, dict]:
    """``(case scores, toy manifest)`` as :func:`save_case_scores` kept them."""
    with np.load(path, allow_pickle=False) as f:
        offsets = f["pixel_offsets"]
        pixel = np.zeros((offsets.size - 1, 2 * N_HALF), dtype=np.int64)
        for case, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
            pixel[case, f["pixel_index"][a:b]] = f["pixel_count"][a:b]
        scores = CaseScores(tuple(str(n) for n in f["names"]), pixel, f["sample"], f["anomalous"])
        return scores, json.loads(str(f["manifest"]))


def pixel_ap(scores: CaseScores, cases: np.ndarray) -> float:
    """The challenge's pixel AP over ``cases`` (indices, repeats counted again)."""
    return average_precision(Float16Histogram(scores.pixel[cases].sum(axis=0)).to_counts())


def sample_auroc(scores: CaseScores, cases: np.ndarray) -> float:
    """AUROC of the sample scores over ``cases`` (indices, repeats counted again)."""
    return auroc(ScoreCounts.from_arrays(scores.sample[cases], scores.anomalous[cases]))


#: metric name -> how it is computed from a set of case indices
METRICS: dict[str, Callable[[CaseScores, np.ndarray], float]] = {"pixel_ap": pixel_ap, "sample_auroc": sample_auroc}


def _span(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.percentile(values, (5, 95))]


def paired_bootstrap(new: CaseScores, old: CaseScores, resamples: int = 1000,
                     seed: int = 0) -> dict[str, dict[str, float | list[float]]]:
    """Resample the cases, stratified by label, and score both prediction sets on each resample.

    Returns, per metric of :data:`METRICS`: ``new``, ``old`` (on all cases), ``new_span``,
    ``old_span``, ``difference_span`` (5th and 95th percentile over the resamples; difference =
    new - old) and ``new_ahead`` (share of resamples with new > old; ties count one half).
    """
    if new.names != old.names or not np.array_equal(new.anomalous, old.anomalous):
        raise ValueError("the two prediction sets are not of the same cases")
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(new.anomalous == a) for a in (False, True)]
    drawn = [np.concatenate([rng.choice(s, size=s.size) for s in strata if s.size]) for _ in range(resamples)]
    everything = np.arange(len(new.names))
    result = {}
    for name, metric in METRICS.items():
        a = np.array([metric(new, cases) for cases in drawn])
        b = np.array([metric(old, cases) for cases in drawn])
        result[name] = {"new": metric(new, everything), "old": metric(old, everything),
                        "new_span": _span(a), "old_span": _span(b), "difference_span": _span(a - b),
                        "new_ahead": float(np.mean(a > b) + 0.5 * np.mean(a == b))}
    return result


__all__ = ["CaseScores", "read_case_scores", "save_case_scores", "load_case_scores", "pixel_ap", "sample_auroc",
           "METRICS", "paired_bootstrap"]
