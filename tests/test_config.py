"""Every regional fact lives in RegionConfig; cards written before a fact was recorded load unchanged."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mood.config import (REGIONS, AugmentConfig, RegionConfig, narrow, region_of_shape, region_preset,
                         tiny_preset)

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
@pytest.mark.parametrize("make", [region_preset, tiny_preset, lambda r: narrow(region_preset(r), 0.5)],
                         ids=["preset", "tiny", "narrow"])
def test_round_trip_and_older_checkpoints_compare_equal(region, make):
    """``train --resume`` compares the checkpoint's config with the one the code builds."""
    config = make(region)
    assert RegionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    older = {k: v for k, v in config.to_dict().items() if k not in FACTS}
    assert RegionConfig.from_dict(json.loads(json.dumps(older))) == config


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
