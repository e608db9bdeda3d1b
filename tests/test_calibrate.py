"""Calibration writes thresholds and score maps into the card."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mood.training.calibrate import calibrate
from mood.training import init_weights
from mood.detection.weights import read_card


def _head(seed: int, shape=(40, 40, 24)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    r = np.sqrt((z ** 2).sum(0))
    return np.clip(np.where(r < 0.8, 0.5 + 0.05 * rng.standard_normal(shape), 0.0), 0, 1).astype(np.float32)


def _holdout_and_weights(tmp_path, monkeypatch):
    """Two holdout volumes (used as they are: conversion is tested elsewhere) and tiny weights."""
    import mood.training.calibrate as cal

    monkeypatch.setattr(cal, "ensure_challenge_form",
                        lambda path, region: (np.asarray(nib.load(str(path)).dataobj, dtype=np.float32), None))
    data = tmp_path / "holdout"
    data.mkdir()
    for i in range(2):
        nib.save(nib.Nifti1Image(_head(i), np.eye(4)), str(data / f"n{i}.nii.gz"))
    return data, init_weights("brain", tmp_path / "w", tiny=True, seed=0)


def test_calibrate_writes_card(tmp_path, monkeypatch):
    data, weights = _holdout_and_weights(tmp_path, monkeypatch)
    assert read_card(weights).lambda_s is None
    card = calibrate("brain", data, weights, device="cpu", n_slices=3, restorations=2, seed=0)
    again = read_card(weights)
    assert again.lambda_s == pytest.approx(card.lambda_s) and again.lambda_p == pytest.approx(card.lambda_p)
    assert again.lambda_s >= again.lambda_p > 0
    assert again.sample_map.scale > 0 and again.pixel_map.scale > 0
    cal_info = again.info["calibration"]
    assert set(cal_info) == {"localiser", "lsr", "seconds"}  # init_weights holds both methods' networks
    for part in ("localiser", "lsr"):
        assert cal_info[part]["files"] == ["n0.nii.gz", "n1.nii.gz"] and cal_info[part]["seed"] == 0
    assert cal_info["lsr"]["sample"]["mapped_max"] <= 0.5
    assert cal_info["lsr"]["lambda_s"]["value"] == pytest.approx(again.lambda_s)
    assert again.info["random_init"]  # earlier provenance kept
    with pytest.raises(ValueError, match="at least 3"):
        calibrate("brain", data, weights, device="cpu", n_slices=2)


def test_calibration_uses_the_detectors_public_stages_once_per_volume(tmp_path, monkeypatch):
    """Thresholds and the sample map share one pass over each volume's scored slices; the pixel
    map a second one at ``n_slices``; the loaded detector's card is never changed in place."""
    from mood.detection.detector import Detector

    data, weights = _holdout_and_weights(tmp_path, monkeypatch)
    calls, cards = [], []
    slices, load = Detector.slices, Detector.load.__func__

    def counted(self, volume, n_slices=None, size=None):
        calls.append((n_slices, size))
        return slices(self, volume, n_slices, size)

    def loaded(cls, *args, **kwargs):
        det = load(cls, *args, **kwargs)
        cards.append((det.card, det.card.lambda_s))
        return det

    monkeypatch.setattr(Detector, "slices", counted)
    monkeypatch.setattr(Detector, "load", classmethod(loaded))
    card = calibrate("brain", data, weights, device="cpu", n_slices=3, restorations=1, seed=0)
    # LSR: the thresholds' pass (the card's slices) and the pixel pass (n_slices), each volume once;
    # the localiser: every one of each volume's 24 planes at its own image size, once per volume
    size = read_card(weights).config.localiser.image_size
    assert sorted(calls, key=str) == [(24, size), (24, size), (3, None), (3, None), (None, None), (None, None)]
    (original, before), = cards
    assert original.lambda_s == before is None and card is not original


def test_score_maps_are_fitted_in_scoring():
    from mood.common.maps import ScoreMap, fit_pixel_map, fit_sample_map

    assert fit_sample_map([1.0, 2.5], margin=2.0) == ScoreMap(5.0)
    assert fit_sample_map([0.0, 0.0], margin=2.0) == ScoreMap(1.0)  # all normal scores 0: identity scale
    assert fit_pixel_map(np.arange(101.0), 90.0) == ScoreMap(90.0)
    assert fit_pixel_map(np.zeros(0), 90.0) == ScoreMap(1.0)


