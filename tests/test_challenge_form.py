"""One rule for "already in challenge form": training, calibration and make-toy use such a volume
exactly as inference reads it, and convert only the others."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from mood.config import region_preset
from mood.volumes.convert import ensure_challenge_form, to_challenge_form
from mood.detection.detector import Detector
from mood.training.data import load_bank
from mood.volumes.volume_io import load_volume

from conftest import head_phantom, write_nifti

SHAPE = (48, 40, 24)
# Stored left-posterior-superior, as many scanners write: conversion would flip a0 and a1.
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _case(shape: tuple[int, int, int]) -> np.ndarray:
    """A phantom in [0, 1] with a bright marker in one corner of the object (no symmetry)."""
    data = head_phantom(shape, seed=3)
    a0, a1, a2 = (s // 3 for s in shape)
    data[a0 - 2:a0 + 2, a1 - 2:a1 + 2, a2 - 2:a2 + 2] = 1.0
    return data


@pytest.mark.parametrize("shape", [SHAPE, None], ids=["volume_shape", "brain_256"])
def test_bank_slices_of_a_challenge_form_volume_are_the_inference_slices(tmp_path, tiny_weights, shape):
    """Training sees bit for bit the slices the detector scores: same planes, same in-plane
    orientation (no reorientation to RAS), same crop and intensities, same positions."""
    det = Detector.load("brain", tiny_weights, device="cpu")
    target = shape or region_preset("brain").challenge_shape
    path = write_nifti(tmp_path / "case.nii", _case(target), LPS)
    assert nib.aff2axcodes(LPS) != ("R", "A", "S")
    bank = load_bank(path, det.config, shape=shape)
    s = det.slices(load_volume(path).data)
    idx = list(s.grid.indices)
    assert bank.depth == target[2]
    assert torch.equal(bank.slices[idx], s.x)
    assert torch.equal(bank.positions[idx], s.coord)


def test_challenge_form_is_used_as_inference_reads_it(tmp_path):
    data = _case(SHAPE)
    data[0, 0, 0] = 1.004  # inference clips this (within tolerance of [0, 1]) rather than rescaling
    path = write_nifti(tmp_path / "ready.nii.gz", data, LPS)
    got, affine = ensure_challenge_form(path, "brain", shape=SHAPE)
    inference = load_volume(path)
    np.testing.assert_array_equal(got, inference.data)
    np.testing.assert_array_equal(affine, inference.affine)
    assert got.max() == 1.0


def test_other_volumes_are_converted(tmp_path):
    data = _case(SHAPE)
    path = write_nifti(tmp_path / "case.nii.gz", data, LPS)
    # another shape: converted onto the requested grid, RAS
    got, affine = ensure_challenge_form(path, "brain", shape=(24, 24, 24))
    want, want_affine = to_challenge_form(path, "brain", shape=(24, 24, 24))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(affine, want_affine)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    # the right shape but scanner units (inference would rescale them): converted too
    units = write_nifti(tmp_path / "units.nii.gz", data * 800.0, LPS)
    got, affine = ensure_challenge_form(units, "brain", shape=SHAPE)
    want, want_affine = to_challenge_form(units, "brain", shape=SHAPE)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(affine, want_affine)
