"""Synthetic anomalies for validation sets (DESIGN.md section 6).

In: a float32 volume (a0, a1, a2) with values in [0, 1] (any shape), a ``numpy.random.Generator``.
Out: ``(anomalous volume, mask)``: a new float32 volume in [0, 1] and a bool mask of exactly the
voxels whose value changed (``mask == (out != volume)``). The input is never modified.

Kinds (:data:`KINDS`):

* ``blob_bright`` / ``blob_dark``: a smooth ellipsoidal intensity change (raised-cosine edge),
  added towards 1 or multiplied towards 0.
* ``noise``: Gaussian noise inside a smooth ellipsoid.
* ``sink`` / ``source``: a local radial deformation that pulls tissue towards (sink) or pushes it
  away from (source) a centre; smooth, zero at the ellipsoid's border.
* ``shuffle``: the voxels of an ellipsoid (inside the body) permuted randomly.
* ``foreign``: a patch copied from elsewhere in the body (or from a ``donor`` volume), mirrored,
  blended in with a smooth edge.

Size (ellipsoid radii as fractions of the body's extent), position (a random body voxel) and
strength are random. Every random choice is drawn into an :class:`AnomalySpec` first, so the same
generator state always gives the same anomaly, and a spec alone reproduces it
(:func:`apply_anomaly`). Changes below ``min_change`` are undone so that the mask contains only
voxels that visibly changed; a draw that changes fewer than ``min_voxels`` voxels is redrawn.
Work is done on the anomaly's bounding box only, so 512^3 volumes cost one copy of the volume.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

KINDS = ("blob_bright", "blob_dark", "noise", "sink", "source", "shuffle", "foreign")
#: A voxel belongs to the body (head or trunk) above this value (challenge intensities in [0, 1]).
FOREGROUND_THRESHOLD = 0.05
#: Ellipsoid radii, as fractions of the body's extent along each axis.
RADIUS_RANGE = (0.04, 0.14)
#: Changes smaller than this are undone (they would be invisible; the label stays exact).
MIN_CHANGE = 1.0 / 256
MIN_VOXELS = 20


@dataclass(frozen=True)
class AnomalySpec:
    """Everything that defines one anomaly; :func:`apply_anomaly` turns it into voxels.

    ``centre`` and ``radii`` are in voxels (a0, a1, a2); ``strength`` is in [0, 1] and means, per
    kind: intensity change (blobs), noise standard deviation (noise), displacement as a fraction
    of the radius (sink/source), unused (shuffle), blend weight at the centre (foreign).
    ``source`` is the centre of the copied patch (foreign); ``seed`` drives noise and shuffling.
    """

    kind: str
    centre: tuple[int, int, int]
    radii: tuple[float, float, float]
    strength: float
    seed: int
    source: tuple[int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_volume(volume: np.ndarray) -> None:
    if not isinstance(volume, np.ndarray) or volume.ndim != 3:
        raise ValueError(f"volume: expected a 3-D numpy array, got "
                         f"{getattr(volume, 'shape', type(volume).__name__)}")
    if min(volume.shape) < 4:
        raise ValueError(f"volume shape {volume.shape}: every axis needs at least 4 voxels")


def body_mask(volume: np.ndarray, threshold: float = FOREGROUND_THRESHOLD) -> np.ndarray:
    """Bool (a0, a1, a2): voxels above ``threshold`` (the body; background is near 0)."""
    return volume > threshold


def _body_box(fg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper voxel index of the body along each axis (whole volume if empty)."""
    if not fg.any():
        return np.zeros(3, dtype=int), np.asarray(fg.shape) - 1
    lo, hi = [], []
    for axis in range(3):
        hits = np.flatnonzero(fg.any(axis=tuple(j for j in range(3) if j != axis)))
        lo.append(hits[0])
        hi.append(hits[-1])
    return np.asarray(lo), np.asarray(hi)


def _random_body_voxel(fg: np.ndarray, rng: np.random.Generator, avoid: tuple[int, ...] | None = None,
                       min_distance: float = 0.0) -> tuple[int, int, int]:
    """A uniformly random voxel of ``fg`` (rejection sampling; exact fallback for sparse masks)."""
    shape = np.asarray(fg.shape)
    for _ in range(2000):
        p = tuple(int(v) for v in rng.integers(0, shape))
        if fg[p] and (avoid is None or np.linalg.norm(np.subtract(p, avoid)) >= min_distance):
            return p  # type: ignore[return-value]
    idx = np.flatnonzero(fg)
    if idx.size == 0:
        return tuple(int(v) for v in rng.integers(0, shape))  # type: ignore[return-value]
    flat = idx[rng.integers(idx.size)]
    return tuple(int(v) for v in np.unravel_index(flat, fg.shape))  # type: ignore[return-value]


