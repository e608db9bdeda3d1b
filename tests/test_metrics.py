"""The challenge's metric: hand-computed cases, the evaluator's missing/shape rules, sklearn equality."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from mood.validation.metrics import (Float16Histogram, ScoreCounts, average_precision, auroc, best_dice,
                          pixel_metrics, read_pixel_label, read_pixel_prediction,
                          read_sample_prediction, sample_metrics)


def _write_nifti(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4)), str(path))


def _sample_layout(tmp_path: Path, labels: dict[str, int], preds: dict[str, str]) -> tuple[Path, Path]:
    label_dir, pred_dir = tmp_path / "toy_label" / "sample", tmp_path / "pred"
    label_dir.mkdir(parents=True)
    pred_dir.mkdir()
    for name, value in labels.items():
        (label_dir / name).write_text(f"{value}\n")
    for name, text in preds.items():
        (pred_dir / name).write_text(text)
    return pred_dir, label_dir


# -- hand-computed ---------------------------------------------------------------------------
def test_average_precision_hand_computed():
    # ranking: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    counts = ScoreCounts.from_arrays(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0]))
    assert average_precision(counts) == pytest.approx(5 / 6)
    assert auroc(counts) == pytest.approx(0.75)
    dice, threshold = best_dice(counts)
    assert dice == pytest.approx(0.8)  # t = 0.7: TP 2, FP 1 -> 4 / 5
    assert threshold == pytest.approx(0.7)


def test_ties_hurt_average_precision():
    # all tied: AP = fraction of positives, whatever the order
    counts = ScoreCounts.from_arrays(np.array([0.5, 0.5, 0.5, 0.5]), np.array([1, 0, 0, 0]))
    assert average_precision(counts) == pytest.approx(0.25)
    assert auroc(counts) == pytest.approx(0.5)


def test_sample_metrics_hand_computed_with_missing_and_unreadable(tmp_path):
    labels = {"a.nii.gz.txt": 1, "b.nii.gz.txt": 0, "c.nii.gz.txt": 1, "d.nii.gz.txt": 0}
    # a: 0.9; b: 1.7 -> clipped to 1; c: missing -> 0; d: junk -> 0
    preds = {"a.nii.gz.txt": "0.9\n", "b.nii.gz.txt": "1.7", "d.nii.gz.txt": "zero point one"}
    pred_dir, label_dir = _sample_layout(tmp_path, labels, preds)
    r = sample_metrics(pred_dir, label_dir)
    # ranking: b (1.0, neg), a (0.9, pos), then c and d tied at 0 (pos, neg)
    # precision/recall steps: @1.0 P=0 R=0; @0.9 P=1/2 R=1/2; @0 P=2/4 R=1 -> AP = 1/2*1/2 + 1/2*1/2
    assert r["ap"] == pytest.approx(0.5)
    assert r["ap"] == average_precision_score([1, 0, 1, 0], [0.9, 1.0, 0.0, 0.0])
    assert (r["n_cases"], r["n_missing"], r["n_unreadable"], r["n_bad_shape"]) == (4, 1, 1, 0)
    assert r["cases"]["b.nii.gz.txt"]["score"] == 1.0
    assert r["auroc"] == pytest.approx(roc_auc_score([1, 0, 1, 0], [0.9, 1.0, 0.0, 0.0]))


def test_sample_unreadable_label_is_left_out(tmp_path):
    pred_dir, label_dir = _sample_layout(tmp_path, {"a.txt": 1, "b.txt": 0}, {"a.txt": "0.2", "b.txt": "0.1"})
    (label_dir / "c.txt").write_text("not a label")
    r = sample_metrics(pred_dir, label_dir)
    assert r["n_skipped"] == 1 and r["n_cases"] == 2 and r["ap"] == 1.0


def test_sample_nan_prediction_raises(tmp_path):
    pred_dir, label_dir = _sample_layout(tmp_path, {"a.txt": 1, "b.txt": 0}, {"a.txt": "nan", "b.txt": "0.1"})
    with pytest.raises(ValueError, match="NaN"):
        sample_metrics(pred_dir, label_dir)


def test_read_sample_prediction_statuses(tmp_path):
    assert read_sample_prediction(tmp_path / "none.txt") == (0.0, "missing")
    (tmp_path / "x.txt").write_text("-3")
    assert read_sample_prediction(tmp_path / "x.txt") == (0.0, "ok")


def test_missing_label_folder_raises(tmp_path):
    with pytest.raises(ValueError, match="label folder"):
        sample_metrics(tmp_path, tmp_path / "nope")
    with pytest.raises(ValueError, match="label folder"):
        pixel_metrics(tmp_path, tmp_path / "nope")


# -- pixel -----------------------------------------------------------------------------------
def _pixel_layout(tmp_path: Path) -> tuple[Path, Path, list[np.ndarray], list[np.ndarray]]:
    """Four 6x5x4 cases: ok, missing, wrong shape, unreadable. Returns what the evaluator sees."""
    rng = np.random.default_rng(3)
    label_dir, pred_dir = tmp_path / "toy_label" / "pixel", tmp_path / "pred"
    label_dir.mkdir(parents=True)
    pred_dir.mkdir()
    shape = (6, 5, 4)
    seen_scores, seen_labels = [], []
    for i, status in enumerate(["ok", "missing", "bad_shape", "unreadable"]):
        name = f"toy_{i}.nii.gz"
        label = (rng.random(shape) < 0.3).astype(np.uint8)
        _write_nifti(label_dir / name, label)
        pred = (rng.random(shape) * 1.4 - 0.2).astype(np.float32)  # some values outside [0, 1]
        if status == "ok":
            _write_nifti(pred_dir / name, pred)
            seen = np.clip(pred.astype(np.float16), 0, 1)
        else:
            if status == "bad_shape":
                _write_nifti(pred_dir / name, pred[:, :, :3])
            elif status == "unreadable":
                (pred_dir / name).write_bytes(b"not a nifti at all")
            seen = np.zeros(shape, dtype=np.float16)
        seen_scores.append(seen.ravel())
        seen_labels.append(label.ravel() == 1)
    return pred_dir, label_dir, seen_scores, seen_labels


def test_pixel_metrics_rules_and_sklearn_equality(tmp_path):
    pred_dir, label_dir, scores, labels = _pixel_layout(tmp_path)
    r = pixel_metrics(pred_dir, label_dir)
    assert (r["n_cases"], r["n_missing"], r["n_bad_shape"], r["n_unreadable"]) == (4, 1, 1, 1)
    y_true, y_score = np.concatenate(labels), np.concatenate(scores)
    assert r["ap"] == average_precision_score(y_true, y_score)  # exact, not approximate
    assert r["auroc"] == pytest.approx(roc_auc_score(y_true, y_score), abs=1e-12)
    assert r["n_total"] == y_true.size and r["n_positive"] == int(y_true.sum())


def test_groups_score_each_group_like_the_whole_set(tmp_path):
    """A group is scored exactly as the whole set would be if it held only the group's cases."""
    pred_dir, label_dir, scores, labels = _pixel_layout(tmp_path / "pixel")
    groups = {"toy_0.nii.gz": ["g1", "g2"], "toy_2.nii.gz": ["g1"], "toy_3.nii.gz": ["g2"]}  # toy_1: none
    r = pixel_metrics(pred_dir, label_dir, groups)
    assert sorted(r["groups"]) == ["g1", "g2"]
    for g, idx in (("g1", [0, 2]), ("g2", [0, 3])):
        y_true = np.concatenate([labels[i] for i in idx])
        y_score = np.concatenate([scores[i] for i in idx])
        assert r["groups"][g]["ap"] == average_precision_score(y_true, y_score)
        assert r["groups"][g]["n_cases"] == 2 and r["groups"][g]["n_total"] == y_true.size
    assert r["ap"] != r["groups"]["g1"]["ap"]  # the whole set is not a group
    assert "groups" not in pixel_metrics(pred_dir, label_dir)

    labels_s = {"a.nii.gz.txt": 1, "b.nii.gz.txt": 0, "c.nii.gz.txt": 1, "d.nii.gz.txt": 0}
    preds_s = {"a.nii.gz.txt": "0.9", "b.nii.gz.txt": "0.5", "c.nii.gz.txt": "0.2", "d.nii.gz.txt": "0.3"}
    pred_dir, label_dir = _sample_layout(tmp_path / "sample", labels_s, preds_s)
    r = sample_metrics(pred_dir, label_dir, {"a.nii.gz": ["kind x"], "c.nii.gz": ["kind y"],
                                             "b.nii.gz": ["kind x", "kind y"], "d.nii.gz": ["kind x", "kind y"]})
    assert r["groups"]["kind x"]["ap"] == 1.0 and r["groups"]["kind x"]["auroc"] == 1.0  # 0.9 above 0.5, 0.3
    assert r["groups"]["kind y"]["auroc"] == 0.0  # 0.2 below both normals
    assert r["groups"]["kind y"]["ap"] == average_precision_score([0, 1, 0], [0.5, 0.2, 0.3])
    assert r["groups"]["kind x"]["cases"] == ["a.nii.gz.txt", "b.nii.gz.txt", "d.nii.gz.txt"]


