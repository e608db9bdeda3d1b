"""Toy sets: the MOOD layout, labels that match the volumes, reproducibility, kinds in turn."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mood.validation.anomalies import KINDS
from mood.validation.toy import MANIFEST, _normal_cases, make_toy

SIZE = (24, 24, 24)


def _normals(folder: Path, n: int = 2, shape=(30, 26, 20)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    g = np.indices(shape).astype(np.float32)
    r = np.sqrt(sum(((g[i] - (s - 1) / 2) / (0.4 * s)) ** 2 for i, s in enumerate(shape)))
    for i in range(n):
        texture = 200 + 60 * np.sin(g[0] / (2.0 + i)) * np.cos(g[1] / 3.0)
        data = np.where(r < 1, texture, 0.0).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 2.0, 1.0])), str(folder / f"normal_{i}.nii.gz"))
    return folder


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_layout_labels_and_kinds(tmp_path):
    out = tmp_path / "brain"
    summary = make_toy(_normals(tmp_path / "in"), out, count=6, seed=0, region="brain",
                       normal_fraction=1 / 3, size=SIZE)
    names = [f"toy_{i:03d}.nii.gz" for i in range(6)]
    assert sorted(p.name for p in (out / "toy").iterdir()) == names
    assert sorted(p.name for p in (out / "toy_label" / "pixel").iterdir()) == names
    assert sorted(p.name for p in (out / "toy_label" / "sample").iterdir()) == [f"{n}.txt" for n in names]
    assert (summary.n_cases, summary.n_normal, summary.n_anomalous) == (6, 2, 4)
    assert summary.shape == SIZE and summary.region == "brain"
    manifest = json.loads((out / MANIFEST).read_text())
    by_name = {c.name: c for c in summary.cases}
    for name in names:
        volume = _load(out / "toy" / name)
        mask = _load(out / "toy_label" / "pixel" / name)
        label = int((out / "toy_label" / "sample" / f"{name}.txt").read_text())
        assert volume.shape == SIZE and mask.shape == SIZE and mask.dtype == np.uint8
        assert 0.0 <= volume.min() and volume.max() <= 1.0
        assert label == int(mask.any()) == int(by_name[name].kind is not None)
        assert manifest["cases"][name]["kind"] == by_name[name].kind
        assert by_name[name].n_changed == int(mask.sum())
    # anomalous cases take the kinds in turn (from a random start)
    kinds = [c.kind for c in summary.cases if c.kind is not None]
    start = KINDS.index(kinds[0])
    assert kinds == [KINDS[(start + j) % len(KINDS)] for j in range(len(kinds))]


@pytest.mark.parametrize("count, n_sources, n_normal", [(12, 2, 3), (12, 3, 3), (7, 3, 2), (5, 1, 2), (4, 4, 4)])
def test_normals_are_spread_over_the_sources(count, n_sources, n_normal):
    """Case i uses source i % n_sources; normals go to the sources in turn, at random positions."""
    picked = [_normal_cases(count, n_normal, n_sources, np.random.default_rng([seed, 1])) for seed in range(20)]
    for normals in picked:
        assert len(normals) == n_normal and all(0 <= i < count for i in normals)
        per_source = np.bincount([i % n_sources for i in normals], minlength=n_sources)
        assert per_source.max() - per_source.min() <= 1
    assert len({tuple(sorted(n)) for n in picked}) > 1 or n_normal == count  # positions vary with the seed


def test_pixel_label_is_where_the_case_differs_from_its_normal(tmp_path):
    out = tmp_path / "t"
    summary = make_toy(_normals(tmp_path / "in", n=1), out, count=3, seed=5, region="brain",
                       normal_fraction=1 / 3, size=SIZE)
    normal_name = next(c.name for c in summary.cases if c.kind is None)
    normal = _load(out / "toy" / normal_name)
    for case in summary.cases:
        volume = _load(out / "toy" / case.name)
        mask = _load(out / "toy_label" / "pixel" / case.name).astype(bool)
        np.testing.assert_array_equal(mask, volume != normal)


def test_reproducible(tmp_path):
    src = _normals(tmp_path / "in")
    a = make_toy(src, tmp_path / "a", count=3, seed=11, region="brain", size=SIZE)
    b = make_toy(src, tmp_path / "b", count=3, seed=11, region="brain", size=SIZE)
    make_toy(src, tmp_path / "c", count=3, seed=12, region="brain", size=SIZE)
    assert a.cases == b.cases
    for case in a.cases:
        np.testing.assert_array_equal(_load(tmp_path / "a" / "toy" / case.name),
                                      _load(tmp_path / "b" / "toy" / case.name))
    assert any(not np.array_equal(_load(tmp_path / "a" / "toy" / x.name), _load(tmp_path / "c" / "toy" / x.name))
               for x in a.cases)


def test_challenge_form_input_is_kept(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    data = np.random.default_rng(0).random(SIZE).astype(np.float32) * 0.8 + 0.1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(src / "ready.nii.gz"))
    summary = make_toy(src / "ready.nii.gz", tmp_path / "o", count=1, seed=0, region="brain",
                       normal_fraction=1.0, size=SIZE)
    img = nib.load(str(tmp_path / "o" / "toy" / summary.cases[0].name))
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)
    np.testing.assert_allclose(img.affine, affine)


def test_errors(tmp_path):
    src = _normals(tmp_path / "in", n=1)
    with pytest.raises(ValueError, match="region"):
        make_toy(src, tmp_path / "o", count=2, seed=0)  # 30x26x20 is no challenge shape
    with pytest.raises(ValueError, match="count"):
        make_toy(src, tmp_path / "o", count=0, seed=0, region="brain")
    with pytest.raises(ValueError, match="normal_fraction"):
        make_toy(src, tmp_path / "o", count=2, seed=0, region="brain", normal_fraction=1.5)
    with pytest.raises(ValueError, match="kinds"):
        make_toy(src, tmp_path / "o", count=2, seed=0, region="brain", kinds=("tumour",))
    with pytest.raises(ValueError, match="size"):
        make_toy(src, tmp_path / "o", count=2, seed=0, region="brain", size=(4, 4, 4))
    with pytest.raises(ValueError, match="no volume files"):
        (tmp_path / "empty").mkdir()
        make_toy(tmp_path / "empty", tmp_path / "o", count=2, seed=0, region="brain")


def test_files_are_readable_by_others(tmp_path):
    """A container's non-root user must be able to read the cases (mkstemp alone gives 0600)."""
    old = os.umask(0o022)
    try:
        make_toy(_normals(tmp_path / "in", n=1), tmp_path / "o", count=1, seed=0, region="brain", size=SIZE)
    finally:
        os.umask(old)
    for path in (tmp_path / "o").rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o644, path


def test_challenge_form_input_is_used_as_inference_reads_it(tmp_path):
    """Make-toy, training and calibration share one rule: values inference would only clip
    (here 1.004) keep the volume as it is, clipped exactly as inference clips it."""
    from mood.volumes.volume_io import load_volume

    src = tmp_path / "in"
    src.mkdir()
    data = np.random.default_rng(1).random(SIZE).astype(np.float32)
    data[3, 4, 5] = 1.004
    nib.save(nib.Nifti1Image(data, np.diag([-2.0, 2.0, 2.0, 1.0])), str(src / "ready.nii.gz"))
    summary = make_toy(src, tmp_path / "o", count=1, seed=0, region="brain", normal_fraction=1.0, size=SIZE)
    case = _load(tmp_path / "o" / "toy" / summary.cases[0].name)
    np.testing.assert_array_equal(case, load_volume(src / "ready.nii.gz").data)
