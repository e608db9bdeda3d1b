"""Hardening: bad and odd inputs, faults and kills; nothing lost, nothing silent.

The corpus below (one input folder, one file per case) goes through ``mood.cli.main`` as the
challenge would run it. Every case ends in exactly one of two ways: a one-line ``ERROR <file>:
<reason>`` (and no output), or an output (sample: one value in [0, 1); pixel: a float32 NIfTI,
slope 1 and intercept 0, that ``nib.load(p).get_fdata(dtype=np.float16)`` reads with the input's
exact shape and affine). The other cases of the run are scored, the summary counts are exact, the
exit status is 1 when anything failed, every warning names its file, and no input is touched.

Pixel runs use ``fast_weights``: the tiny test models with a pixel threshold nothing exceeds,
so restoration takes one prior pass and the corpus runs in seconds; the real resampling path
(``tiny_weights``) is covered by the determinism test and by test_predict.py.
"""
from __future__ import annotations

import builtins
import fcntl
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
from nibabel.openers import ImageOpener

from mood.cli import main
from mood.detection.detector import Detector
from mood.running.predict import printable
from mood.volumes.volume_io import remove_stale_temporaries

from conftest import head_phantom, make_weights

SHAPE = (24, 20, 16)
FAST = ["--restorations", "1", "--slices", "3", "-q"]
GOOD = head_phantom(SHAPE, seed=3)
OBLIQUE = np.array([[0.9, -0.35, 0.3, -20.0], [0.3, 1.1, -0.25, 31.0],
                    [-0.2, 0.4, 1.9, -7.5], [0, 0, 0, 1]])  # rotated, anisotropic and sheared
PERMUTED_FLIPPED = np.array([[0, 0, -2.0, 40], [0, -1.0, 0, 12], [-1.2, 0, 0, 5], [0, 0, 0, 1]])
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_C, _S = np.cos(0.4), np.sin(0.4)
ROTATED = (np.array([[_C, -_S, 0, 10], [_S, _C, 0, -4], [0, 0, 1, 2], [0, 0, 0, 1]])
           @ np.diag([1.1, 0.9, 2.5, 1]))  # rigid with zooms: what a qform can hold


@pytest.fixture(scope="session")
def fast_weights(tmp_path_factory) -> Path:
    """Tiny brain models whose pixel threshold no code exceeds (restoration in one pass)."""
    root = tmp_path_factory.mktemp("fast-weights")
    make_weights(root, "brain", seed=1, lambda_s=2.0, lambda_p=1e6)
    return root


# -- the corpus ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path], object]  # writes the case at the given path
    error: str | None = None  # regex of the one-line reason; None: must be scored
    note: str | None = None  # regex of a warning the case must give

    @property
    def ok(self) -> bool:
        return self.error is None


def _img(data, affine=None, cls=nib.Nifti1Image, slope_inter=None, qform_only=False):
    affine = np.eye(4) if affine is None else affine

    def write(path: Path):
        img = cls(data, affine)
        if qform_only:
            img.set_sform(None, code=0)
            img.set_qform(affine, code=1)
        if slope_inter:
            img.header.set_slope_inter(*slope_inter)
        nib.save(img, str(path))
    return write


def _bytes(data: bytes):
    return lambda path: path.write_bytes(data)


def _huge_header() -> bytes:
    """A few hundred bytes whose header promises 32767^3 float32 voxels (128 TiB)."""
    header = nib.Nifti1Header()
    header.set_data_shape((32767, 32767, 32767))
    header.set_data_dtype(np.float32)
    return gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 256, mtime=0)


def _extension_bomb() -> bytes:
    """80 kB of .nii.gz whose header "extension" expands to 80 MiB (gzip members concatenate)."""
    size = 80 * 2**20
    header = nib.Nifti1Header()
    header.set_data_shape((4, 4, 4))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352 + size
    extension = b"\x01\0\0\0" + np.array([size, 0], "<i4").tobytes()
    return (gzip.compress(header.binaryblock + extension, mtime=0)
            + gzip.compress(bytes(2**20), mtime=0) * 80 + gzip.compress(bytes(256), mtime=0))


def _ct_like():
    return (GOOD * 4000 - 1024).astype(np.float32)