def sample_anomaly(volume: np.ndarray, rng: np.random.Generator, kind: str | None = None, *,
                   radius_range: tuple[float, float] = RADIUS_RANGE,
                   threshold: float = FOREGROUND_THRESHOLD) -> AnomalySpec:
    """Draw a random anomaly of ``kind`` (random kind when None) placed inside the body."""
    _check_volume(volume)
    if kind is None:
        kind = KINDS[int(rng.integers(len(KINDS)))]
    if kind not in KINDS:
        raise ValueError(f"unknown anomaly kind {kind!r}; expected one of {', '.join(KINDS)}")
    r_lo, r_hi = radius_range
    if not 0 < r_lo <= r_hi <= 0.5:
        raise ValueError(f"radius_range {radius_range}: expected 0 < low <= high <= 0.5")
    fg = body_mask(volume, threshold)
    lo, hi = _body_box(fg)
    extent = (hi - lo + 1).astype(np.float64)
    # one overall size, then a mild anisotropy per axis; at least 2 voxels
    size = rng.uniform(r_lo, r_hi)
    radii = tuple(float(max(2.0, e * size * rng.uniform(0.7, 1.3))) for e in extent)
    centre = _random_body_voxel(fg, rng)
    strength = {
        "blob_bright": rng.uniform(0.25, 0.8),
        "blob_dark": rng.uniform(0.4, 0.95),
        "noise": rng.uniform(0.08, 0.35),
        "sink": rng.uniform(0.3, 0.6),
        "source": rng.uniform(0.3, 0.6),
        "shuffle": 1.0,
        "foreign": rng.uniform(0.8, 1.0),
    }[kind]
    source = None
    if kind == "foreign":
        source = _random_body_voxel(fg, rng, avoid=centre, min_distance=2.5 * max(radii))
    seed = int(rng.integers(2**31))
    return AnomalySpec(kind=kind, centre=centre, radii=radii, strength=float(strength), seed=seed,
                       source=source)


def _box(centre: tuple[int, ...], radii: tuple[float, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(0, int(np.floor(c - r))), min(n, int(np.ceil(c + r)) + 1))
                 for c, r, n in zip(centre, radii, shape))


def _radius(box: tuple[slice, ...], centre: tuple[int, ...], radii: tuple[float, ...]) -> np.ndarray:
    """Normalised ellipsoidal radius (1 on the border) on the box's grid."""
    grids = np.ogrid[tuple(slice(s.start, s.stop) for s in box)]
    return np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)))


def _profile(r: np.ndarray) -> np.ndarray:
    """Smooth bump: 1 at the centre, raised-cosine fall-off to 0 on the border (r = 1)."""
    return np.where(r < 1.0, 0.5 * (1.0 + np.cos(np.pi * np.clip(r, 0.0, 1.0))), 0.0).astype(np.float32)


def apply_anomaly(volume: np.ndarray, spec: AnomalySpec, *, donor: np.ndarray | None = None,
                  threshold: float = FOREGROUND_THRESHOLD,
                  min_change: float = MIN_CHANGE) -> tuple[np.ndarray, np.ndarray]:
    """Insert the anomaly ``spec`` into a copy of ``volume``.

    ``donor`` (same shape) supplies the foreign patch instead of the volume itself. Returns
    ``(out, mask)``: float32 (a0, a1, a2) in [0, 1], and bool (a0, a1, a2) with
    ``mask == (out != volume)``.
    """
    _check_volume(volume)
    if donor is not None and donor.shape != volume.shape:
        raise ValueError(f"donor shape {donor.shape} differs from the volume's {volume.shape}")
    volume = np.asarray(volume, dtype=np.float32)
    out = volume.copy()
    mask = np.zeros(volume.shape, dtype=bool)
    box = _box(spec.centre, spec.radii, volume.shape)
    x = volume[box]
    body = x > threshold
    w = _profile(_radius(box, spec.centre, spec.radii))
    rng = np.random.default_rng(spec.seed)
    s = np.float32(spec.strength)

    if spec.kind == "blob_bright":
        y = x + (1.0 - x) * s * w * body
    elif spec.kind == "blob_dark":
        y = x * (1.0 - s * w * body)
    elif spec.kind == "noise":
        y = x + s * w * body * rng.standard_normal(x.shape, dtype=np.float32)
    elif spec.kind in ("sink", "source"):
        y = _deform(volume, box, spec)
        y = np.where(body | (y > threshold), y, x)
    elif spec.kind == "shuffle":
        inside = (w > 0) & body
        y = x.copy()
        values = y[inside]
        y[inside] = values[rng.permutation(values.size)]
    elif spec.kind == "foreign":
        src = volume if donor is None else np.asarray(donor, dtype=np.float32)
        patch = _source_patch(src, box, spec)
        y = x + s * w * (patch - x) * (body | (patch > threshold))
    else:
        raise ValueError(f"unknown anomaly kind {spec.kind!r}; expected one of {', '.join(KINDS)}")

    y = np.clip(np.asarray(y, dtype=np.float32), 0.0, 1.0)
    changed = np.abs(y - x) >= min_change
    out[box] = np.where(changed, y, x)
    mask[box] = changed & (out[box] != x)
    return out, mask


