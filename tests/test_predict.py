"""End to end: folder in, challenge outputs out, bad files reported, nothing else written."""
from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch

from mood.cli import main
from mood.detection.detector import Detector
from mood.running.predict import infer_region, predict
from mood.common.slicing import slices_to_volume
from mood.volumes.volume_io import InputError

from conftest import head_phantom, write_nifti

AFFINE = np.array([[0, 0, 1.5, -30], [-1.2, 0, 0, 40], [0, 1.1, 0, -12], [0, 0, 0, 1]], float)


@pytest.fixture
def case_dir(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_nifti(d / "a.nii.gz", head_phantom((48, 40, 24), seed=1), AFFINE)
    write_nifti(d / "b c.nii", head_phantom((36, 52, 20), seed=2))
    (d / "broken.nii.gz").write_bytes(b"not a nifti at all")
    (d / "notes.txt").write_text("ignored: not a NIfTI name")
    return d


def _listing(d):
    return sorted(p.name for p in d.iterdir())


def test_sample_cli(case_dir, tmp_path, tiny_weights, capsys):
    out = tmp_path / "out"
    before = {p: p.read_bytes() for p in case_dir.iterdir()}
    code = main(["sample", "-i", str(case_dir), "-o", str(out), "--region", "brain",
                 "--weights", str(tiny_weights), "--device", "cpu", "-q"])
    assert code == 1  # one input failed
    err = capsys.readouterr().err
    assert "broken.nii.gz" in err and "scored 2 of 3" in err and "1 failed" in err
    assert _listing(out) == ["a.nii.gz.txt", "b c.nii.txt"]
    for f in out.iterdir():
        v = float(f.read_text())
        assert 0.0 <= v < 1.0
    assert {p: p.read_bytes() for p in case_dir.iterdir()} == before  # inputs untouched


@pytest.mark.parametrize("method", ["lsr", "localiser"])
def test_pixel_cli_shapes_affines_and_determinism(case_dir, tmp_path, tiny_weights, method):
    outs = []
    for run in range(2):
        out = tmp_path / f"out{run}"
        code = main(["pixel", "-i", str(case_dir), "-o", str(out), "--region", "brain",
                     "--weights", str(tiny_weights), "--device", "cpu", "--restorations", "3",
                     "--seed", "5", "--method", method, "-q"])
        assert code == 1
        assert _listing(out) == ["a.nii.gz", "b c.nii"]
        outs.append(out)
    for name in ["a.nii.gz", "b c.nii"]:
        src, pred = nib.load(str(case_dir / name)), nib.load(str(outs[0] / name))
        assert pred.shape == src.shape
        assert np.array_equal(pred.affine, src.affine)
        data = pred.get_fdata(dtype=np.float16)
        assert data.min() >= 0 and data.max() < 1 and data.astype(np.float64).std() > 0  # float16 sums lose it
        stored = np.asarray(pred.dataobj)
        assert stored.dtype == np.float32  # at float16 precision: what the evaluator reads, exactly
        assert np.array_equal(stored, stored.astype(np.float16).astype(np.float32))
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


def test_all_good_exit_zero_and_skip_existing(tmp_path, tiny_weights):
    d = tmp_path / "in"
    d.mkdir()
    write_nifti(d / "x.nii.gz", head_phantom((40, 40, 16)))
    out = tmp_path / "out"
    args = ["sample", "-i", str(d), "-o", str(out), "--region", "abdom", "--weights", str(tiny_weights), "-q"]
    assert main(args) == 0
    (out / "x.nii.gz.txt").write_text("0.123\n")
    assert main(args + ["--skip-existing"]) == 0
    assert (out / "x.nii.gz.txt").read_text() == "0.123\n"


def test_missing_weights_say_so(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    write_nifti(d / "x.nii.gz", head_phantom((40, 40, 16)))
    code = main(["sample", "-i", str(d), "-o", str(tmp_path / "o"), "--region", "brain",
                 "--weights", str(tmp_path / "empty"), "-q"])
    assert code == 1
    assert "no weights card" in capsys.readouterr().err


def test_region_auto():
    assert infer_region((256, 256, 256)) == "brain"
    assert infer_region((512, 512, 512)) == "abdom"
    with pytest.raises(InputError, match="--region"):
        infer_region((256, 256, 200))


def test_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["pixel", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "--restorations", "0"])
    capsys.readouterr()
    # a missing input is an expected failure, not a usage error: one line, exit 1
    assert main(["sample", "-i", str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err == f"mood sample: error: {tmp_path / 'missing'}: no such file or directory\n"


def test_output_never_overwrites_input(tmp_path, tiny_weights):
    write_nifti(tmp_path / "x.nii.gz", head_phantom((40, 40, 16)))
    summary = predict("pixel", tmp_path, tmp_path, region="brain", weights=tiny_weights,
                      restorations=1, progress=False)
    assert summary.failed and "overwrite" in summary.failed[0][1]
    assert nib.load(str(tmp_path / "x.nii.gz")).get_fdata().max() > 0.4


@pytest.mark.parametrize("region, shape", [("brain", (64, 48, 40)), ("abdom", (72, 40, 33))])
def test_detector_geometry_marker(region, shape, tiny_weights):
    """Through the detector's own slicing: a marker in the input peaks at its voxel in the map."""
    det = Detector.load(region, tiny_weights, device="cpu")
    vol = np.full(shape, 0.3, np.float32)
    grid = det.slices(vol, 8).grid
    m = (shape[0] // 4, shape[1] // 2, grid.indices[3])
    vol[m[0] - 2:m[0] + 3, m[1] - 2:m[1] + 3, m[2]] = 1.0
    s = det.slices(vol, 8)
    back = slices_to_volume(s.x - s.x.median(), s.grid)  # the identity "score" through the same path
    assert back.shape == shape
    assert int(back.sum(axis=(0, 1)).argmax()) == m[2]
    plane = np.clip(back[:, :, m[2]], 0, None)
    com = [float((plane.sum(axis=1 - ax) * np.arange(shape[ax])).sum() / plane.sum()) for ax in (0, 1)]
    assert com == pytest.approx([m[0], m[1]], abs=0.75)


def test_no_stray_files(case_dir, tmp_path, tiny_weights):
    out = tmp_path / "out"
    predict("pixel", case_dir, out, region="brain", weights=tiny_weights, restorations=1, progress=False)
    assert all(not n.startswith(".") for n in os.listdir(out))


def test_reconstruction_baseline(case_dir, tmp_path, tiny_weights):
    """--method reconstruction: |x - VQVAE(x)| on the slices, its mean per volume, mapped into [0, 1)."""
    det = Detector.load("brain", tiny_weights, device="cpu")
    vol = np.asarray(nib.load(str(case_dir / "a.nii.gz")).dataobj, dtype=np.float32)
    s = det.slices(vol)
    with torch.no_grad():
        forward = det.vqvae(s.x, s.coord)[0]  # the training forward pass, straight-through latents
    err = (s.x - forward.reshape(s.x.shape)).abs()
    assert torch.allclose(det.reconstruction_error(s), err, atol=1e-5)
    mean = float(err.double().mean())
    assert det.baseline_sample(vol) == pytest.approx(mean / (mean + 1), rel=1e-5)

    out = tmp_path / "out"
    for task in ("sample", "pixel"):
        assert main([task, "-i", str(case_dir), "-o", str(out / task), "--region", "brain",
                     "--weights", str(tiny_weights), "--method", "reconstruction", "-q"]) == 1
    assert float((out / "sample" / "a.nii.gz.txt").read_text()) == pytest.approx(mean / (mean + 1), rel=1e-5)
    pred = nib.load(str(out / "pixel" / "a.nii.gz")).get_fdata(dtype=np.float32)
    expected = slices_to_volume(err / (err + 1), s.grid)
    assert pred.shape == vol.shape and 0 <= pred.min() and pred.max() < 1
    assert np.allclose(pred, expected, atol=1e-3)  # stored at float16 precision


def test_channels_last_inference_keeps_codes(tiny_weights):
    """The detector's channels-last VQ-VAE gives the codes of the model in its stored layout."""
    from mood.detection.weights import load_vqvae

    det = Detector.load("brain", tiny_weights, device="cpu")
    plain = load_vqvae(tiny_weights / "brain").eval()
    s = det.slices(head_phantom((48, 40, 24), seed=3))
    with torch.no_grad():
        assert torch.equal(det.encode(s), plain.encode(s.x, s.coord).codes)
        assert torch.allclose(det.vqvae.decode_codes(det.encode(s), s.coord),
                              plain.decode_codes(det.encode(s), s.coord), atol=1e-5)


def test_detector_owns_the_method_switch(tiny_weights):
    """``Detector.score(volume, task, method)``: what ``predict`` writes for every task and method."""
    det = Detector.load("brain", tiny_weights, device="cpu")
    vol = head_phantom((48, 40, 24), seed=4)
    assert det.score(vol, "sample", "lsr", 3) == det.score_sample(vol, 3)
    assert det.score(vol, "sample", "reconstruction", 3) == det.baseline_sample(vol, 3)
    np.testing.assert_array_equal(det.score(vol, "pixel", "lsr", 3, 2, 7), det.score_pixel(vol, 3, 2, 7))
    np.testing.assert_array_equal(det.score(vol, "pixel", "reconstruction", 3), det.baseline_pixel(vol, 3))
    with pytest.raises(ValueError, match="task"):
        det.score(vol, "voxel")
    with pytest.raises(ValueError, match="method"):
        det.score(vol, "sample", "vae")
