"""Conversion to the challenge's form: geometry round trips, intensities, formats, errors."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mood.volumes.convert import convert_folder, resample, strip_suffix, to_challenge_form
from mood.volumes.volume_io import read_volume

SHAPE = (40, 36, 24)
ZOOMS = (1.5, 1.5, 2.5)
# The file's axes point Left, Posterior, Superior (a common scanner orientation, not RAS).
LPS_AFFINE = np.array([[-ZOOMS[0], 0, 0, 30.0],
                       [0, -ZOOMS[1], 0, 25.0],
                       [0, 0, ZOOMS[2], -30.0],
                       [0, 0, 0, 1]])
MARKER_WORLD = np.array([-8.0, 6.0, 4.0])  # patient's left, anterior, superior of the centre


def _head(ct: bool = False, seed: int = 0) -> np.ndarray:
    """An ellipsoidal 'head' in the LPS grid with a bright marker at MARKER_WORLD."""
    rng = np.random.default_rng(seed)
    ijk = np.indices(SHAPE).reshape(3, -1).astype(np.float64)
    xyz = (LPS_AFFINE[:3, :3] @ ijk + LPS_AFFINE[:3, 3:]).reshape(3, *SHAPE)
    centre = LPS_AFFINE[:3, :3] @ ((np.asarray(SHAPE) - 1) / 2) + LPS_AFFINE[:3, 3]
    r = np.sqrt(sum(((xyz[i] - centre[i]) / s) ** 2 for i, s in enumerate((22.0, 20.0, 24.0))))
    marker = np.sqrt(sum((xyz[i] - centre[i] - MARKER_WORLD[i]) ** 2 for i in range(3))) < 3.5
    if ct:
        data = np.where(r < 1, 40.0, -1000.0) + np.where(marker, 900.0, 0.0)
    else:
        data = np.where(r < 1, 300.0 + 20 * rng.standard_normal(SHAPE), 2 * rng.random(SHAPE))
        data[marker] = 900.0
    return data.astype(np.float32)


def _save(path: Path, data: np.ndarray, affine: np.ndarray = LPS_AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _marker_index(affine: np.ndarray) -> tuple[int, ...]:
    centre = LPS_AFFINE[:3, :3] @ ((np.asarray(SHAPE) - 1) / 2) + LPS_AFFINE[:3, 3]
    idx = np.linalg.inv(affine) @ np.append(centre + MARKER_WORLD, 1.0)
    return tuple(int(round(v)) for v in idx[:3])


def test_mri_geometry_and_intensities(tmp_path):
    path = _save(tmp_path / "head.nii.gz", _head())
    data, affine = to_challenge_form(path, "brain", shape=(32, 32, 32))
    assert data.shape == (32, 32, 32) and data.dtype == np.float32
    assert 0.0 <= data.min() and data.max() <= 1.0
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    np.testing.assert_allclose(zooms, zooms[0])  # isotropic
    # the largest extent (S: 48 mm ellipsoid) times the margin spans the grid
    assert zooms[0] == pytest.approx(48 * 1.1 / 32, rel=0.1)
    # the marker lands where the affine says it is: the geometry is consistent
    i, j, k = _marker_index(affine)
    assert data[i, j, k] > 0.9
    assert data[0, 0, 0] < 0.02 and data[-1, -1, -1] < 0.02  # background near 0
    # 99.5th percentile of the head maps to 1: tissue (300 +- 20) lands just below it
    assert 0.7 < float(np.median(data[12:20, 12:20, 12:20])) < 0.95


def test_same_object_from_ras_and_lps_files(tmp_path):
    head = _head()
    lps = _save(tmp_path / "lps.nii.gz", head)
    # the same voxels stored RAS: flip a0 and a1 and adjust the affine
    ras_affine = LPS_AFFINE @ np.array([[-1, 0, 0, SHAPE[0] - 1], [0, -1, 0, SHAPE[1] - 1],
                                        [0, 0, 1, 0], [0, 0, 0, 1]])
    ras = _save(tmp_path / "ras.nii.gz", np.ascontiguousarray(head[::-1, ::-1]), ras_affine)
    a, aff_a = to_challenge_form(lps, "brain", shape=(24, 24, 24))
    b, aff_b = to_challenge_form(ras, "brain", shape=(24, 24, 24))
    np.testing.assert_allclose(aff_a, aff_b, atol=1e-6)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_simpleitk_formats_match_nifti(tmp_path, suffix):
    import SimpleITK as sitk

    head = _head()
    nifti = _save(tmp_path / "head.nii.gz", head)
    image = sitk.GetImageFromArray(head.transpose(2, 1, 0))  # sitk arrays are (z, y, x)
    flip = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS
    image.SetSpacing(ZOOMS)
    image.SetOrigin(tuple(flip @ LPS_AFFINE[:3, 3]))
    image.SetDirection(tuple((flip @ LPS_AFFINE[:3, :3] / np.asarray(ZOOMS)).ravel()))
    other = tmp_path / f"head{suffix}"
    sitk.WriteImage(image, str(other))
    a, aff_a = to_challenge_form(nifti, "brain", shape=(24, 24, 24))
    b, aff_b = to_challenge_form(other, "brain", shape=(24, 24, 24))
    np.testing.assert_allclose(aff_a, aff_b, atol=1e-4)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_ct_window(tmp_path):
    path = _save(tmp_path / "ct.nii.gz", _head(ct=True))
    data, affine = to_challenge_form(path, "abdom", shape=(24, 24, 24))
    assert data[0, 0, 0] == 0.0  # air, and outside the scan
    assert float(np.median(data[10:14, 10:14, 10:14])) == pytest.approx((40 + 1000) / 2000, abs=0.01)
    i, j, k = _marker_index(affine)
    assert data[i, j, k] > 0.8


def test_4d_single_volume_and_orientation_override(tmp_path):
    head = _head()
    path = _save(tmp_path / "head4d.nii.gz", head[..., None])
    a, _ = to_challenge_form(path, "brain", shape=(20, 20, 20))
    # claiming the axes are RAS instead of LPS flips a0 and a1 of the result
    b, aff_b = to_challenge_form(path, "brain", shape=(20, 20, 20), orientation="RAS")
    assert nib.aff2axcodes(aff_b) == ("R", "A", "S")
    np.testing.assert_allclose(b, a[::-1, ::-1], atol=1e-4)


def test_anti_aliasing_when_shrinking():
    stripes = np.zeros((64, 8, 8), dtype=np.float32)
    stripes[::2] = 1.0  # the highest frequency along a0
    new = np.diag([4.0, 1.0, 1.0, 1.0])
    # output voxel centres on the bright stripes (0, 4, 8, ...): without a pre-filter all read 1
    smooth = resample(stripes.copy(), np.eye(4), new, (16, 8, 8))
    aliased = resample(stripes.copy(), np.eye(4), new, (16, 8, 8), anti_alias=False)
    assert float(smooth[1:-1].std()) < 0.05 and abs(float(smooth[1:-1].mean()) - 0.5) < 0.05
    assert float(aliased.min()) == 1.0


def test_convert_folder_skips_bad_files(tmp_path, caplog):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _save(src / "a.nii.gz", _head())
    _save(src / "b.nii", _head(seed=1))
    (src / "broken.nii.gz").write_bytes(b"junk")
    (src / "notes.txt").write_text("not a volume")
    written = convert_folder(src, out, "brain", shape=(16, 16, 16))
    assert [p.name for p in written] == ["a.nii.gz", "b.nii.gz"]
    assert nib.load(str(written[0])).shape == (16, 16, 16)
    assert "broken.nii.gz" in caplog.text


def test_strip_suffix():
    assert [strip_suffix(n) for n in ("a.nii.gz", "b.nii", "c.nrrd", "d.MHA", "e.txt")] == ["a", "b", "c", "d", "e.txt"]


# -- errors ----------------------------------------------------------------------------------
def test_errors(tmp_path):
    path = _save(tmp_path / "head.nii.gz", _head())
    with pytest.raises(ValueError, match="region"):
        to_challenge_form(path, "liver")
    with pytest.raises(ValueError, match="no such file"):
        to_challenge_form(tmp_path / "missing.nii.gz", "brain")
    with pytest.raises(ValueError, match="shape"):
        to_challenge_form(path, "brain", shape=(16, 16))
    with pytest.raises(ValueError, match="modality"):
        to_challenge_form(path, "brain", modality="pet")
    with pytest.raises(ValueError, match="orientation"):
        to_challenge_form(path, "brain", shape=(16, 16, 16), orientation="RRS")
    with pytest.raises(ValueError, match="margin"):
        to_challenge_form(path, "brain", margin=0.5)
    flat = _save(tmp_path / "flat.nii.gz", np.zeros((8, 8), dtype=np.float32), np.eye(4))
    with pytest.raises(ValueError, match="3-D"):
        read_volume(flat)
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="not a volume file name"):
        read_volume(tmp_path / "x.png")
    with pytest.raises(ValueError, match="no volume files"):
        (tmp_path / "empty").mkdir()
        convert_folder(tmp_path / "empty", tmp_path / "o", "brain")


def test_non_finite_values_are_replaced(tmp_path):
    head = _head()
    head[0, 0, 0] = np.nan
    head[1, 1, 1] = np.inf
    volume = read_volume(_save(tmp_path / "nan.nii.gz", head))
    assert np.isfinite(volume.data).all()
    assert any("non-finite" in note for note in volume.notes)
