"""Fuzzing the loader and validator: any file -> a valid Volume or InputError, nothing else.

``load_volume`` is fed valid small NIfTI-1/-2 files (.nii and .nii.gz) with random header fields
and random byte mutations. The contract checked on every example:

* it returns a :class:`~mood.volumes.volume_io.Volume` whose data are 3-D, float32, finite, in [0, 1],
  within the voxel limit, with a finite (4, 4) affine, or it raises
  :class:`~mood.volumes.volume_io.InputError` with a one-line message; any other exception fails;
* it never hangs (each call runs under a 20 s alarm);
* it never takes much memory: the voxel limit is checked from the header before data are read,
  and the process's peak resident memory may grow by at most 256 MiB over the whole test.

By default each fuzz test runs a fixed, derandomised set of 250 examples (a few seconds; the same
in every CI run). To fuzz longer, with fresh random examples on every run::

    MOOD_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py -q --hypothesis-show-statistics
    MOOD_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py -q --hypothesis-seed=1234  # repeatable

(5000 examples take about a minute per test.) A failure prints the smallest failing case and a
``@reproduce_failure(...)`` decorator that replays it.
"""
from __future__ import annotations

import gzip
import io
import os
import resource
import signal
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from mood.volumes.volume_io import InputError, Volume, load_volume

EXAMPLES = int(os.environ.get("MOOD_FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(max_examples=EXAMPLES or 250, deadline=None, derandomize=EXAMPLES is None,
                print_blob=True, suppress_health_check=[HealthCheck.too_slow])
MAX_VOXELS = 100_000  # the guard under test bounds what may be read
CALL_TIMEOUT_S = 20


def _base_images() -> dict[str, bytes]:
    """Uncompressed bytes of a few small valid images (header + data)."""
    rng = np.random.default_rng(0)
    vol = rng.random((6, 5, 4)).astype(np.float32)
    affine = np.array([[0, 0, 1.5, -3], [-1.2, 0, 0, 4], [0, 1.1, 0, -1], [0, 0, 0, 1]], float)
    ints = nib.Nifti1Image((vol * 1000).astype(np.int16), affine)
    ints.header.set_slope_inter(0.001, 0.0)
    images = {"nifti1-float32": nib.Nifti1Image(vol, affine), "nifti1-int16-scaled": ints,
              "nifti1-4d-single": nib.Nifti1Image(vol[..., None], np.eye(4)),
              "nifti2-float64": nib.Nifti2Image(vol.astype(np.float64), affine)}
    return {name: img.to_bytes() for name, img in images.items()}


BASES = _base_images()
HEADER_CLASSES = {"nifti1": nib.Nifti1Header, "nifti2": nib.Nifti2Header}
#: Valid NIfTI datatype codes plus a few invalid ones (complex, RGB, float128 and junk included).
DATATYPES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304,
             -1, 3, 255, 32767]


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


class Hang(BaseException):
    """Raised by the alarm; a BaseException, so that no ``except Exception`` in the loader hides it."""


@contextmanager
def _alarm(seconds: int):
    def hang(signum, frame):
        raise Hang(f"load_volume ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module", autouse=True)
def bounded_peak_memory():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 256 * 1024, f"peak resident memory grew by {grown / 1024:.0f} MiB while fuzzing"


def _event(text: str) -> None:
    if currently_in_test_context():  # statistics: pytest --hypothesis-show-statistics
        event(text)


def check_contract(path: Path) -> Volume | None:
    """Load ``path``; assert the loader's contract; the Volume, or None after an InputError."""
    try:
        with _alarm(CALL_TIMEOUT_S):
            volume = load_volume(path, max_voxels=MAX_VOXELS)
    except InputError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        _event(f"refused: {message.split('(')[0].split(':')[0][:40]}")
        return None
    data = volume.data
    assert isinstance(volume, Volume)
    assert data.ndim == 3 and data.dtype == np.float32 and 1 <= data.size <= MAX_VOXELS
    assert np.isfinite(data).all()
    assert data.min() >= 0.0 and data.max() <= 1.0
    assert volume.affine.shape == (4, 4) and np.isfinite(volume.affine).all()
    assert all(note and "\n" not in note for note in volume.notes)
    _event("loaded" + (" with notes" if volume.notes else ""))
    return volume