def _nan_inf():
    vol = GOOD.copy()
    vol[0, 0, :3] = [np.nan, np.inf, -np.inf]
    return vol


def _float32_extremes():
    """Values across (almost) the whole float32 range: their span overflows float32."""
    return (GOOD.astype(np.float64) / GOOD.max() * 6e38 - 3e38).astype(np.float32)


def _zero_pixdim(path: Path):
    img = nib.Nifti1Image(GOOD, None)  # no qform/sform: the affine comes from pixdim alone
    img.header.set_zooms((0.0, 0.0, 0.0))
    nib.save(img, str(path))


def _directory(path: Path):
    path.mkdir()
    (path / "inner.nii").write_bytes(RAW)


def _symlink(target: str):
    return lambda path: path.symlink_to(path.parent / target)


def _unreadable(path: Path):
    path.write_bytes(gzip.compress(RAW, mtime=0))
    path.chmod(0)


RNG_BYTES = np.random.default_rng(7).bytes(600)
RAW = nib.Nifti1Image(GOOD, np.eye(4)).to_bytes()
RGB = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])

CORPUS = [
    Case("good.nii.gz", _img(GOOD)),
    Case("truncated.nii.gz", _bytes(gzip.compress(RAW, mtime=0)[:5000]), r"truncated or corrupt data"),
    Case("truncated.nii", _bytes(RAW[:4000]), r"truncated or corrupt data"),
    Case("gzip-garbage.nii.gz", _bytes(b"\x1f\x8b\x08\x00" + RNG_BYTES), r"not a readable NIfTI"),
    Case("plain-text.nii.gz", _bytes(b"patient 17, see scan from Monday\n"), r"not a readable NIfTI"),
    Case("zero-bytes.nii.gz", _bytes(b""), r"empty file"),
    Case("flat-2d.nii.gz", _img(GOOD[:, :, 5]), r"expected a 3-D volume .*got shape \(24, 20\)"),
    Case("three-volumes-4d.nii.gz", _img(np.stack([GOOD] * 3, axis=-1)),
         r"expected a 3-D volume .*got shape \(24, 20, 16, 3\)"),
    Case("one-volume-4d.nii.gz", _img(GOOD[..., None])),
    Case("nan-inf.nii.gz", _img(_nan_inf()), note=r"3 non-finite voxels \(NaN/Inf\) replaced"),
    Case("all-nan.nii.gz", _img(np.full(SHAPE, np.nan, np.float32)), r"no finite voxel values"),
    Case("all-zero.nii.gz", _img(np.zeros(SHAPE, np.float32))),
    Case("constant.nii.gz", _img(np.full(SHAPE, 0.4, np.float32))),
    Case("ct-range.nii.gz", _img(_ct_like()), note=r"values in \[-1024, 177\d\] are outside \[0, 1\]"),
    Case("float32-extremes.nii.gz", _img(_float32_extremes()), note=r"are outside \[0, 1\]; rescaled"),
    Case("int16-scaled.nii.gz", _img((GOOD * 3000).astype(np.int16), slope_inter=(1 / 3000, 0.0))),
    Case("uint8-scaled.nii", _img((GOOD * 255).astype(np.uint8), slope_inter=(1 / 255, 0.0))),
    Case("float64-scaled.nii.gz", _img(GOOD.astype(np.float64), slope_inter=(2.0, -0.5)),
         note=r"outside \[0, 1\]; rescaled"),
    Case("huge-dims.nii.gz", _bytes(_huge_header()),
         r"35,181,150,961,663 voxels \(32767, 32767, 32767\) exceed the limit of 268,435,456 "
         r"\(raise it with --max-voxels or MOOD_MAX_VOXELS"),
    Case("extension-bomb.nii.gz", _bytes(_extension_bomb()),
         r"header and extensions of 83,886,432 bytes \(vox_offset\) exceed the limit of 67,108,864"),
    Case("non-cubic.nii.gz", _img(head_phantom((30, 14, 9), seed=4), np.diag([0.7, 1.3, 3.0, 1]))),
    Case("oblique-sheared.nii.gz", _img(GOOD, OBLIQUE)),
    Case("permuted-flipped.nii", _img(GOOD, PERMUTED_FLIPPED)),
    Case("lps.nii.gz", _img(GOOD, LPS)),
    Case("qform-only-rotated.nii.gz", _img(GOOD, ROTATED, qform_only=True)),
    Case("nifti2.nii.gz", _img(GOOD, OBLIQUE, cls=nib.Nifti2Image)),
    Case("nifti2-int16.nii", _img((GOOD * 1000).astype(np.int16), LPS, cls=nib.Nifti2Image,
                                  slope_inter=(1e-3, 0.0))),
    Case("zero-pixdim.nii.gz", _zero_pixdim,
         note=r"header: pixdim\[1,2,3\] should be non-zero"),
    Case("directory.nii.gz", _directory, r"not a regular file"),
    Case("link-to-good.nii.gz", _symlink("good.nii.gz")),
    Case("link-broken.nii.gz", _symlink("no-such-target.nii.gz"),
         r"no such file \(or a broken symlink\)"),
    Case("with space.nii.gz", _img(GOOD)),
    Case("ünïcødé-脑.nii.gz", _img(GOOD)),
    Case("-leading-dash.nii.gz", _img(GOOD)),
    Case(os.fsdecode(b"latin1-\xe9.nii.gz"), _img(GOOD)),  # not UTF-8: shown as \xe9
    Case(os.fsdecode(b"new\nline-\xff.nii.gz"), _bytes(b"junk"), r"not a readable NIfTI"),
    Case("unreadable.nii.gz", _unreadable, r"permission denied"),
    Case("complex.nii.gz", _img(GOOD.astype(np.complex64)),
         r"complex data \(complex64\) are not supported"),
    Case("rgb.nii.gz", _img(RGB), r"colour \(RGB/RGBA\) data are not supported"),
]
IGNORED = ["notes.txt", "UPPER.NII.GZ"]  # read by no one, but named in a warning


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus") / "in"
    folder.mkdir()
    for case in CORPUS:
        case.make(folder / case.name)
    for name in IGNORED:
        (folder / name).write_text("not an input\n")
    return folder