def test_calibrate_fits_the_localisers_sample_map(tmp_path, monkeypatch):
    """With a localiser in the weights, its sample map's scale is ``margin`` times the largest of
    its sample statistics on the normal volumes (every plane), and those raw values are recorded;
    calibrating one method keeps the other's calibration."""
    from mood.localiser import sample_statistic
    from mood.detection.detector import Detector

    data, weights = _holdout_and_weights(tmp_path, monkeypatch)
    det = Detector.load("brain", weights, "cpu")
    expected = [sample_statistic(det.localiser_raw(_head(i))[0]) for i in range(2)]
    assert min(expected) > 0

    card = calibrate("brain", data, weights, device="cpu", parts=("localiser",), sample_margin=3.0)
    again = read_card(weights)
    assert again.localiser_sample_map.scale == pytest.approx(3.0 * max(expected), rel=1e-5)
    assert again.localiser_sample_map.scale == card.localiser_sample_map.scale > 0
    loc = again.info["calibration"]["localiser"]
    assert loc["files"] == ["n0.nii.gz", "n1.nii.gz"]
    assert loc["sample"]["raw"] == pytest.approx(expected, abs=1e-6)
    assert loc["sample"]["scale"] == again.localiser_sample_map.scale and loc["sample"]["margin"] == 3.0
    assert "lsr" not in again.info["calibration"] and again.lambda_s is None  # LSR left as it was
    # the detector scores with the fitted map: a normal volume's sample score below 1 / (1 + margin)
    fitted = Detector.load("brain", weights, "cpu")
    assert fitted.localiser_sample(_head(0)) == pytest.approx(expected[0] / (expected[0] + 3.0 * max(expected)))
    assert fitted.localiser_sample(_head(0)) <= 1 / 4 + 1e-9

    calibrate("brain", data, weights, device="cpu", n_slices=3, restorations=1, parts=("lsr",))
    both = read_card(weights)
    assert both.lambda_s is not None and both.localiser_sample_map == again.localiser_sample_map
    assert both.info["calibration"]["localiser"] == loc  # the earlier part kept
    assert both.info["calibration"]["lsr"]["files"] == ["n0.nii.gz", "n1.nii.gz"]


def test_calibrate_sets_the_localisers_smoothing_before_fitting_its_map(tmp_path, monkeypatch):
    """``slice_sigma`` goes into the card's config, the sample map is fitted on the smoothed
    probabilities, and a later calibration without it keeps it."""
    from dataclasses import replace

    from mood.detection.detector import Detector
    from mood.localiser import sample_statistic, smooth_across_slices

    data, weights = _holdout_and_weights(tmp_path, monkeypatch)
    det = Detector.load("brain", weights, "cpu")
    sigma_planes = 40.0 * 24 / det.config.challenge_shape[2]  # 24 planes of a 256-plane field of view
    expected = [sample_statistic(smooth_across_slices(det.localiser_raw(_head(i))[0], sigma_planes)) for i in range(2)]
    with pytest.raises(ValueError, match="slice_sigma"):
        calibrate("brain", data, weights, device="cpu", parts=("localiser",), slice_sigma=-1.0)
    card = calibrate("brain", data, weights, device="cpu", parts=("localiser",), slice_sigma=40.0, sample_margin=2.0)
    assert card.config.localiser.slice_sigma == 40.0 == read_card(weights).config.localiser.slice_sigma
    assert card.info["calibration"]["localiser"]["slice_sigma"] == 40.0
    assert card.localiser_sample_map.scale == pytest.approx(2.0 * max(expected), rel=1e-5)
    unsmoothed = max(sample_statistic(det.localiser_raw(_head(i))[0]) for i in range(2))
    assert card.localiser_sample_map.scale != pytest.approx(2.0 * unsmoothed, rel=1e-5)
    # the architecture is unchanged: the same networks load under the new card
    assert replace(card.config, localiser=replace(card.config.localiser, slice_sigma=0.0)) == det.config
    again = calibrate("brain", data, weights, device="cpu", parts=("localiser",))
    assert again.config.localiser.slice_sigma == 40.0


def test_calibrate_a_folder_holding_only_a_localiser(tmp_path, monkeypatch):
    """A localiser-only folder calibrates the localiser; asked for LSR alone it says it has none."""
    data, weights = _holdout_and_weights(tmp_path, monkeypatch)
    for shard in [*weights.glob("vqvae-*.safetensors"), *weights.glob("prior-*.safetensors")]:
        shard.unlink()
    before = (weights / "card.json").read_text()
    with pytest.raises(ValueError, match="hold none of the networks of lsr"):
        calibrate("brain", data, weights, device="cpu", parts=("lsr",))
    assert (weights / "card.json").read_text() == before  # nothing written
    calibrate("brain", data, weights, device="cpu")
    card = read_card(weights)
    assert set(card.info["calibration"]) == {"localiser", "seconds"}
    assert card.localiser_sample_map.scale > 0 and card.lambda_s is None
