"""Calibration writes thresholds and score maps into the card."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mood.calibrate import calibrate
from mood.train import init_weights
from mood.weights import read_card


def _head(seed: int, shape=(40, 40, 24)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    r = np.sqrt((z ** 2).sum(0))
    return np.clip(np.where(r < 0.8, 0.5 + 0.05 * rng.standard_normal(shape), 0.0), 0, 1).astype(np.float32)


def test_calibrate_writes_card(tmp_path, monkeypatch):
    import mood.calibrate as cal

    # conversion is tested elsewhere; here the holdout volumes are used as they are
    monkeypatch.setattr(cal, "ensure_challenge_form",
                        lambda path, region: (np.asarray(nib.load(str(path)).dataobj, dtype=np.float32), None))
    data = tmp_path / "holdout"
    data.mkdir()
    for i in range(2):
        nib.save(nib.Nifti1Image(_head(i), np.eye(4)), str(data / f"n{i}.nii.gz"))
    weights = init_weights("brain", tmp_path / "w", tiny=True, seed=0)
    assert read_card(weights).lambda_s is None
    card = calibrate("brain", data, weights, device="cpu", n_slices=3, restorations=2, seed=0)
    again = read_card(weights)
    assert again.lambda_s == pytest.approx(card.lambda_s) and again.lambda_p == pytest.approx(card.lambda_p)
    assert again.lambda_s >= again.lambda_p > 0
    assert again.sample_map.scale > 0 and again.pixel_map.scale > 0
    cal_info = again.info["calibration"]
    assert cal_info["files"] == ["n0.nii.gz", "n1.nii.gz"]
    assert cal_info["sample"]["mapped_max"] <= 0.5
    assert again.info["random_init"]  # earlier provenance kept
    with pytest.raises(ValueError, match="at least 3"):
        calibrate("brain", data, weights, device="cpu", n_slices=2)
