"""Pictures: radiological orientation from the affine, overlays, files, errors, headless config."""
from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from mood.validation import show as show_module
from mood.validation.show import choose_slices, radiological, ras_zooms, show, to_ras

SHAPE = (24, 20, 16)


def _volume() -> np.ndarray:
    g = np.indices(SHAPE).astype(np.float32)
    r = np.sqrt(sum(((g[i] - (n - 1) / 2) / (0.4 * n)) ** 2 for i, n in enumerate(SHAPE)))
    return np.where(r < 1, 0.6, 0.0).astype(np.float32)


def test_radiological_puts_patient_right_left_and_anterior_up():
    ra = np.zeros((5, 4))  # axes (R, A): index 4 along a0 is the most right, 3 along a1 the most anterior
    ra[4, 3] = 1.0
    img = radiological(ra)
    assert img.shape == (4, 5)
    assert img[0, 0] == 1.0  # top-left: anterior and patient's right


def test_to_ras_undoes_a_flipped_header():
    data = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    lps = np.diag([-1.0, -2.0, 3.0, 1.0])
    ras_view = to_ras(data, lps)
    np.testing.assert_array_equal(ras_view, data[::-1, ::-1, :])
    np.testing.assert_allclose(ras_zooms(lps), [1.0, 2.0, 3.0])
    # a permuted header (a0 -> S, a1 -> R, a2 -> A)
    perm = np.array([[0, 2.0, 0, 0], [0, 0, 3.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(to_ras(data, perm), data.transpose(1, 2, 0))
    np.testing.assert_allclose(ras_zooms(perm), [2.0, 3.0, 1.0])


def test_choose_slices_spread_over_object_and_include_label_peak():
    vol = _volume()
    label = np.zeros(SHAPE, dtype=bool)
    label[10:13, 8:11, 5] = True
    chosen = choose_slices(vol, 4, label_ras=label)
    assert 5 in chosen and len(chosen) == 4
    assert all(np.any(vol[:, :, k] > 0) for k in chosen)


def test_show_writes_png_with_overlays(tmp_path):
    vol = _volume()
    scores = np.zeros(SHAPE, dtype=np.float32)
    scores[8:14, 6:12, 6:10] = 0.8
    label = scores > 0.5
    png = show(vol, tmp_path / "sub" / "a.png", scores=scores, label=label, n_slices=6,
               affine=np.diag([-1.0, 1.0, 2.0, 1.0]))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_reads_files(tmp_path):
    affine = np.diag([1.2, 1.2, 1.2, 1.0])
    nib.save(nib.Nifti1Image(_volume(), affine), str(tmp_path / "v.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones(SHAPE, dtype=np.uint8), affine), str(tmp_path / "l.nii.gz"))
    png = show(tmp_path / "v.nii.gz", tmp_path / "v.png", label=tmp_path / "l.nii.gz", n_slices=3)
    assert png.stat().st_size > 1000


def test_show_errors(tmp_path):
    vol = _volume()
    with pytest.raises(ValueError, match="shape"):
        show(vol, tmp_path / "x.png", scores=np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="n_slices"):
        show(vol, tmp_path / "x.png", n_slices=0)
    with pytest.raises(ValueError, match="no such file"):
        show(tmp_path / "missing.nii.gz", tmp_path / "x.png")
    with pytest.raises(ValueError, match="affine"):
        show(vol, tmp_path / "x.png", affine=np.zeros((4, 4)))
    with pytest.raises(ValueError, match="3-D"):
        show(vol[0], tmp_path / "x.png")


def test_matplotlib_config_needs_no_writable_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o500)
    monkeypatch.setenv("MPLCONFIGDIR", "recorded-so-that-teardown-restores-it")
    monkeypatch.delenv("MPLCONFIGDIR")
    monkeypatch.setenv("HOME", str(home))
    try:
        show_module.ensure_mpl_config()
        if os.access(home, os.W_OK):  # running as root: home stays writable, nothing to do
            assert "MPLCONFIGDIR" not in os.environ
        else:
            assert os.access(os.environ["MPLCONFIGDIR"], os.W_OK)
    finally:
        home.chmod(0o700)


def test_matplotlib_config_without_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLCONFIGDIR", "recorded-so-that-teardown-restores-it")
    monkeypatch.delenv("MPLCONFIGDIR")
    monkeypatch.setenv("HOME", str(tmp_path / "does" / "not" / "exist"))
    show_module.ensure_mpl_config()
    assert os.access(os.environ["MPLCONFIGDIR"], os.W_OK)
