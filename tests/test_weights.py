"""Weights I/O: safetensors + JSON card round trip, and clear refusals."""
from __future__ import annotations

import json

import pytest
import torch

from mood.config import tiny_preset
from mood.detection.detector import Detector, resolve_weights
from mood.lsr.networks import VQVAE, PixelSNAIL
from mood.common.maps import ScoreMap
from mood.detection.weights import MAX_SHARD_BYTES, Card, WeightsError, load_prior, load_vqvae, read_card, save_models

from conftest import make_weights


def test_round_trip(tmp_path):
    d = make_weights(tmp_path, "brain", lambda_s=6.5, lambda_p=4.5,
                     sample_map=ScoreMap(123.0), pixel_map=ScoreMap(0.7))
    card = read_card(d)
    assert (card.threshold_sample, card.threshold_pixel) == (6.5, 4.5)
    assert card.sample_map.scale == 123.0 and card.pixel_map.scale == 0.7
    assert card.config == tiny_preset("brain")
    torch.manual_seed(0)
    ref_vq, ref_prior = VQVAE(card.config.vqvae).eval(), PixelSNAIL(card.config.prior).eval()
    vq, prior = load_vqvae(d), load_prior(d)
    for a, b in zip(ref_vq.state_dict().values(), vq.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ref_prior.state_dict().values(), prior.state_dict().values()):
        assert torch.equal(a, b)
    assert not list(d.glob("*.pt")) and not list(d.glob("*.pth")) and not list(d.glob("*.bin"))


def test_defaults_when_card_has_no_thresholds(tmp_path):
    card = read_card(make_weights(tmp_path, "abdom"))
    assert (card.threshold_sample, card.threshold_pixel) == (7.0, 5.0)


def test_fp16_storage_and_shards(tmp_path, monkeypatch):
    monkeypatch.setattr("mood.detection.weights.MAX_SHARD_BYTES", 20_000)
    cfg = tiny_preset("brain")
    vq, prior = VQVAE(cfg.vqvae), PixelSNAIL(cfg.prior)
    save_models(tmp_path, Card(cfg), vq, prior, dtype=torch.float16)
    shards = sorted(tmp_path.glob("prior-*.safetensors"))
    assert len(shards) > 1
    loaded = load_prior(tmp_path)
    assert next(loaded.parameters()).dtype == torch.float32
    for a, b in zip(prior.state_dict().values(), loaded.state_dict().values()):
        assert torch.allclose(a.float(), b, rtol=1e-3, atol=1e-4)
    assert MAX_SHARD_BYTES == 16 * 1024 * 1024


def test_missing_files_are_explained(tmp_path):
    with pytest.raises(WeightsError, match="no weights card"):
        read_card(tmp_path)
    d = make_weights(tmp_path, "brain")
    next(d.glob("prior-*")).unlink()
    with pytest.raises(WeightsError, match="prior"):
        load_prior(d)
    with pytest.raises(WeightsError, match="no weights installed|no weights card"):
        Detector.load("brain", tmp_path / "nowhere", device="cpu")


def test_mismatched_architecture_is_refused(tmp_path):
    d = make_weights(tmp_path, "brain")
    card = json.loads((d / "card.json").read_text())
    card["config"]["prior"]["channels"] = 32
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="do not match the architecture"):
        load_prior(d)


def test_wrong_version_and_region(tmp_path):
    d = make_weights(tmp_path, "brain")
    assert resolve_weights("brain", tmp_path) == d and resolve_weights("brain", d) == d
    with pytest.raises(WeightsError, match="region"):
        Detector.load("abdom", d, device="cpu")
    card = json.loads((d / "card.json").read_text())
    card["format_version"] = 99
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="format_version"):
        read_card(d)


def test_score_map_is_monotone_and_below_one():
    m = ScoreMap(2.0)
    x = torch.tensor([0.0, 1e-6, 1.0, 2.0, 1e3, 1e9], dtype=torch.float64)
    y = m(x)
    assert torch.all(y[1:] > y[:-1]) and float(y[-1]) < 1.0 and float(y[3]) == 0.5


def test_localiser_round_trip_and_cards_from_before_it(tmp_path):
    from mood.config import region_preset
    from mood.localiser import UNet
    from mood.detection.weights import has_model, load_localiser

    d = make_weights(tmp_path, "brain", localiser_sample_map=ScoreMap(0.25), localiser_pixel_map=ScoreMap(2.0),
                     method="fusion")
    card = read_card(d)
    assert card.config.localiser == tiny_preset("brain").localiser
    assert (card.localiser_sample_map, card.localiser_pixel_map) == (ScoreMap(0.25), ScoreMap(2.0))
    assert card.method == "fusion"
    assert all(has_model(d, stem) for stem in ("vqvae", "prior", "localiser")) and not has_model(d, "other")
    torch.manual_seed(0)  # make_weights draws the VQ-VAE, the prior, then the localiser
    VQVAE(card.config.vqvae), PixelSNAIL(card.config.prior)
    ref_model = UNet(card.config.localiser)
    torch.nn.init.zeros_(ref_model.head.bias)  # as make_weights centres it
    ref = ref_model.state_dict()
    loaded = load_localiser(d).state_dict()
    assert ref.keys() == loaded.keys() and all(torch.equal(ref[k], loaded[k]) for k in ref)
    # a card written before the localiser: the region's preset localiser, identity maps, no method
    raw = json.loads((d / "card.json").read_text())
    del raw["config"]["localiser"], raw["method"]
    for key in ("localiser_sample_map", "localiser_pixel_map"):
        del raw["calibration"][key]
    (d / "card.json").write_text(json.dumps(raw))
    old = read_card(d)
    assert old.config.localiser == region_preset("brain").localiser
    assert old.localiser_sample_map == old.localiser_pixel_map == ScoreMap(1.0) and old.method is None
    assert old.config.vqvae == card.config.vqvae
    # whose localiser then no longer matches the card: refused with the usual explanation
    with pytest.raises(WeightsError, match="localiser weights .* do not match"):
        load_localiser(d)


def test_export_copies_whichever_networks_a_folder_holds(tmp_path):
    from mood.detection.weights import has_model, load_localiser
    from mood.training import export_weights

    full = make_weights(tmp_path / "a", "brain")
    only = tmp_path / "b" / "brain"
    save_models(only, read_card(full), None, None, localiser=load_localiser(full))
    for src in (full, only):
        dst = export_weights(src, tmp_path / "out" / src.parent.name, dtype=torch.float16)
        for stem in ("vqvae", "prior", "localiser"):
            assert has_model(dst, stem) == has_model(src, stem), (src, stem)
        assert read_card(dst).info["storage_dtype"] == "float16"
        a, b = load_localiser(src).state_dict(), load_localiser(dst).state_dict()
        for k in a:
            expected = a[k].half().to(a[k].dtype) if a[k].is_floating_point() else a[k]
            assert torch.equal(b[k], expected), k
    assert not has_model(tmp_path / "out" / "b", "vqvae")