def _write(directory: Path, raw: bytes, compressed: bool, name: str = "case") -> Path:
    path = directory / (name + (".nii.gz" if compressed else ".nii"))
    path.write_bytes(gzip.compress(raw, mtime=0) if compressed else raw)
    return path


# -- random header fields -----------------------------------------------------------------------
def _field_value(dtype: np.dtype):
    """A hypothesis strategy for one (scalar) header field of ``dtype``, biased to edge cases."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        edges = [0, 1, 2, 3, 4, 7, 8, 255, info.max, info.min, -1 if dtype.kind == "i" else 2]
        return st.one_of(st.sampled_from(edges), st.integers(int(info.min), int(info.max)))
    if dtype.kind == "f":
        width = 32 if dtype.itemsize == 4 else 64
        return st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, np.nan, np.inf, -np.inf]),
                         st.floats(width=width, allow_nan=True, allow_infinity=True))
    return st.binary(min_size=0, max_size=dtype.itemsize)  # strings (magic, descrip, ...)


@st.composite
def header_mutations(draw):
    """(base image name, [(field, element index or None, value), ...], data tail, compressed)."""
    base = draw(st.sampled_from(sorted(BASES)))
    template = HEADER_CLASSES[base.split("-")[0]].template_dtype
    edits = []
    for _ in range(draw(st.integers(1, 6))):
        field = draw(st.sampled_from(["dim", "datatype", "bitpix", "vox_offset", "scl_slope",
                                      "scl_inter", "pixdim", "qform_code", "sform_code",
                                      "quatern_b", "quatern_c", "quatern_d", "srow_x", "srow_z",
                                      "magic", "sizeof_hdr", "dim_info", "intent_code"]))
        ftype = template.fields[field][0]
        index = draw(st.integers(0, ftype.shape[0] - 1)) if ftype.shape else None
        base_type = ftype.base if ftype.shape else ftype
        values = st.sampled_from(DATATYPES) if field == "datatype" else _field_value(base_type)
        value = draw(values)
        edits.append((field, index, value))
    tail = draw(st.sampled_from(["same", "short", "long", "none"]))
    return base, edits, tail, draw(st.booleans())


def _apply_header_edits(raw: bytes, base: str, edits, tail: str) -> bytes:
    template = HEADER_CLASSES[base.split("-")[0]].template_dtype
    n = template.itemsize
    header = np.frombuffer(bytearray(raw[:n]), dtype=template.newbyteorder("<"))
    for field, index, value in edits:
        with np.errstate(all="ignore"):
            if index is None:
                header[field] = value
            else:
                header[field][0, index] = value
    rest = raw[n:]
    rest = {"same": rest, "short": rest[: len(rest) // 3], "long": rest + bytes(range(256)) * 8,
            "none": rest[:4]}[tail]
    return header.tobytes() + rest


@FUZZ
@given(case=header_mutations())
def test_random_header_fields(case, fuzz_dir):
    base, edits, tail, compressed = case
    check_contract(_write(fuzz_dir, _apply_header_edits(BASES[base], base, edits, tail), compressed))


# -- random byte mutations ----------------------------------------------------------------------
@st.composite
def byte_mutations(draw):
    """(base, mutated bytes, how): flips anywhere (biased to the header), truncation, insertion;
    'gz-of-mutated' compresses the mutated bytes, 'mutated-gz' mutates the compressed bytes."""
    base = draw(st.sampled_from(sorted(BASES)))
    how = draw(st.sampled_from(["nii", "gz-of-mutated", "mutated-gz"]))
    raw = bytearray(BASES[base] if how != "mutated-gz" else gzip.compress(BASES[base], mtime=0))
    header_end = min(540 if base.startswith("nifti2") else 352, len(raw))
    position = st.one_of(st.integers(0, header_end - 1), st.integers(0, len(raw) - 1))
    for pos, byte in draw(st.lists(st.tuples(position, st.integers(0, 255)), min_size=1, max_size=16)):
        raw[pos] = byte
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=64)) if draw(st.booleans()) else raw[:cut]
    return base, bytes(raw), how


@FUZZ
@given(case=byte_mutations())
def test_random_byte_mutations(case, fuzz_dir):
    base, raw, how = case
    if how == "gz-of-mutated":
        check_contract(_write(fuzz_dir, raw, compressed=True))
    else:
        path = fuzz_dir / ("case.nii.gz" if how == "mutated-gz" else "case.nii")
        path.write_bytes(raw)
        check_contract(path)


# -- sanity of the harness itself ---------------------------------------------------------------
@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("compressed", [False, True])
def test_unmutated_bases_load(base, compressed, fuzz_dir):
    """The fuzzers start from files that load (so mutations, not the bases, cause the refusals)."""
    volume = check_contract(_write(fuzz_dir, BASES[base], compressed, name=f"base-{base}"))
    assert volume is not None and volume.data.shape == (6, 5, 4)


def test_harness_catches_a_hang(fuzz_dir, monkeypatch):
    """The alarm really ends a stuck call (the fuzz tests rely on it)."""
    import time

    import mood.volumes.volume_io as vio

    monkeypatch.setattr(vio.nib, "load", lambda *a, **k: time.sleep(30))
    path = _write(fuzz_dir, BASES["nifti1-float32"], compressed=False, name="hang")
    started = time.monotonic()
    with pytest.raises(Hang):
        with _alarm(1):
            load_volume(path)
    assert time.monotonic() - started < 10


def test_huge_dims_refused_before_reading(fuzz_dir, monkeypatch):
    """A header promising 32767^3 voxels in a few hundred bytes: refused from the header alone."""
    from nibabel.arrayproxy import ArrayProxy

    def no_read(self, *args, **kwargs):
        raise AssertionError("voxel data read before the voxel limit was checked")

    monkeypatch.setattr(ArrayProxy, "__array__", no_read)
    monkeypatch.setattr(ArrayProxy, "_get_scaled", no_read)
    for name, raw in BASES.items():
        header = nib.load(_write(fuzz_dir, raw, False, name=name)).header
        header.set_data_shape((32767, 32767, 32767) + (1,) * (len(header.get_data_shape()) - 3))
        out = io.BytesIO()
        header.write_to(out)
        path = _write(fuzz_dir, out.getvalue() + b"\0" * 64, compressed=True, name=f"bomb-{name}")
        with pytest.raises(InputError, match="exceed the limit"):
            load_volume(path)


def test_header_bomb_refused_before_nibabel_reads_it(fuzz_dir, monkeypatch):
    """vox_offset says 1 GiB of extensions follow (a few kB of .nii.gz could expand to that):
    refused from the first bytes, before nibabel would read the extensions into memory."""
    import mood.volumes.volume_io as vio

    def no_load(*args, **kwargs):
        raise AssertionError("nibabel was asked to read a header bomb")

    monkeypatch.setattr(vio.nib, "load", no_load)
    for name, raw in BASES.items():
        template = HEADER_CLASSES[name.split("-")[0]].template_dtype
        header = np.frombuffer(bytearray(raw[:template.itemsize]), dtype=template.newbyteorder("<"))
        header["vox_offset"] = 2**30
        for compressed in (False, True):
            path = _write(fuzz_dir, header.tobytes() + raw[template.itemsize:], compressed, f"hb-{name}")
            with pytest.raises(InputError, match=r"1,073,741,824 bytes \(vox_offset\) exceed the limit"):
                load_volume(path)
