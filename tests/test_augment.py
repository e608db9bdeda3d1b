"""Augmentation: shapes, dtype, seeding, background handling."""
from __future__ import annotations

import pytest
import torch

from mood.augment import AugmentConfig, augment
from mood.config import region_preset


def _slices(n: int = 6, size: int = 48, bg: float = 0.0) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disk = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 4) ** 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, size, size, generator=g) * 0.5 + 1.0
    return torch.where(disk, x, torch.full_like(x, bg))


def test_shape_dtype_and_seeded():
    x = _slices()
    a = augment(x, torch.Generator().manual_seed(3), region_preset("brain").augmentation)
    b = augment(x, torch.Generator().manual_seed(3), region_preset("brain").augmentation)
    c = augment(x, torch.Generator().manual_seed(4), region_preset("brain").augmentation)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.isfinite(a).all()


def test_brain_background_stays_zero():
    x = _slices()
    cfg = region_preset("brain").augmentation
    for seed in range(5):
        y = augment(x, torch.Generator().manual_seed(seed), cfg)
        # far from the disk (radius 12, scale <= 1.1, small rotation/elastic): exactly 0
        assert (y[:, :4, :] == 0).all() and (y[:, -4:, :] == 0).all()
        assert (y != 0).float().mean() > 0.1  # the object is still there


def test_abdomen_fills_with_air():
    x = _slices(bg=-1.0)
    y = augment(x, torch.Generator().manual_seed(1), AugmentConfig(**{**region_preset("abdom").augmentation.__dict__,
                                                                      "p": 1.0, "noise_var": 0.0,
                                                                      "brightness": 0.0, "contrast": 0.0}))
    # corners are air (-1) whatever the scale/rotation
    assert torch.allclose(y[:, 0, 0], torch.full((x.shape[0],), -1.0), atol=1e-4)


def test_identity_when_disabled():
    x = _slices()
    y = augment(x, torch.Generator().manual_seed(0), AugmentConfig(p=0.0))
    assert torch.allclose(x, y, atol=1e-5)


def test_every_transform_runs():
    x = _slices()
    y = augment(x, torch.Generator().manual_seed(0), AugmentConfig(p=1.0))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.allclose(x, y)


def test_bad_shape():
    with pytest.raises(ValueError, match="slices"):
        augment(torch.zeros(2, 3, 4), torch.Generator())
