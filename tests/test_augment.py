"""Augmentation: shapes, dtype, seeding, background handling."""
from __future__ import annotations

import pytest
import torch

from mood.training.augment import AugmentConfig, augment, intensity_curve
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


_ONLY_INTENSITY = dict(p=1.0, scale=(1.0, 1.0), rotate_deg=0.0, flip=False, elastic_px=0.0, brightness=0.0,
                       contrast=0.0, blur_kernels=(1,), noise_var=0.0, keep_background=False)


def _to_unit(y: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    lo, hi = cfg.value_range
    return (y - lo) / (hi - lo)


def test_gamma_is_a_monotone_contrast_curve():
    x = _slices(n=8)
    cfg = AugmentConfig(**_ONLY_INTENSITY, gamma=1.4)
    y = augment(x, torch.Generator().manual_seed(2), cfg)
    u, v = _to_unit(x, cfg).flatten(1), _to_unit(y, cfg).flatten(1)
    order = u.argsort(dim=1)
    assert (v.gather(1, order).diff(dim=1) >= -1e-5).all()  # the order of intensities is kept
    inside = (u > 0.05) & (u < 0.95)
    exponent = (v[inside].log() / u[inside].log())  # one gamma per slice, within [1/1.4, 1.4]
    assert exponent.min() > 1 / 1.4 - 1e-3 and exponent.max() < 1.4 + 1e-3
    assert (exponent - 1).abs().max() > 0.05


def test_bias_field_is_smooth_and_bounded():
    x = _slices(n=8, size=64) + 2.0  # no zeros: the field is the ratio everywhere
    cfg = AugmentConfig(**_ONLY_INTENSITY, gamma=1.0, bias_field=0.3)
    ratio = _to_unit(augment(x, torch.Generator().manual_seed(5), cfg), cfg) / _to_unit(x, cfg)
    assert ratio.min() >= torch.exp(torch.tensor(-0.3)) - 1e-4 and ratio.max() <= torch.exp(torch.tensor(0.3)) + 1e-4
    assert (ratio.amax(dim=(1, 2)) - ratio.amin(dim=(1, 2))).max() > 0.05  # shading, not a constant
    # smooth: neighbouring pixels differ by far less than the field's range
    assert ratio.diff(dim=1).abs().max() < 0.05 and ratio.diff(dim=2).abs().max() < 0.05
    off = AugmentConfig(**_ONLY_INTENSITY, gamma=1.0, bias_field=0.0)
    assert torch.allclose(augment(x, torch.Generator().manual_seed(5), off), x, atol=1e-5)


def test_intensity_curve_is_monotone_and_fixes_the_ends():
    u = torch.linspace(-0.2, 1.2, 85).view(1, 1, 85).expand(4, 2, 85).clone()  # steps of 1/60
    log_slopes = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    v = intensity_curve(u, log_slopes)
    assert (v.diff(dim=2) > 0).all()  # strictly increasing: no two tissues merge
    at = lambda t: v[:, 0, int(round((t + 0.2) * 60))]  # noqa: E731
    assert torch.allclose(at(0.0), torch.zeros(4), atol=1e-6) and torch.allclose(at(1.0), torch.ones(4), atol=1e-6)
    assert torch.allclose(at(-0.2), torch.full((4,), -0.2), atol=1e-6)  # offsets beyond [0, 1] kept
    assert torch.allclose(at(1.2), torch.full((4,), 1.2), atol=1e-6)
    # the first knot lies where the first segment's share of the total rise says
    rise = log_slopes.exp()
    assert torch.allclose(at(1 / 6), rise[:, 0] / rise.sum(1), atol=1e-5)
    assert torch.allclose(intensity_curve(u, torch.zeros(4, 6)), u, atol=1e-6)


def test_intensity_curve_changes_contrast_between_tissues():
    x = _slices(n=16)
    cfg = AugmentConfig(**_ONLY_INTENSITY, gamma=1.0, remap=0.5)
    y = augment(x, torch.Generator().manual_seed(1), cfg)
    u, v = _to_unit(x, cfg).flatten(1), _to_unit(y, cfg).flatten(1)
    order = u.argsort(dim=1)
    assert (v.gather(1, order).diff(dim=1) >= -1e-6).all()
    # two "tissues" (intensity bands) change their contrast by different factors from slice to slice
    dark, bright = (u > 0.55) & (u < 0.6), (u > 0.7) & (u < 0.75)
    contrast = torch.stack([(v[i][bright[i]].mean() - v[i][dark[i]].mean()) /
                            (u[i][bright[i]].mean() - u[i][dark[i]].mean()) for i in range(len(u))])
    assert contrast.max() / contrast.min() > 1.5
    off = augment(x, torch.Generator().manual_seed(1), AugmentConfig(**_ONLY_INTENSITY, gamma=1.0))
    assert torch.allclose(off, x, atol=1e-5)


def test_lower_resolution_smooths_and_keeps_the_rest():
    x = _slices(n=8, size=64)
    off = AugmentConfig(**_ONLY_INTENSITY, gamma=1.0)
    assert torch.allclose(augment(x, torch.Generator().manual_seed(2), off), x, atol=1e-5)
    coarse = augment(x, torch.Generator().manual_seed(2), AugmentConfig(**_ONLY_INTENSITY, gamma=1.0, resolution=3.0))
    inside = x != 0
    # the pixel noise of the disk is averaged away: neighbours differ far less than before
    assert coarse.diff(dim=2)[inside[:, :, 1:]].abs().mean() < 0.6 * x.diff(dim=2)[inside[:, :, 1:]].abs().mean()
    # the same level away from the disk's edge (radius 16 around the centre)
    core = (slice(None), slice(26, 38), slice(26, 38))
    assert abs(float(coarse[core].mean() - x[core].mean())) < 0.05
    # with the background kept, the smoothing blurs the disk's edge but the background beyond stays 0
    kept = AugmentConfig(**{**_ONLY_INTENSITY, "keep_background": True}, gamma=1.0, resolution=3.0)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    far = ((yy - 32) ** 2 + (xx - 32) ** 2) > 20 ** 2
    assert (augment(x, torch.Generator().manual_seed(2), kept)[:, far] == 0).all()


def test_lower_resolution_off_draws_nothing():
    # runs without it (resolution 1) keep their random numbers
    x = _slices()
    cfg = region_preset("brain").augmentation
    a = augment(x, torch.Generator().manual_seed(7), cfg)
    assert cfg.resolution == 1.0
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(7), AugmentConfig(**{
        **cfg.__dict__, "resolution": 2.0})))
