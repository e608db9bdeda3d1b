"""scripts/fetch_extra_brains.py, offline: the converters, the licence table and the archive check."""
from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


fetch = _module("fetch_extra_brains")


def test_brainbrowser_volume_orders_axes_and_builds_the_affine():
    rng = np.random.default_rng(0)
    xyz = rng.integers(0, 255, size=(4, 5, 6), dtype=np.uint8)  # (x, y, z)
    stored = np.transpose(xyz, (2, 1, 0))  # the file's order: z, y, x
    header = {"order": ["zspace", "yspace", "xspace"],
              "xspace": {"space_length": 4, "step": -1.0, "start": 10.0, "direction_cosines": [1, 0, 0]},
              "yspace": {"space_length": 5, "step": 2.0, "start": -3.0, "direction_cosines": [0, 1, 0]},
              "zspace": {"space_length": 6, "step": 1.5, "start": 0.5, "direction_cosines": [0, 0, 1]}}
    img = fetch.brainbrowser_volume(gzip.compress(json.dumps(header).encode()), gzip.compress(stored.tobytes()))
    assert np.array_equal(np.asanyarray(img.dataobj), xyz)
    assert np.allclose(img.affine, [[-1, 0, 0, 10], [0, 2, 0, -3], [0, 0, 1.5, 0.5], [0, 0, 0, 1]])
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")


def test_nifti_volume_drops_a_trailing_unit_axis_and_keeps_voxels_and_affine():
    data = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5, 1)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = [-10, 20, 5]
    raw = gzip.compress(nib.Nifti1Image(data, affine).to_bytes())
    img = fetch.nifti_volume(raw)
    assert img.shape == (3, 4, 5)
    assert np.array_equal(np.asanyarray(img.dataobj), data[..., 0]) and np.allclose(img.affine, affine)
    with pytest.raises(ValueError, match="3D"):
        fetch.nifti_volume(nib.Nifti1Image(np.zeros((3, 4, 5, 2), np.float32), affine).to_bytes())


def test_readme_rows_are_what_export_weights_reads(tmp_path):
    shared = tmp_path / "shared" / "brain"
    shared.mkdir(parents=True)
    (shared / "a.nii.gz").write_bytes(b"a")
    (tmp_path / "shared" / "README.md").write_text(
        "| file | what | grid | origin | licence | use |\n|---|---|---|---|---|---|\n"
        "| brain/a.nii.gz | one head | 1 | somewhere | MIT | train |\n| abdom/b.nii.gz | a ct | 1 | x | y | train |\n")
    out = tmp_path / "data" / "extra"
    out.mkdir(parents=True)
    used = [s for s in fetch.SOURCES if s.use == "train"][:1] + [s for s in fetch.SOURCES if s.use != "train"][:1]
    fetch.write_readme(out, [shared], used)
    known = _module("export_weights").licences(out)
    assert known["a.nii.gz"] == "MIT; somewhere"  # the linked folder's row, renamed to this folder
    assert known[f"{used[0].name}.nii.gz"].startswith(used[0].licence)
    assert f"measure_only/{used[1].name}.nii.gz" in known and not any(k.startswith("b.nii") for k in known)


def test_an_archive_with_another_digest_is_refused(tmp_path):
    src = next(s for s in fetch.SOURCES if s.tool == "npm")
    (tmp_path / f"{src.package}-{src.version}.tgz").write_bytes(b"not the package")
    with pytest.raises(RuntimeError, match="sha256"):
        fetch.download(src, tmp_path)
