"""Normal volumes -> a validation set in the MOOD toy layout, with synthetic anomalies.

In: a folder (or one file) of normal volumes in any format :mod:`mood.volumes.convert` reads. Out, under
``output``::

    toy/toy_000.nii.gz ...                 the cases (float32, challenge form)
    toy_label/sample/toy_000.nii.gz.txt    "1" (anomalous) or "0" (normal)
    toy_label/pixel/toy_000.nii.gz         uint8 mask of the changed voxels (all 0 for normals)
    toy_manifest.json                      per case: source volume, anomaly kind and parameters

This is the layout of the challenge's toy data and what its evaluator expects: labels and
predictions share the case's file name, with ``.txt`` appended for the sample task
(``<case>.nii.gz.txt``). The manifest sits beside ``toy/``, not in it, so that a predictor run on
``toy/`` sees only volumes.

Inputs already in challenge form are used exactly as inference reads them, others are converted
(one rule for training, calibration and make-toy:
:func:`mood.volumes.convert.ensure_challenge_form`). ``size`` writes smaller volumes for quick
runs (the predictor then needs an explicit ``--region``). Case ``i`` draws from its own generator
``default_rng([seed, i])``: the same seed gives the same set, whatever the order.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from pathlib import Path

import numpy as np

from .anomalies import KINDS, insert_anomaly_spec
from ..config import REGIONS, region_of_shape
from ..volumes.convert import ensure_challenge_form, save_nifti
from ..volumes.volume_io import READABLE_SUFFIXES, list_inputs, read_volume, write_json, write_text

log = logging.getLogger(__name__)

CASE_PREFIX = "toy_"
MANIFEST = "toy_manifest.json"


@dataclass(frozen=True)
class ToyCase:
    name: str  # file name in toy/, e.g. "toy_000.nii.gz"
    source: str  # the normal volume it was made from
    kind: str | None  # anomaly kind; None for an untouched normal
    n_changed: int  # voxels in the pixel label


@dataclass(frozen=True)
class ToySummary:
    output: Path
    region: str
    shape: tuple[int, int, int]
    seed: int
    cases: tuple[ToyCase, ...] = field(default_factory=tuple)

    @property
    def n_cases(self) -> int:
        return len(self.cases)

    @property
    def n_anomalous(self) -> int:
        return sum(c.kind is not None for c in self.cases)

    @property
    def n_normal(self) -> int:
        return self.n_cases - self.n_anomalous


def _check_args(count: int, normal_fraction: float, region: str | None,
                size: tuple[int, ...] | None, kinds: tuple[str, ...]) -> None:
    if count < 1:
        raise ValueError(f"count={count}: must be at least 1")
    if not 0.0 <= normal_fraction <= 1.0:
        raise ValueError(f"normal_fraction={normal_fraction}: must lie in [0, 1]")
    if region is not None and region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; expected one of {', '.join(REGIONS)}")
    if size is not None and (len(size) != 3 or min(int(s) for s in size) < 8):
        raise ValueError(f"size {tuple(size)}: expected three sizes of at least 8 voxels")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"anomaly kinds {unknown or '(none)'}: expected some of {', '.join(KINDS)}")


def _normal_cases(count: int, n_normal: int, n_sources: int, rng: np.random.Generator) -> set[int]:
    """Indices of the normal cases, taken from the sources in turn (case i uses source i % n_sources).

    Each source then has normals as far as ``n_normal`` allows: sources differ more from each other
    than an anomaly changes a volume, so a sample-level AP over cases whose normals all came from one
    source would rank sources, not anomalies.
    """
    per_source = [rng.permutation(np.arange(s, count, n_sources)).tolist() for s in range(n_sources)]
    in_turn = [i for cases in zip_longest(*per_source) for i in cases if i is not None]
    return set(in_turn[:n_normal])


def make_toy(input: Path, output: Path, count: int, seed: int, region: str | None = None,
             normal_fraction: float = 0.25, size: tuple[int, int, int] | None = None,
             kinds: tuple[str, ...] = KINDS) -> ToySummary:
    """Write ``count`` cases in the MOOD toy layout under ``output`` and return a summary.

    Args:
        input: folder (or one file) of normal volumes; cases use them in turn.
        output: folder for ``toy/``, ``toy_label/`` and ``toy_manifest.json`` (created).
        count: number of cases.
        seed: the set is a pure function of the inputs, ``seed`` and the other arguments.
        region: ``"brain"`` or ``"abdom"``; default from the inputs' shape when they already are
            in challenge form, otherwise required.
        normal_fraction: share of untouched normal cases (rounded; at random positions, spread
            over the sources in turn).
        size: write volumes of this shape (a0, a1, a2) instead of the region's challenge shape.
        kinds: anomaly kinds, used in turn by the anomalous cases (shuffled start).

    Raises ``ValueError`` for bad arguments, when ``input`` has no volumes, or when the region
    cannot be inferred.
    """
    input, output = Path(input), Path(output)
    kinds = tuple(kinds)
    _check_args(count, normal_fraction, region, size, kinds)
    size = None if size is None else tuple(int(s) for s in size)  # type: ignore[assignment]
    sources = list_inputs(input, READABLE_SUFFIXES)
    if not sources:
        raise ValueError(f"{input}: no volume files")
    if region is None:
        region = region_of_shape(read_volume(sources[0]).data.shape)
        if region is None:
            raise ValueError(f"cannot tell the region of {sources[0]} from its shape; pass region "
                             f"('brain' or 'abdom')")

    plan_rng = np.random.default_rng([seed, 2**31 - 1])
    n_normal = int(round(count * normal_fraction))
    normal_idx = _normal_cases(count, n_normal, len(sources), plan_rng)
    offset = int(plan_rng.integers(len(kinds)))
    plan: list[tuple[int, str | None]] = []
    j = 0
    for i in range(count):
        if i in normal_idx:
            plan.append((i, None))
        else:
            plan.append((i, kinds[(offset + j) % len(kinds)]))
            j += 1

    toy_dir, sample_dir, pixel_dir = output / "toy", output / "toy_label" / "sample", output / "toy_label" / "pixel"
    for d in (toy_dir, sample_dir, pixel_dir):
        d.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(count - 1)))
    cases: dict[int, ToyCase] = {}
    manifest: dict[str, dict] = {}
    shape_out: tuple[int, int, int] | None = None
    # one normal volume in memory at a time: all cases made from source s are written together
    for s, source in enumerate(sources):
        mine = [(i, kind) for i, kind in plan if i % len(sources) == s]
        if not mine:
            continue
        normal, affine = ensure_challenge_form(source, region, shape=size)
        shape_out = tuple(normal.shape)  # type: ignore[assignment]
        for i, kind in mine:
            name = f"{CASE_PREFIX}{i:0{width}d}.nii.gz"
            rng = np.random.default_rng([seed, i])
            spec = None
            if kind is None:
                volume, mask = normal, np.zeros(normal.shape, dtype=bool)
            else:
                volume, mask, spec = insert_anomaly_spec(normal, rng, kind)
                if not mask.any():
                    log.warning("%s: the %s anomaly changed no voxel; written as a normal case", name, kind)
                    kind, spec = None, None
            save_nifti(toy_dir / name, volume, affine)
            save_nifti(pixel_dir / name, mask, affine, dtype=np.uint8)
            write_text(sample_dir / f"{name}.txt", "1\n" if kind is not None else "0\n")
            cases[i] = ToyCase(name=name, source=source.name, kind=kind, n_changed=int(mask.sum()))
            manifest[name] = {"source": source.name, "kind": kind, "n_changed": int(mask.sum()),
                              "anomaly": spec.to_dict() if spec is not None else None}
            log.info("%s: %s from %s (%d voxels changed)", name, kind or "normal", source.name, int(mask.sum()))
            del volume, mask
        del normal

    summary = ToySummary(output=output, region=region, shape=shape_out or (0, 0, 0), seed=seed,
                         cases=tuple(cases[i] for i in sorted(cases)))
    record = {"region": region, "shape": list(summary.shape), "seed": seed, "count": count,
              "normal_fraction": normal_fraction, "kinds": list(kinds), "inputs": [p.name for p in sources],
              "cases": {name: manifest[name] for name in sorted(manifest)}}
    write_json(output / MANIFEST, record)
    return summary


def summary_dict(summary: ToySummary) -> dict:
    """A JSON-friendly view of a :class:`ToySummary`."""
    d = asdict(summary)
    d["output"] = str(summary.output)
    d.update(n_cases=summary.n_cases, n_anomalous=summary.n_anomalous, n_normal=summary.n_normal)
    return d


__all__ = ["ToyCase", "ToySummary", "make_toy", "summary_dict", "MANIFEST"]