def _deform(volume: np.ndarray, box: tuple[slice, ...], spec: AnomalySpec) -> np.ndarray:
    """Values of ``volume`` on ``box`` after a radial sink/source deformation around the centre.

    Each output voxel at offset ``d`` from the centre (normalised radius ``r``) samples the input at
    ``c + d * (1 + a * w(r))`` (sink, a > 0: tissue is pulled in) or ``c + d * (1 - a * w(r))``
    (source: tissue is pushed out); ``w`` is the smooth bump, so the map is the identity on the
    border. ``a = strength`` (below 1 keeps the map one-to-one).
    """
    grids = np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float32) for s in box], indexing="ij")
    r = _radius(box, spec.centre, spec.radii)
    w = _profile(r)
    sign = 1.0 if spec.kind == "sink" else -1.0
    factor = 1.0 + sign * spec.strength * w
    coords = [np.asarray(c + (g - c) * factor, dtype=np.float32) for g, c in zip(grids, spec.centre)]
    return ndimage.map_coordinates(volume, coords, order=1, mode="nearest").astype(np.float32)


def _source_patch(src: np.ndarray, box: tuple[slice, ...], spec: AnomalySpec) -> np.ndarray:
    """The patch of ``src`` centred on ``spec.source``, mirrored along a0, on ``box``'s grid."""
    if spec.source is None:
        raise ValueError("a foreign anomaly needs a source centre")
    offsets = [np.arange(s.start, s.stop) - c for s, c in zip(box, spec.centre)]
    offsets[0] = -offsets[0]  # mirrored: a patch that does not fit its new surroundings
    idx = np.ix_(*[np.clip(o + c, 0, n - 1) for o, c, n in zip(offsets, spec.source, src.shape)])
    return src[idx]


def insert_anomaly(volume: np.ndarray, rng: np.random.Generator, kind: str | None = None, *,
                   donor: np.ndarray | None = None, radius_range: tuple[float, float] = RADIUS_RANGE,
                   threshold: float = FOREGROUND_THRESHOLD, min_change: float = MIN_CHANGE,
                   min_voxels: int = MIN_VOXELS, max_tries: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Draw and insert one anomaly of ``kind`` (random when None); see :func:`insert_anomaly_spec`."""
    out, mask, _ = insert_anomaly_spec(volume, rng, kind, donor=donor, radius_range=radius_range,
                                       threshold=threshold, min_change=min_change,
                                       min_voxels=min_voxels, max_tries=max_tries)
    return out, mask


def insert_anomaly_spec(volume: np.ndarray, rng: np.random.Generator, kind: str | None = None, *,
                        donor: np.ndarray | None = None,
                        radius_range: tuple[float, float] = RADIUS_RANGE,
                        threshold: float = FOREGROUND_THRESHOLD, min_change: float = MIN_CHANGE,
                        min_voxels: int = MIN_VOXELS,
                        max_tries: int = 10) -> tuple[np.ndarray, np.ndarray, AnomalySpec]:
    """Draw anomalies until one changes at least ``min_voxels`` voxels (at most ``max_tries``).

    Returns ``(out, mask, spec)``: float32 (a0, a1, a2) in [0, 1], bool mask of changed voxels,
    and the spec that produced them. If no draw changes enough voxels (e.g. an empty volume), the
    last draw is returned as is; check ``mask.any()``.
    """
    if max_tries < 1:
        raise ValueError(f"max_tries={max_tries}: must be at least 1")
    for _ in range(max_tries):
        spec = sample_anomaly(volume, rng, kind, radius_range=radius_range, threshold=threshold)
        out, mask = apply_anomaly(volume, spec, donor=donor, threshold=threshold, min_change=min_change)
        if int(mask.sum()) >= min_voxels:
            break
    return out, mask, spec


__all__ = ["KINDS", "MIN_CHANGE", "FOREGROUND_THRESHOLD", "AnomalySpec", "body_mask", "sample_anomaly", "apply_anomaly", "insert_anomaly",
           "insert_anomaly_spec"]
