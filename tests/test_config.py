"""Every regional fact lives in RegionConfig; cards written before a fact was recorded load unchanged."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from mood.config import (REGIONS, AugmentConfig, RegionConfig, is_tiny, narrow, networks_of, region_of_shape, region_preset,
                         relatent, tiny_preset)

ROOT = Path(__file__).resolve().parent.parent
FACTS = ("challenge_shape", "modality", "background", "augment_range")


@pytest.mark.parametrize("region", REGIONS)
def test_shipped_cards_load_with_the_presets_facts(region):
    """The shipped models are the region's preset; the VQ-VAE may be a narrowed one (the weights
    campaign chooses its width by measurement, and the card carries it)."""
    loaded = RegionConfig.from_dict(json.loads((ROOT / "weights" / region / "card.json").read_text())["config"])
    preset = region_preset(region)
    width = loaded.vqvae.channels[-1] / preset.vqvae.channels[-1]
    assert loaded == narrow(preset, width)


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("make", [region_preset, tiny_preset, lambda r: narrow(region_preset(r), 0.5),
                                  lambda r: relatent(region_preset(r), cell=4, codes=32)],
                         ids=["preset", "tiny", "narrow", "relatent"])
def test_round_trip_and_older_checkpoints_compare_equal(region, make):
    """``train --resume`` compares the checkpoint's config with the one the code builds."""
    config = make(region)
    assert RegionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    older = {k: v for k, v in config.to_dict().items() if k not in FACTS}
    assert RegionConfig.from_dict(json.loads(json.dumps(older))) == config


@pytest.mark.parametrize("region", REGIONS)
def test_a_card_from_before_the_smoothing_has_the_same_networks(region):
    """Cards and checkpoints written before ``slice_sigma`` existed read it as 0 (how they were
    calibrated) and still match the preset's networks, so old campaign runs resume."""
    preset = region_preset(region)
    assert preset.localiser.slice_sigma > 0
    d = preset.to_dict()
    del d["localiser"]["slice_sigma"]
    older = RegionConfig.from_dict(json.loads(json.dumps(d)))
    assert older.localiser.slice_sigma == 0 and older != preset
    assert networks_of(older) == networks_of(preset)
    assert networks_of(replace(preset, localiser=replace(preset.localiser, channels=(8, 16)))) != networks_of(preset)


def test_regional_facts():
    brain, abdom = region_preset("brain"), region_preset("abdom")
    assert (brain.challenge_shape, brain.modality, brain.background) == ((256, 256, 256), "mri", 0.0)
    assert (abdom.challenge_shape, abdom.modality, abdom.background) == ((512, 512, 512), "ct", -1.0)
    assert brain.augmentation == AugmentConfig(value_range=(-3.0, 3.0), background=0.0, keep_background=True,
                                                bias_field=0.3)  # coil shading: MRI only
    assert abdom.augmentation == AugmentConfig(value_range=(-1.0, 1.0), background=-1.0, keep_background=False)
    for region in REGIONS:
        tiny, full = tiny_preset(region), region_preset(region)
        assert [getattr(tiny, f) for f in FACTS] == [getattr(full, f) for f in FACTS]
        assert region_of_shape(full.challenge_shape) == region
    assert region_of_shape((256, 256, 200)) is None


def test_relatent_changes_the_cell_and_codebook_and_the_prior_follows():
    brain, abdom = region_preset("brain"), region_preset("abdom")
    fine = relatent(brain, cell=4)
    assert fine.vqvae.channels == (16, 32, 256) and fine.vqvae.latent_size == fine.prior.latent_size == 40
    assert fine.prior.n_codes == fine.vqvae.n_codes == 128
    coarse = relatent(brain, cell=16)
    assert coarse.vqvae.channels == (16, 32, 64, 128, 256) and coarse.prior.latent_size == 10
    assert relatent(abdom, cell=8).vqvae.channels == brain.vqvae.channels  # one rule for both regions
    assert relatent(brain, cell=8) == relatent(brain) == brain
    small = relatent(brain, codes=32)
    assert (small.vqvae.n_codes, small.prior.n_codes, small.vqvae.channels) == (32, 32, brain.vqvae.channels)
    assert narrow(fine, 0.5).vqvae.channels == (8, 16, 128)
    assert is_tiny(relatent(tiny_preset("brain"), cell=4, codes=8)) and not is_tiny(fine)
    for cell in (3, 1, 320):
        with pytest.raises(ValueError, match="power of two"):
            relatent(brain, cell=cell)
    with pytest.raises(ValueError, match="at least 2 codes"):
        relatent(brain, codes=1)