@pytest.fixture
def unreadable_denied(monkeypatch):
    """Root reads a chmod 000 file anyway: then refuse opening such files as the kernel would for
    anyone else (nibabel opens .nii.gz through ``builtins.open``)."""
    if os.geteuid() != 0:
        return
    import importlib

    for module in ("nibabel._compression", "nibabel.openers"):  # (where it lives varies by version)
        module = importlib.import_module(module)
        if hasattr(module, "HAVE_INDEXED_GZIP"):  # indexed_gzip opens files in C: use gzip
            monkeypatch.setattr(module, "HAVE_INDEXED_GZIP", False)
    real_open = builtins.open

    def open_as_user(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)):
            try:
                denied = not os.stat(file).st_mode & 0o444
            except OSError:
                denied = False
            if denied:
                raise PermissionError(13, "Permission denied", os.fsdecode(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_as_user)


def _snapshot(folder: Path) -> dict[str, tuple]:
    state = {}
    for p in folder.iterdir():
        st = p.lstat()
        readable = p.is_file() and not p.is_symlink() and st.st_mode & 0o444
        state[p.name] = (st.st_mode, st.st_size, st.st_mtime_ns, p.read_bytes() if readable else None)
    return state


def _raw_header(path: Path) -> nib.Nifti1Header | nib.Nifti2Header:
    """The header as stored (nib.load moves scl_slope/scl_inter into the data proxy)."""
    with ImageOpener(str(path)) as f:
        sizeof_hdr = int(np.frombuffer(f.read(4), "<i4")[0])
        f.seek(0)
        return (nib.Nifti2Header if sizeof_hdr == 540 else nib.Nifti1Header).from_fileobj(f)


def _check_corpus_run(task: str, corpus: Path, out: Path, code: int, err: str, records) -> None:
    ok = [c for c in CORPUS if c.ok]
    bad = [c for c in CORPUS if not c.ok]
    lines = err.splitlines()
    assert code == 1
    # stderr: one ERROR line per failed case, then the summary; nothing else.
    assert re.fullmatch(rf"scored {len(ok)} of {len(ok) + len(bad)} volume\(s\), {len(bad)} failed in "
                        r"[0-9.]+ s", lines[-1]), lines[-1]
    errors = lines[:-1]
    assert all(line.startswith("ERROR ") for line in errors), errors
    assert len(errors) == len(bad), errors
    for case in bad:
        prefix = f"ERROR {printable(corpus / case.name)}: "
        mine = [line for line in errors if line.startswith(prefix)]
        assert len(mine) == 1, (case.name, errors)
        assert re.search(case.error, mine[0][len(prefix):]), mine[0]
    # warnings: each names its file (or lists the ignored entries); the expected ones are there.
    warnings = [r.getMessage() for r in records if r.levelname == "WARNING"]
    names = {printable(c.name) for c in ok}
    for message in warnings:
        assert message.startswith("ignoring 2 entries of ") or message.split(": ")[0] in names, message
    assert any(m.startswith("ignoring 2 entries") and m.endswith(": UPPER.NII.GZ, notes.txt")
               for m in warnings), warnings
    for case in ok:
        if case.note:
            assert any(m.startswith(f"{printable(case.name)}: ") and re.search(case.note, m)
                       for m in warnings), (case.name, warnings)
    # outputs: exactly one per scored case, complete and valid.
    suffix = ".txt" if task == "sample" else ""
    assert sorted(os.listdir(out)) == sorted(c.name + suffix for c in ok)
    for case in ok:
        pred_path = out / (case.name + suffix)
        if task == "sample":
            text = pred_path.read_text()
            assert text.endswith("\n") and text.count("\n") == 1
            assert 0.0 <= float(text) < 1.0, (case.name, text)
            continue
        src, pred = nib.load(str(corpus / case.name)), nib.load(str(pred_path))
        values = pred.get_fdata(dtype=np.float16)  # as the challenge reads it
        assert values.shape == src.shape, case.name
        assert np.array_equal(pred.affine, src.affine), case.name
        assert type(pred) is type(src), case.name
        exact = np.asarray(pred.dataobj)
        assert exact.dtype == np.float32 and 0.0 <= exact.min() and exact.max() < 1.0, case.name
        assert 0.0 <= values.min() and values.max() <= 1.0
        raw_pred, raw_src = _raw_header(pred_path), _raw_header(corpus / case.name)
        assert raw_pred.get_data_dtype() == np.float32
        assert (float(raw_pred["scl_slope"]), float(raw_pred["scl_inter"])) == (1.0, 0.0), case.name
        for code_name in ("qform_code", "sform_code"):
            assert raw_pred[code_name] == raw_src[code_name], (case.name, code_name)


@pytest.mark.parametrize("method", ["lsr", "localiser"])
@pytest.mark.parametrize("task", ["sample", "pixel"])
def test_corpus(task, method, corpus, tmp_path, tiny_weights, fast_weights, unreadable_denied, capsys, caplog):
    caplog.set_level("INFO", logger="mood")
    before = _snapshot(corpus)
    out = tmp_path / "out"
    weights = tiny_weights if task == "sample" else fast_weights
    options = ["--slices", "3", "-q"] if task == "sample" else FAST
    code = main([task, "-i", str(corpus), "-o", str(out), "--region", "brain",
                 "--weights", str(weights), "--method", method, *options])
    records = [r for r in caplog.records if r.name == "mood"]
    _check_corpus_run(task, corpus, out, code, capsys.readouterr().err, records)
    assert _snapshot(corpus) == before  # inputs untouched


def test_single_file_input_with_a_leading_dash(tmp_path, tiny_weights, monkeypatch, capsys):
    """``--input=-x.nii.gz`` (argparse would read ``-i -x.nii.gz`` as an option) is scored."""
    monkeypatch.chdir(tmp_path)
    _img(GOOD)(tmp_path / "-x.nii.gz")
    code = main(["sample", "--input=-x.nii.gz", "--output=-out", "--region", "brain",
                 "--weights", str(tiny_weights), "--slices", "3", "-q"])
    assert code == 0, capsys.readouterr().err
    assert 0.0 <= float((tmp_path / "-out" / "-x.nii.gz.txt").read_text()) < 1.0


# -- faults inside the run ----------------------------------------------------------------------
def _two_cases(folder: Path) -> Path:
    folder.mkdir()
    _img(GOOD)(folder / "a.nii.gz")
    _img(head_phantom((20, 24, 12), seed=5))(folder / "b.nii.gz")
    return folder


def test_unexpected_exception_in_one_case_does_not_stop_the_run(tmp_path, tiny_weights, monkeypatch,
                                                                capsys):
    real = Detector.score_sample

    def flaky(self, volume, n_slices=None):
        if volume.shape == SHAPE:
            raise TypeError("something nobody planned for")
        return real(self, volume, n_slices)

    monkeypatch.setattr(Detector, "score_sample", flaky)
    out = tmp_path / "out"
    code = main(["sample", "-i", str(_two_cases(tmp_path / "in")), "-o", str(out), "--region", "brain",
                 "--weights", str(tiny_weights), "--slices", "3", "--method", "lsr", "-q"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert err[0].endswith("a.nii.gz: unexpected TypeError: something nobody planned for")
    assert err[1].startswith("scored 1 of 2 volume(s), 1 failed")
    assert os.listdir(out) == ["b.nii.gz.txt"]


@pytest.mark.parametrize("method", ["lsr", "localiser"])
@pytest.mark.parametrize("bad", [float("nan"), 1.5, -0.25])
def test_a_score_outside_0_1_is_never_written(bad, method, tmp_path, tiny_weights, monkeypatch, capsys):
    for name in ("score_sample", "localiser_sample"):
        monkeypatch.setattr(Detector, name, lambda self, volume, n=None: bad)
    for name in ("score_pixel", "localiser_pixel"):
        monkeypatch.setattr(Detector, name, lambda self, volume, *a: np.full(volume.shape, bad, np.float32))
    for task in ("sample", "pixel"):
        out = tmp_path / task
        code = main([task, "-i", str(_two_cases(tmp_path / f"in-{task}")), "-o", str(out),
                     "--region", "brain", "--weights", str(tiny_weights), "--method", method, "-q"])
        err = capsys.readouterr().err
        assert code == 1 and err.count("internal error: scores in") == 2, err
        assert "scored 0 of 2 volume(s), 2 failed" in err
        assert os.listdir(out) == []


# -- the memory guard ---------------------------------------------------------------------------
@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """File names whose voxel data nibabel reads (every read goes through ArrayProxy)."""
    from nibabel.arrayproxy import ArrayProxy

    seen: list[str] = []
    real = ArrayProxy._get_scaled

    def spy(self, *args, **kwargs):
        seen.append(Path(str(self.file_like)).name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ArrayProxy, "_get_scaled", spy)
    return seen


def test_max_voxels_refuses_before_reading(tmp_path, tiny_weights, reads, capsys):
    folder = _two_cases(tmp_path / "in")  # a: 24x20x16 = 7,680 voxels; b: 20x24x12 = 5,760
    code = main(["sample", "-i", str(folder), "-o", str(tmp_path / "out"), "--region", "brain",
                 "--weights", str(tiny_weights), "--slices", "3", "--max-voxels", "6000", "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert ("a.nii.gz: 7,680 voxels (24, 20, 16) exceed the limit of 6,000 (raise it with "
            "--max-voxels") in err
    assert "scored 1 of 2 volume(s), 1 failed" in err
    assert reads == ["b.nii.gz"]  # a's data were never read


def test_max_voxels_default_comes_from_the_environment(tmp_path, tiny_weights, reads, monkeypatch,
                                                        capsys):
    """MOOD_MAX_VOXELS is read when the command runs (nothing is read at import); a bad value is
    one line and exit 1."""
    import mood.volumes.volume_io

    monkeypatch.setenv("MOOD_MAX_VOXELS", "6000")
    code = main(["sample", "-i", str(_two_cases(tmp_path / "in")), "-o", str(tmp_path / "out"),
                 "--region", "brain", "--weights", str(tiny_weights), "--slices", "3", "-q"])
    assert code == 1 and "exceed the limit of 6,000" in capsys.readouterr().err
    assert reads == ["b.nii.gz"]
    monkeypatch.setenv("MOOD_MAX_VOXELS", "lots")
    assert main(["sample", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out2"), "--region", "brain",
                 "--weights", str(tiny_weights), "-q"]) == 1
    assert capsys.readouterr().err == "mood sample: error: MOOD_MAX_VOXELS must be a positive integer, got 'lots'\n"
    assert not (tmp_path / "out2").exists()
    assert mood.volumes.volume_io.DEFAULT_MAX_VOXELS == 2 * 512**3  # the environment does not change the library


# -- determinism --------------------------------------------------------------------------------
def test_same_input_and_seed_give_identical_bytes_across_processes(tmp_path, tiny_weights,
                                                                   fast_weights):
    """Pixel with real restorations (tiny_weights resample many codes), sample with a threshold
    that gives a non-zero score: in this process and in a fresh one, byte for byte."""
    folder = tmp_path / "in"
    folder.mkdir()
    _img((GOOD * 3000).astype(np.int16), OBLIQUE, slope_inter=(1 / 3000, 0.0))(folder / "v.nii.gz")
    args = {task: [task, "-i", str(folder), "--region", "brain", "--weights", str(weights),
                   "--seed", "11", "--slices", "3", "--method", "lsr", "-q"]
            for task, weights in (("sample", fast_weights), ("pixel", tiny_weights))}
    args["pixel"] += ["--restorations", "1"]
    for task in ("sample", "pixel"):
        assert main(args[task] + ["-o", str(tmp_path / f"{task}-here")]) == 0
    runs = [args[task] + ["-o", str(tmp_path / f"{task}-child")] for task in ("sample", "pixel")]
    script = ("import json, sys; from mood.cli import main; "
              "sys.exit(max(main(a) for a in json.loads(sys.argv[1])))")
    run = subprocess.run([sys.executable, "-c", script, json.dumps(runs)], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    for task, name in (("sample", "v.nii.gz.txt"), ("pixel", "v.nii.gz")):
        here = (tmp_path / f"{task}-here" / name).read_bytes()
        assert here == (tmp_path / f"{task}-child" / name).read_bytes(), task
    assert 0.0 < float((tmp_path / "sample-here" / "v.nii.gz.txt").read_text()) < 1.0


# -- atomic outputs under SIGKILL ---------------------------------------------------------------
def _visible(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if not n.startswith(".")) if folder.exists() else []


def _complete(path: Path, shape: tuple[int, ...]) -> bool:
    img = nib.load(str(path))
    return np.asarray(img.dataobj).shape == shape and img.get_fdata(dtype=np.float16).shape == shape


def test_sigkill_leaves_no_partial_output_and_a_rerun_completes(tmp_path, fast_weights, capsys, caplog):
    """Kill -9 a pixel run while it writes (a temporary file is there, after a first output):
    only complete outputs carry final names; a rerun with --skip-existing removes the stale
    temporary files (not a live writer's) and completes the set."""
    folder = tmp_path / "in"
    folder.mkdir()
    shape = (64, 64, 40)  # large enough that a write lasts long enough to be caught
    names = [f"v{i}.nii.gz" for i in range(6)]
    for i, name in enumerate(names):
        _img(head_phantom(shape, seed=10 + i))(folder / name)
    out = tmp_path / "out"
    args = ["pixel", "-i", str(folder), "-o", str(out), "--region", "brain",
            "--weights", str(fast_weights), "--seed", "2", *FAST]
    with open(tmp_path / "child.log", "wb") as child_log:
        child = subprocess.Popen([sys.executable, "-m", "mood", *args], stdout=child_log,
                                 stderr=child_log)
        try:
            deadline = time.monotonic() + 300
            while child.poll() is None and time.monotonic() < deadline:
                listing = os.listdir(out) if out.exists() else []
                writing = any(n.startswith(".") for n in listing)
                if _visible(out) and (writing or len(_visible(out)) >= 3):
                    break  # (at 3 outputs without having caught a write: kill between writes)
                time.sleep(0.001)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, (tmp_path / "child.log").read_text()
    done = _visible(out)
    assert done and set(done) < set(names), done
    assert all(_complete(out / name, shape) for name in done)  # no partial output under a final name
    leftovers = [n for n in os.listdir(out) if n.startswith(".")]
    assert all(re.fullmatch(r"\.v\d\.nii\.gz\.[a-z0-9_]{8}\.part\.nii\.gz", n) for n in leftovers)

    # A temporary file of a killed writer, one that a live writer holds, and a user's hidden file.
    (out / ".v5.nii.gz.k1lled00.part.nii.gz").write_bytes(gzip.compress(RAW, mtime=0)[:3000])
    live = out / ".v4.nii.gz.w0rking0.part.nii.gz"
    (out / ".keep-me").write_text("mine")
    with open(live, "wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        caplog.set_level("INFO", logger="mood")
        assert main(args + ["--skip-existing"]) == 0
        assert remove_stale_temporaries(out) == []  # the live one is still locked
    summary = capsys.readouterr().err.splitlines()[-1]
    assert summary.startswith(f"scored {6 - len(done)} of 6 volume(s), {len(done)} skipped (output "
                              f"exists), 0 failed"), summary
    assert any(r.getMessage().startswith(f"removed {len(leftovers) + 1} temporary file(s) left in ")
               for r in caplog.records)
    assert _visible(out) == names and all(_complete(out / name, shape) for name in names)
    assert sorted(n for n in os.listdir(out) if n.startswith(".")) == [".keep-me", live.name]
    assert remove_stale_temporaries(out) == [live.name]  # unlocked now: its writer is gone

    # The killed process wrote its outputs byte for byte as this one does.
    ref = tmp_path / "ref"
    assert main([*args[:2], str(folder / done[0]), "-o", str(ref), *args[5:]]) == 0
    assert (ref / done[0]).read_bytes() == (out / done[0]).read_bytes()


def test_remove_stale_temporaries_touches_only_its_own_files(tmp_path):
    own = [".a.nii.gz.abcdefgh.part.nii.gz", ".a.nii.gz.txt.0123_xyz.part.txt",
           ".b.nii.q1w2e3r4.part.nii"]
    others = [".a.nii.gz.abc.part.nii.gz", ".hidden", "a.nii.gz.abcdefgh.part.nii.gz",
              ".x.abcdefgh.partial"]
    for name in own + others:
        (tmp_path / name).write_text("x")
    (tmp_path / ".d.nii.gz.abcdefgh.part.nii.gz").mkdir()  # a folder of the same pattern stays
    (tmp_path / ".l.nii.gz.abcdefgh.part.nii.gz").symlink_to(tmp_path / ".hidden")  # so does a link
    assert remove_stale_temporaries(tmp_path) == sorted(own)
    assert sorted(os.listdir(tmp_path)) == sorted(others + [".d.nii.gz.abcdefgh.part.nii.gz",
                                                            ".l.nii.gz.abcdefgh.part.nii.gz"])


# -- thin volumes -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["lsr", "localiser"])
def test_pixel_with_fewer_than_three_slices(method, tmp_path, fast_weights, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    _img(GOOD[:, :, :2])(folder / "thin.nii.gz")
    code = main(["pixel", "-i", str(folder), "-o", str(tmp_path / "out"), "--region", "brain",
                 "--weights", str(fast_weights), "--restorations", "1", "--method", method, "-q"])
    assert code == 0, capsys.readouterr().err


def test_atomic_write_survives_a_concurrent_cleaner(tmp_path, monkeypatch):
    """Another shard's start-up cleanup may run between a writer's mkstemp and its lock, and again
    while it writes: the write must still land, complete, under its final name."""
    import tempfile

    from mood.volumes import volume_io

    made = []
    real_mkstemp = tempfile.mkstemp

    def mkstemp_then_cleaner(*a, **kw):
        fd, path = real_mkstemp(*a, **kw)
        made.append(path)
        if len(made) == 1:  # the cleaner strikes before the first file is locked
            assert remove_stale_temporaries(tmp_path) == [Path(path).name]
        return fd, path

    def write(tmp: Path) -> None:
        tmp.write_text("first half ")
        assert remove_stale_temporaries(tmp_path) == []  # a cleaner mid-write: the file is held
        with open(tmp, "a") as f:
            f.write("second half")

    monkeypatch.setattr(volume_io.tempfile, "mkstemp", mkstemp_then_cleaner)
    volume_io.atomic_write(tmp_path / "case.nii.gz.txt", write)
    assert (tmp_path / "case.nii.gz.txt").read_text() == "first half second half"
    assert len(made) == 2 and os.listdir(tmp_path) == ["case.nii.gz.txt"]
