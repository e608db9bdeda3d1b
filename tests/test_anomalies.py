"""Synthetic anomalies: every kind changes voxels inside the body, the mask is exact, seeds reproduce."""
from __future__ import annotations

import numpy as np
import pytest

from mood.validation.anomalies import (KINDS, MIN_CHANGE, AnomalySpec, apply_anomaly, body_mask, insert_anomaly,
                            insert_anomaly_spec, sample_anomaly)

SHAPE = (48, 40, 32)


def _phantom(seed: int = 0) -> np.ndarray:
    """A textured ellipsoid in [0, 1] on a zero background."""
    rng = np.random.default_rng(seed)
    g = np.indices(SHAPE).astype(np.float32)
    r = np.sqrt(sum(((g[i] - (n - 1) / 2) / (0.42 * n)) ** 2 for i, n in enumerate(SHAPE)))
    texture = 0.5 + 0.2 * np.sin(g[0] / 2.0) * np.cos(g[1] / 3.0) + 0.05 * rng.standard_normal(SHAPE)
    return np.where(r < 1, np.clip(texture, 0.1, 0.9), 0.0).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_body_voxels_with_exact_mask(kind):
    volume = _phantom()
    before = volume.copy()
    out, mask, spec = insert_anomaly_spec(volume, np.random.default_rng(1), kind)
    np.testing.assert_array_equal(volume, before)  # input untouched
    assert out.dtype == np.float32 and out.shape == SHAPE and mask.dtype == bool
    assert 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_array_equal(mask, out != volume)  # exactly the changed voxels
    assert mask.sum() >= 20
    assert spec.kind == kind and body_mask(volume)[spec.centre]  # placed inside the body
    # the changes stay within the anomaly's ellipsoid box
    idx = np.argwhere(mask)
    assert np.all(np.abs(idx - np.asarray(spec.centre)) <= np.ceil(np.asarray(spec.radii)) + 1)


def test_directions_of_change():
    volume = _phantom()
    rng = np.random.default_rng(2)
    bright, m = insert_anomaly(volume, rng, "blob_bright")
    assert np.all(bright[m] > volume[m])
    dark, m = insert_anomaly(volume, rng, "blob_dark")
    assert np.all(dark[m] < volume[m])
    shuffled, m, spec = insert_anomaly_spec(volume, rng, "shuffle")
    box = tuple(slice(max(0, int(c - r - 1)), int(c + r + 2)) for c, r in zip(spec.centre, spec.radii))
    # a permutation of the region's values (up to the undone changes below MIN_CHANGE)
    np.testing.assert_allclose(np.sort(shuffled[box], axis=None), np.sort(volume[box], axis=None),
                               atol=MIN_CHANGE)


def test_reproducible_and_seed_dependent():
    volume = _phantom()
    a = insert_anomaly(volume, np.random.default_rng(7))
    b = insert_anomaly(volume, np.random.default_rng(7))
    c = insert_anomaly(volume, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_spec_alone_reproduces_the_anomaly():
    volume = _phantom()
    for kind in ("noise", "shuffle", "foreign"):
        out, mask, spec = insert_anomaly_spec(volume, np.random.default_rng(3), kind)
        again = AnomalySpec(**{**spec.to_dict(), "centre": tuple(spec.centre), "radii": tuple(spec.radii)})
        out2, mask2 = apply_anomaly(volume, again)
        np.testing.assert_array_equal(out, out2)
        np.testing.assert_array_equal(mask, mask2)


def test_foreign_patch_from_donor():
    volume = _phantom()
    donor = np.where(volume > 0, 0.95, 0.0).astype(np.float32)  # a flat bright body
    out, mask = apply_anomaly(volume, sample_anomaly(volume, np.random.default_rng(4), "foreign"), donor=donor)
    assert mask.any() and float(out[mask].mean()) > float(volume[mask].mean())


def test_works_on_other_shapes_and_empty_volume():
    small = _phantom()[:20, :16, :12]
    out, mask = insert_anomaly(small, np.random.default_rng(0), "blob_dark")
    assert out.shape == small.shape and mask.any()
    empty = np.zeros((16, 16, 16), dtype=np.float32)
    out, mask = insert_anomaly(empty, np.random.default_rng(0), "blob_dark", max_tries=2)
    assert not mask.any()  # nothing to darken: reported through the empty mask


def test_errors():
    volume = _phantom()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="kind"):
        insert_anomaly(volume, rng, "tumour")
    with pytest.raises(ValueError, match="3-D"):
        insert_anomaly(volume[0], rng)
    with pytest.raises(ValueError, match="at least 4"):
        insert_anomaly(volume[:2], rng)
    with pytest.raises(ValueError, match="radius_range"):
        insert_anomaly(volume, rng, radius_range=(0.3, 0.1))
    with pytest.raises(ValueError, match="donor"):
        apply_anomaly(volume, sample_anomaly(volume, rng, "foreign"), donor=volume[:10])
    with pytest.raises(ValueError, match="max_tries"):
        insert_anomaly(volume, rng, max_tries=0)
