"""The picture of what the networks make of a slice: the same numbers the detector computes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mood.detection.detector import Detector
from mood.common.slicing import cell_share
from mood.validation.stages import (Row, body_encodings, coded, context_gain, draw_stages, encoder_view, nearest_normal,
                                    nll_on_anomaly, planes_to_draw, restoration_on_normal, rise_over_clean, stage_images,
                                    surprise_on_anomaly)

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


def test_restoration_on_normal_counts_what_the_threshold_lets_the_prior_replace(tiny_weights):
    det = Detector.load("brain", tiny_weights, device="cpu")
    vol = head_phantom((40, 36, 20), seed=4)
    s = det.slices(vol, n_slices=4)
    codes = det.encode(s)
    nll = det.code_nll(codes, s.coord)
    recon_fg = float((s.x - det.decode(codes, s.coord)).abs()[s.x != 0].double().mean())

    def measured(lambda_p: float) -> dict[str, float]:
        return restoration_on_normal(det.with_card(dataclasses.replace(det.card, lambda_p=lambda_p)), vol,
                                     n_slices=4, restorations=2)

    never = measured(float(nll.max()) + 1.0)  # nothing above the threshold: nothing is replaced
    assert never["above_threshold"] == 0.0 and never["changed"] == 0.0
    assert never["recon_fg"] == pytest.approx(recon_fg, rel=1e-6)
    assert never["restoration_fg"] == pytest.approx(recon_fg, rel=1e-5)
    median = float(nll.median())
    some = measured(median)
    assert some["above_threshold"] == pytest.approx(float((nll > median).double().mean()))
    assert 0.0 < some["changed"] <= 1.0 and some["restoration_fg"] != pytest.approx(recon_fg)


def test_nll_on_anomaly_splits_the_codes_by_label_and_body(tiny_weights):
    det = Detector.load("brain", tiny_weights, device="cpu")
    vol = head_phantom((40, 36, 20), seed=5)
    s = det.slices(vol, n_slices=4)
    nll = det.code_nll(det.encode(s), s.coord).double()
    label = np.zeros(vol.shape, bool)
    label[:, :, s.grid.indices[1]] = True  # the whole of the second scored plane
    anomalous, normal = nll_on_anomaly(det, vol, label, n_slices=4)
    torch.testing.assert_close(anomalous, nll[1].flatten())
    others = set(nll[[0, 2, 3]].flatten().tolist())
    assert len(normal) > 0 and set(normal.tolist()) <= others
    none, all_normal = nll_on_anomaly(det, vol, np.zeros_like(label), n_slices=4)
    assert len(none) == 0 and len(all_normal) > len(normal)  # the second plane's body joins the normal cells
    assert len(all_normal) < nll.numel()  # background cells are neither


def _swapped_plane(weights):
    """(detector, a clean head, the same head with its second scored plane taken from another head,
    the label of that plane, the clean head's slices)."""
    det = Detector.load("brain", weights, device="cpu")
    clean = head_phantom((40, 36, 20), seed=5)
    s = det.slices(clean, n_slices=4)
    label = np.zeros(clean.shape, bool)
    label[:, :, s.grid.indices[1]] = True  # the whole of the second scored plane
    vol = clean.copy()
    vol[..., s.grid.indices[1]] = head_phantom((40, 36, 20), seed=9)[..., s.grid.indices[1]]  # another head's plane
    return det, clean, vol, label, s


def test_rise_over_clean_compares_each_cell_with_the_clean_volumes(tiny_weights):
    det, clean, vol, label, s = _swapped_plane(tiny_weights)
    rise, normal_rise, changed = rise_over_clean(det, clean, clean, label, n_slices=4)
    assert len(rise) and not rise.any() and not normal_rise.any() and changed == 0.0  # nothing changed
    rise, normal_rise, changed = rise_over_clean(det, vol, clean, label, n_slices=4)
    t = det.slices(vol, n_slices=4)
    codes, clean_codes = det.encode(t), det.encode(s)
    expected = (det.code_nll(codes, t.coord) - det.code_nll(clean_codes, s.coord)).double()
    torch.testing.assert_close(rise, expected[1].flatten())
    assert changed == pytest.approx(float((codes[1] != clean_codes[1]).double().mean())) and changed > 0
    assert len(normal_rise) == len(nll_on_anomaly(det, vol, label, n_slices=4)[1])  # the same normal cells


def test_encoder_view_measures_each_cells_encoding_against_the_clean_ones_and_its_code(tiny_weights):
    det, clean, vol, label, s = _swapped_plane(tiny_weights)
    same = encoder_view(det, clean, clean, label, n_slices=4)
    assert len(same["shift"][0]) and not same["shift"][0].any() and not same["shift"][1].any()  # nothing moved
    view = encoder_view(det, vol, clean, label, n_slices=4)
    q, q_clean = det.vqvae.encode(det.slices(vol, n_slices=4).x, s.coord), det.vqvae.encode(s.x, s.coord)
    torch.testing.assert_close(view["shift"][0], (q.encodings - q_clean.encodings)[1].norm(dim=0).flatten().double())
    assert view["shift"][0].min() > 0  # every cell of the replaced plane moved
    residual = (q.encodings - det.vqvae.codebook(q.codes).permute(0, 3, 1, 2)).norm(dim=1)
    torch.testing.assert_close(view["residual"][0], residual[1].flatten().double())
    # the normal cells are nll_on_anomaly's, and the residual is the distance to the nearest code: no code is nearer
    assert len(view["residual"][1]) == len(nll_on_anomaly(det, vol, label, n_slices=4)[1])
    nearest = torch.cdist(q.encodings.permute(0, 2, 3, 1).reshape(-1, q.encodings.shape[1]), det.vqvae.codebook.weight).min(1).values
    torch.testing.assert_close(residual.flatten(), nearest, rtol=1e-4, atol=1e-4)


def test_nearest_normal_is_each_cells_distance_to_the_banks_nearest_encoding(tiny_weights):
    det, clean, vol, label, s = _swapped_plane(tiny_weights)
    bank = body_encodings(det, clean, n_slices=4)
    z = coded(det, clean, n_slices=4).encodings
    assert bank.shape[1] == z.shape[1] and 0 < len(bank) < z[:, 0].numel()  # the body's cells, not the background's
    anomalous, normal = nearest_normal(det, vol, label, bank, n_slices=4)
    assert len(normal) == len(nll_on_anomaly(det, vol, label, n_slices=4)[1])
    assert normal.max() < 0.01  # unchanged cells are in the bank (cdist's matrix product leaves ~1e-3 of rounding)
    z_vol = coded(det, vol, n_slices=4).encodings[1].permute(1, 2, 0).reshape(-1, z.shape[1])
    torch.testing.assert_close(anomalous, torch.cdist(z_vol, bank).min(1).values.double(), atol=1e-4, rtol=1e-4)  # the replaced plane
    assert anomalous.median() > 0.1
    # the case's cells compared with the bank in small chunks give the same distances
    torch.testing.assert_close(nearest_normal(det, vol, label, bank, n_slices=4, chunk=7)[0], anomalous, atol=1e-3, rtol=1e-3)


def test_surprise_is_each_codes_nll_less_what_the_prior_expected_at_its_cell(tiny_weights):
    det = Detector.load("brain", tiny_weights, device="cpu")
    vol = head_phantom((40, 36, 20), seed=4)
    s = det.slices(vol, n_slices=4)
    label = np.zeros(vol.shape, bool)
    label[:, :, s.grid.indices[1]] = True  # the whole of the second scored plane
    surprise = surprise_on_anomaly(det, vol, label, n_slices=4)
    codes = det.encode(s)
    p = torch.softmax(det.prior(codes, s.coord).float(), dim=1)
    expected = det.code_nll(codes, s.coord) + (p * p.log()).sum(1)  # NLL less the prediction's entropy
    torch.testing.assert_close(surprise[0], expected[1].flatten().double(), rtol=1e-4, atol=1e-4)
    nll = nll_on_anomaly(det, vol, label, n_slices=4)
    assert len(surprise[1]) == len(nll[1]) and (surprise[1] < nll[1]).all()  # the same body cells, less their entropy
    # a prior that predicts every code alike expects exactly what it pays: no surprise anywhere
    det.prior = lambda c, coord: torch.zeros(len(c), det.config.prior.n_codes, *c.shape[1:])
    for flat in surprise_on_anomaly(det, vol, label, n_slices=4):
        torch.testing.assert_close(flat, torch.zeros_like(flat), atol=1e-5, rtol=0)


def test_context_gain_is_zero_for_a_prior_that_knows_only_the_code_frequencies(tiny_weights):
    det = Detector.load("brain", tiny_weights, device="cpu")
    vol = head_phantom((40, 36, 20), seed=6)
    measured = context_gain(det, vol, n_slices=4)
    assert measured["gain"] == pytest.approx(measured["unigram"] - measured["nll"])
    s = det.slices(vol, n_slices=4)
    codes = det.encode(s)
    _, body_nll = nll_on_anomaly(det, vol, np.zeros(vol.shape, bool), n_slices=4)  # the same body cells
    assert measured["nll"] == pytest.approx(float(body_nll.mean()))
    # a prior whose logits are the log-frequencies of the body's codes pays exactly their entropy
    cells = cell_share(s.x != 0, codes.shape[-1]) > 0.5
    freq = torch.bincount(codes[cells], minlength=det.config.prior.n_codes).double() / cells.sum()
    assert len(body_nll) == int(cells.sum())
    log_freq = freq.clamp_min(1e-300).log().float()
    det.prior = lambda c, coord: log_freq.view(1, -1, 1, 1).expand(len(c), -1, *c.shape[1:]).contiguous()
    unigram = context_gain(det, vol, n_slices=4)
    assert unigram["gain"] == pytest.approx(0.0, abs=1e-4) and unigram["unigram"] == pytest.approx(measured["unigram"])


def test_readings_of_coded_volumes_are_the_volumes_own(tiny_weights):
    """Encoded once, a volume reads the same under any prior: the codes are the frozen VQ-VAE's."""
    det = Detector.load("brain", tiny_weights, device="cpu")
    clean = head_phantom((40, 36, 20), seed=7)
    vol = clean.copy()
    vol[8:20, 8:20, :] *= 1.5
    label = np.zeros(vol.shape, bool)
    label[8:20, 8:20, :] = True
    c, c_clean = coded(det, vol, n_slices=4), coded(det, clean, n_slices=4)
    assert coded(det, c) is c
    torch.testing.assert_close(c.codes, det.encode(det.slices(vol, n_slices=4)))
    for a, b in zip(encoder_view(det, c, c_clean, label)["residual"], encoder_view(det, vol, clean, label, n_slices=4)["residual"]):
        torch.testing.assert_close(a, b)
    for a, b in zip(nll_on_anomaly(det, c, label), nll_on_anomaly(det, vol, label, n_slices=4)):
        torch.testing.assert_close(a, b)
    for a, b in zip(rise_over_clean(det, c, c_clean, label)[:2], rise_over_clean(det, vol, clean, label, n_slices=4)[:2]):
        torch.testing.assert_close(a, b)
    assert context_gain(det, c_clean) == pytest.approx(context_gain(det, clean, n_slices=4))
