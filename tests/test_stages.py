"""The picture of what the networks make of a slice: the same numbers the detector computes."""
from __future__ import annotations

import numpy as np
import torch

from mood.method.detector import Detector
from mood.validation.stages import Row, draw_stages, planes_to_draw, stage_images

from conftest import head_phantom


def test_stage_images_are_the_detectors_own(tiny_weights, tmp_path):
    det = Detector.load("brain", tiny_weights, device="cpu")
    vol = head_phantom((40, 36, 20), seed=3)
    label = np.zeros(vol.shape, bool)
    label[10:20, 10:20, 12:15] = True
    label[10:12, 10:12, 5] = True
    assert planes_to_draw(label, 2) == [12, 13]
    assert planes_to_draw(np.zeros_like(label), 2) == [10]  # a normal case: its middle plane
    s = det.slices(vol, n_slices=4)
    i, plane = 1, s.grid.indices[1]
    scores = np.random.default_rng(0).random(vol.shape).astype(np.float32)
    im = stage_images(det, Row("case", vol, scores, label, plane))
    torch.testing.assert_close(torch.from_numpy(im["input"]), s.x[i])
    recon = det.decode(det.encode(s), s.coord)[i]
    torch.testing.assert_close(torch.from_numpy(im["reconstruction"]), recon)
    assert im["restoration"].shape == im["input"].shape and im["pixel"].shape == im["input"].shape
    assert np.isfinite(im["restoration"]).all()
    png = draw_stages(det, [Row("case", vol, scores, label, p) for p in (12, plane)], tmp_path / "s.png", "t")
    assert png.stat().st_size > 5_000