def test_pixel_label_reading_matches_evaluator(tmp_path):
    values = np.array([[[-1.0, 0.2, 0.5, 0.51, 0.9, 1.0, 1.49, 1.5, 7.0]]], dtype=np.float32)
    _write_nifti(tmp_path / "l.nii.gz", values)
    ours = read_pixel_label(tmp_path / "l.nii.gz")
    theirs = np.clip(np.rint(nib.load(str(tmp_path / "l.nii.gz")).get_fdata()).astype(int), 0, 1) == 1
    np.testing.assert_array_equal(ours, theirs)


def test_read_pixel_prediction_is_float16_clipped(tmp_path):
    _write_nifti(tmp_path / "p.nii.gz", np.array([[[0.1234567, 2.0, -1.0]]], dtype=np.float32))
    pred, status = read_pixel_prediction(tmp_path / "p.nii.gz", (1, 1, 3))
    assert status == "ok" and pred.dtype == np.float16
    np.testing.assert_array_equal(pred, np.array([[[np.float16(0.1234567), 1.0, 0.0]]], dtype=np.float16))


def test_float16_histogram_ap_equals_sklearn_exactly():
    rng = np.random.default_rng(0)
    hist = Float16Histogram()
    all_scores, all_labels = [], []
    for _ in range(3):
        labels = rng.random(20_000) < 0.05
        # many ties (float16), -0.0 and +0.0 both present, scores correlated with labels
        scores = np.clip(rng.normal(0.2 + 0.3 * labels, 0.15), 0, 1).astype(np.float16)
        scores[:50] = np.float16(-0.0)
        hist.add(scores, labels)
        all_scores.append(scores)
        all_labels.append(labels)
    hist.add(None, np.ones(100, dtype=bool))  # a missing case: zeros
    all_scores.append(np.zeros(100, dtype=np.float16))
    all_labels.append(np.ones(100, dtype=bool))
    y_score, y_true = np.concatenate(all_scores), np.concatenate(all_labels)
    counts = hist.to_counts()
    assert average_precision(counts) == average_precision_score(y_true, y_score)
    assert auroc(counts) == pytest.approx(roc_auc_score(y_true, y_score), abs=1e-12)
    precision, recall, _ = precision_recall_curve(y_true, y_score)
    with np.errstate(invalid="ignore"):
        dice_ref = np.nanmax(2 * precision * recall / (precision + recall))  # Dice == F1
    assert best_dice(counts)[0] == pytest.approx(dice_ref)


def test_no_positives_follows_sklearn():
    scores, labels = np.array([0.3, 0.2, 0.2]), np.zeros(3, dtype=bool)
    counts = ScoreCounts.from_arrays(scores, labels)
    with pytest.warns(UserWarning):
        expected = average_precision_score(labels, scores)
    assert average_precision(counts) == expected
    assert np.isnan(auroc(counts)) and np.isnan(best_dice(counts)[0])


def test_pixel_nan_prediction_raises(tmp_path):
    label_dir, pred_dir = tmp_path / "l", tmp_path / "p"
    label_dir.mkdir()
    pred_dir.mkdir()
    _write_nifti(label_dir / "a.nii.gz", np.ones((2, 2, 2), dtype=np.uint8))
    _write_nifti(pred_dir / "a.nii.gz", np.full((2, 2, 2), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        pixel_metrics(pred_dir, label_dir)
