"""The one reader and the one lister: every format, every caller, the same checks."""
from __future__ import annotations

import numpy as np
import pytest

from mood.config import region_of_shape
from mood.training.data import split_files
from mood.volumes.volume_io import (NIFTI_SUFFIXES, READABLE_SUFFIXES, InputError, list_inputs, load_volume,
                            read_volume)

from conftest import head_phantom, write_nifti


def _mha(path, data: np.ndarray, spacing=(1.0, 1.0, 1.0)):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))  # (z, y, x)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def test_one_reader_for_nifti_and_other_formats(tmp_path):
    data = head_phantom((20, 16, 12)) * 500.0  # scanner units
    nifti = read_volume(write_nifti(tmp_path / "a.nii.gz", data, np.diag([-1.0, -1.0, 1.0, 1.0])))
    other = read_volume(_mha(tmp_path / "a.mha", data))
    for volume in (nifti, other):
        assert volume.data.shape == (20, 16, 12) and volume.data.dtype == np.float32
        np.testing.assert_array_equal(volume.data, data)  # the file's own units
    # ITK's LPS world becomes RAS: the identity direction of the .mha reads as L, P, S
    np.testing.assert_allclose(other.affine, np.diag([-1.0, -1.0, 1.0, 1.0]))
    # inference reads NIfTI only, brought into [0, 1]
    assert 0.0 <= load_volume(tmp_path / "a.nii.gz").data.min() <= load_volume(tmp_path / "a.nii.gz").data.max() <= 1.0
    with pytest.raises(InputError, match=r"not a NIfTI file name \(.nii or .nii.gz\)"):
        load_volume(tmp_path / "a.mha")


def test_reader_checks_other_formats_before_reading_their_data(tmp_path):
    path = _mha(tmp_path / "big.mha", np.zeros((10, 10, 10), np.float32))
    with pytest.raises(InputError, match="exceed the limit of 999"):
        read_volume(path, max_voxels=999)
    with pytest.raises(InputError, match="not a volume file name"):
        read_volume(write_nifti(tmp_path / "x.nii", np.zeros((4, 4, 4), np.float32)).rename(tmp_path / "x.png"))


def test_one_lister(tmp_path):
    for name in ("b.nii.gz", "a.mha", "c.nrrd", "d.nii", ".hidden.nii", "notes.txt", "UPPER.NII.GZ"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_inputs(tmp_path)] == ["b.nii.gz", "d.nii"]  # inference: NIfTI
    assert [p.name for p in list_inputs(tmp_path, READABLE_SUFFIXES)] == ["a.mha", "b.nii.gz", "c.nrrd", "d.nii"]
    assert list_inputs(tmp_path / "a.mha", NIFTI_SUFFIXES) == [tmp_path / "a.mha"]  # a file is taken as given
    with pytest.raises(InputError, match="no such file"):
        list_inputs(tmp_path / "missing")


def test_training_reads_every_format(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", head_phantom((12, 12, 12)))
    _mha(tmp_path / "b.mha", head_phantom((12, 12, 12)))
    train, held = split_files(tmp_path, ["b"])
    assert [p.name for p in train] == ["a.nii.gz"] and [p.name for p in held] == ["b.mha"]


def test_one_shape_to_region_lookup():
    assert region_of_shape((256, 256, 256)) == "brain"
    assert region_of_shape((512, 512, 512)) == "abdom"
    assert region_of_shape((256, 256, 200)) is None
