"""Files -> volume and scores -> files: the one validated reader, the one lister, atomic writing.

A :class:`Volume` holds one input as float32 in the challenge's array layout (a0, a1, a2) (slices
along a2) with the header it came with; everything downstream works on it and the writers put the
exact shape and affine back. :func:`read_volume` reads any supported file in its own units;
:func:`load_volume` is what inference scores: a NIfTI brought into [0, 1]. Every output file,
JSON included (:func:`write_json`), is written by :func:`atomic_write`. Nothing happens at import:
the umask and ``MOOD_MAX_VOXELS`` are read when first needed.
"""
from __future__ import annotations

import fcntl
import functools
import gzip
import json
import logging
import os
import re
import tempfile
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Every file ending :func:`read_volume` reads (NIfTI through nibabel, the rest through SimpleITK).
READABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


#: Refuse inputs above this many voxels before reading any data (decompression bombs, memory):
#: two 512^3 volumes' worth. The command line takes ``--max-voxels``, else ``MOOD_MAX_VOXELS``
#: (:func:`max_voxels_from_environment`), else this.
DEFAULT_MAX_VOXELS = 2 * 512**3


def max_voxels_from_environment(default: int = DEFAULT_MAX_VOXELS) -> int:
    """``MOOD_MAX_VOXELS`` if set (read when called, never at import), else ``default``."""
    text = os.environ.get("MOOD_MAX_VOXELS", "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"MOOD_MAX_VOXELS must be a positive integer, got {text!r}")
    return value


#: Refuse a header (with its extensions) longer than this before nibabel reads it: a few kB of
#: .nii.gz can otherwise expand into gigabytes of "extensions".
MAX_HEADER_BYTES = 64 * 2**20
#: Values this far outside [0, 1] trigger a robust rescale (challenge data lie in [0, 1]).
RANGE_TOLERANCE = 0.01


class InputError(ValueError):
    """An input file cannot be scored; the message is one line naming the reason."""


@dataclass(frozen=True)
class Volume:
    data: np.ndarray  # (a0, a1, a2) float32, finite; in [0, 1] unless read in file units (read_volume)
    affine: np.ndarray  # (4, 4)
    header: nib.Nifti1Header | nib.Nifti2Header
    path: Path
    notes: tuple[str, ...] = ()  # what was repaired on the way in (one line each)


def is_volume_name(path: Path, suffixes: tuple[str, ...] = READABLE_SUFFIXES) -> bool:
    """Whether ``path`` is named like a volume file ending in one of ``suffixes`` (not hidden)."""
    return path.name.endswith(suffixes) and not path.name.startswith(".")


def is_nifti_name(path: Path) -> bool:
    """Whether ``path`` is named like an input of the challenge (``.nii``, ``.nii.gz``)."""
    return is_volume_name(path, NIFTI_SUFFIXES)


def list_inputs(path: Path, suffixes: tuple[str, ...] = NIFTI_SUFFIXES) -> list[Path]:
    """Inputs under ``path`` (a volume file, or a folder whose entries named with ``suffixes`` are
    taken), sorted by name, non-recursive. Inference reads NIfTI only; the training tools pass
    :data:`READABLE_SUFFIXES`."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if is_volume_name(p, suffixes))
    if path.exists() or path.is_symlink():
        return [path]
    raise InputError(f"{path}: no such file or directory")


def load_volume(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """One NIfTI file as inference scores it: :func:`read_volume`, then :func:`fit_unit_range`."""
    return fit_unit_range(read_volume(path, max_voxels, NIFTI_SUFFIXES))


def read_volume(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS,
                suffixes: tuple[str, ...] = READABLE_SUFFIXES) -> Volume:
    """Read and validate one volume file in its own units (finite, not yet brought into [0, 1]).

    The one reader of the package: NIfTI through nibabel, the other ``suffixes`` through
    SimpleITK (whose LPS world becomes RAS). Raises :class:`InputError` with a one-line reason.
    Shape, voxel count, data type and affine are checked from the header before any voxel is read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file (or a broken symlink)")
    if not path.is_file():
        raise InputError("not a regular file")
    if not path.name.endswith(suffixes):
        kind = "NIfTI" if suffixes == NIFTI_SUFFIXES else "volume"
        raise InputError(f"not a {kind} file name ({' or '.join(suffixes)})")
    try:  # one byte first: tells a permission or disk problem from a format problem
        with open(path, "rb") as f:
            if not f.read(1):
                raise InputError("empty file")
    except PermissionError:
        raise InputError("permission denied") from None
    except OSError as exc:
        raise InputError(f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
    if path.name.endswith(NIFTI_SUFFIXES):
        data, affine, header, notes = _read_nifti(path, max_voxels)
    else:
        data, affine = _read_sitk(path, max_voxels)
        header, notes = nib.Nifti1Image(data, affine).header, ()
    return Volume(data=data, affine=affine, header=header, path=path,
                  notes=tuple(f"header: {n}" for n in notes) + _replace_non_finite(data))


def _volume_shape(full_shape: tuple[int, ...], max_voxels: int) -> tuple[int, int, int]:
    """The 3-D shape of a header's ``full_shape``, checked against ``max_voxels``."""
    shape = full_shape
    while len(shape) > 3 and shape[-1] == 1:  # 4-D (or more) holding a single volume
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputError(f"expected a 3-D volume (or 4-D with one volume), got shape {full_shape}")
    if min(shape) < 1:
        raise InputError(f"empty dimension in shape {shape}")
    n_voxels = int(np.prod(shape, dtype=np.int64))
    if n_voxels > max_voxels:
        raise InputError(f"{n_voxels:,} voxels {shape} exceed the limit of {max_voxels:,} "
                         f"(raise it with --max-voxels or MOOD_MAX_VOXELS if this is intended)")
    return shape  # type: ignore[return-value]


def _check_affine(affine: np.ndarray) -> None:
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError("header affine is not finite or is singular")


def _read_nifti(path: Path, max_voxels: int
                ) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header | nib.Nifti2Header, list[str]]:
    """NIfTI -> (data (a0, a1, a2) float32, affine (4, 4), header, nibabel's header messages)."""
    offset = _data_offset(path)
    if offset is not None and not offset <= MAX_HEADER_BYTES:
        raise InputError(f"header and extensions of {offset:,.0f} bytes (vox_offset) exceed the limit "
                         f"of {MAX_HEADER_BYTES:,} (a corrupt header or a decompression bomb)")
    try:
        with _nibabel_messages() as header_notes:  # its header fixes become this file's notes
            img = nib.load(str(path))
    except PermissionError:
        raise InputError("permission denied") from None
    except Exception as exc:  # nibabel raises many types for junk; all mean "unreadable"
        raise InputError(f"not a readable NIfTI ({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"not a NIfTI image ({type(img).__name__})")

    shape = _volume_shape(tuple(int(s) for s in img.shape), max_voxels)
    dtype = img.get_data_dtype()
    if dtype.fields is not None:
        raise InputError("colour (RGB/RGBA) data are not supported: need one grey value per voxel")
    if dtype.kind == "c":
        raise InputError(f"complex data ({dtype}) are not supported: need one real value per voxel")
    if dtype.kind not in "biuf":
        raise InputError(f"unsupported data type {dtype}")
    affine = np.asarray(img.affine, dtype=np.float64)
    _check_affine(affine)

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            # Overflow to +-Inf (huge scl_slope, float64 data) is counted and reported below.
            warnings.simplefilter("ignore")
            data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except MemoryError:
        raise InputError(f"not enough memory to read {int(np.prod(shape)):,} voxels") from None
    except Exception as exc:  # short reads, CRC and zlib errors, mmap beyond the end, ...
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
        raise InputError(f"truncated or corrupt data ({reason})") from None
    return data, affine, img.header.copy(), header_notes


def _read_sitk(path: Path, max_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """NRRD, MHA, ... through SimpleITK -> (data (x, y, z) float32, RAS affine (4, 4))."""
    import SimpleITK as sitk  # imported here: only the training tools read these formats

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except Exception as exc:
        raise InputError(f"not readable by SimpleITK ({_first_line(exc)})") from None
    if reader.GetNumberOfComponents() != 1:
        raise InputError(f"{reader.GetNumberOfComponents()} components per voxel; expected a "
                         "single-channel (scalar) volume")
    _volume_shape(tuple(int(s) for s in reader.GetSize()), max_voxels)
    if reader.GetDimension() != 3:
        raise InputError(f"{reader.GetDimension()}-D image; expected 3-D")
    try:
        image = reader.Execute()
    except MemoryError:
        raise InputError("not enough memory to read the volume") from None
    except Exception as exc:
        raise InputError(f"truncated or corrupt data ({_first_line(exc)})") from None
    # GetArrayViewFromImage gives (z, y, x); our arrays are indexed (x, y, z) like nibabel's.
    data = np.ascontiguousarray(sitk.GetArrayViewFromImage(image).transpose(2, 1, 0), dtype=np.float32)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ direction @ np.diag(spacing)
    affine[:3, 3] = lps_to_ras @ origin
    _check_affine(affine)
    return data, affine


def _data_offset(path: Path) -> float | None:
    """``vox_offset`` of a NIfTI-1 or -2 header, read without nibabel (which would first read all
    the extensions before it); None if there is no such header (nibabel then says what is wrong)."""
    try:
        with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
            raw = f.read(176)
    except (OSError, EOFError, zlib.error):
        return None
    for order in "<>":
        size = int(np.frombuffer(raw[:4], order + "i4")[0]) if len(raw) >= 4 else 0
        if size == 348 and len(raw) >= 112:
            return float(np.frombuffer(raw[108:112], order + "f4")[0])
        if size == 540 and len(raw) >= 176:
            return float(np.frombuffer(raw[168:176], order + "i8")[0])
    return None


@contextmanager
def _nibabel_messages():
    """Collect what nibabel logs or warns about a header (e.g. "pixdim[1,2,3] should be non-zero;
    setting 0 dims to 1") instead of letting it print lines that name no file."""
    logger = logging.getLogger("nibabel.global")
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handlers, propagate = logger.handlers[:], logger.propagate
    for h in handlers:
        logger.removeHandler(h)
    logger.addHandler(Collect())
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        logger.handlers[:] = handlers
        logger.propagate = propagate
        messages.extend(str(w.message) for w in caught)
        messages[:] = list(dict.fromkeys(" ".join(m.split()) for m in messages))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else "no detail"


def _replace_non_finite(data: np.ndarray) -> tuple[str, ...]:
    """Replace NaN/Inf in place by the finite minimum/maximum; say so."""
    finite = np.isfinite(data)
    n_bad = data.size - int(finite.sum())
    if n_bad == data.size:
        raise InputError("no finite voxel values")
    if not n_bad:
        return ()
    lo, hi = float(data[finite].min()), float(data[finite].max())
    np.nan_to_num(data, copy=False, nan=lo, posinf=hi, neginf=lo)
    return (f"{n_bad:,} non-finite voxels (NaN/Inf) replaced by the finite minimum/maximum",)


def needs_rescale(lo: float, hi: float) -> bool:
    """Whether values from ``lo`` to ``hi`` lie so far outside [0, 1] that :func:`fit_unit_range`
    rescales them (rather than only clipping values within :data:`RANGE_TOLERANCE` of the range)."""
    return lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE


def fit_unit_range(volume: Volume) -> Volume:
    """``volume`` with its values brought into [0, 1] in place, and a note when they were rescaled."""
    data = volume.data
    notes: list[str] = []
    lo, hi = float(data.min()), float(data.max())
    if needs_rescale(lo, hi):
        # Percentiles keep a few extreme voxels from squashing everything else to one value.
        # float64 statistics: the range of float32 data can exceed float32 (no Inf, hence no NaN).
        sample = data.ravel(order="K")[:: max(1, data.size // 2_000_000)].astype(np.float64)
        p_lo, p_hi = np.percentile(sample, [0.5, 99.5])
        if p_hi <= p_lo:
            p_lo, p_hi = lo, hi
        if p_hi > p_lo:
            width = p_hi - p_lo
            with np.errstate(over="ignore"):  # beyond float32: +-Inf, clipped to 0 or 1 below
                data -= np.float32(p_lo)
                if np.isfinite(np.float32(width)):
                    data /= np.float32(width)
                else:
                    data *= np.float32(1.0 / width)
            notes.append(f"values in [{lo:.4g}, {hi:.4g}] are outside [0, 1]; rescaled robustly "
                         f"(0.5th..99.5th percentile -> [0, 1])")
        else:
            notes.append(f"constant value {lo:.4g} is outside [0, 1]; clipped into [0, 1]")
        np.clip(data, 0.0, 1.0, out=data)
    elif lo < 0 or hi > 1:
        np.clip(data, 0.0, 1.0, out=data)
    return replace(volume, notes=volume.notes + tuple(notes))


# -- writing ---------------------------------------------------------------------------------
def output_path(input_path: Path, output_dir: Path, suffix: str = "") -> Path:
    """``output_dir / (input name + suffix)``, refusing anything that would overwrite the input."""
    out = output_dir / (input_path.name + suffix)
    if out.resolve() == input_path.resolve():
        raise InputError(f"output {out} would overwrite the input; choose another --output")
    return out


#: Temporary files of :func:`atomic_write`: ``.<name[:40]>.<8 random>.part<suffix>``.
_PART_FILE = re.compile(r"\..*\.[a-z0-9_]{8}\.part(\.[A-Za-z0-9]+)*", re.DOTALL)


def _locked_temporary(final: Path) -> tuple[int, str]:
    """A new temporary file beside ``final``, open and locked: (descriptor, path).

    Between creating a file and locking it, another process's :func:`remove_stale_temporaries`
    (a shard starting on the same output folder) may take it for a leftover and delete it; the
    path would then be written as a new, unlocked file that the next cleaner deletes mid-write.
    So the lock is checked to hold the file still at that path, else a new one is made.
    """
    suffix = ".nii.gz" if final.name.endswith(".gz") else final.suffix
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name[:40]}.", suffix=".part" + suffix, dir=final.parent)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: write anyway (then nothing is cleaned up)
            return fd, tmp
        try:
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except FileNotFoundError:
            pass
        os.close(fd)


@functools.cache
def _process_umask() -> int:
    """The process's umask, read on first use (Linux: from /proc, which changes nothing; elsewhere
    set and restored once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(final: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: never a partial file.

    The temporary file is locked (``flock``) while it is written, so that
    :func:`remove_stale_temporaries` can tell one left by a killed run from one still in use.
    """
    fd, tmp = _locked_temporary(final)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_process_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> list[str]:
    """Delete temporary files that an interrupted (killed) run of :func:`atomic_write` left in
    ``folder``; files of a run still writing are locked and kept. Returns the names removed."""
    removed: list[str] = []
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not _PART_FILE.fullmatch(entry.name) or entry.is_symlink() or not entry.is_file():
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live writer holds it (or the file system cannot lock: keep it)
        else:
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
        finally:
            os.close(fd)
    return removed


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, data: object, indent: int = 2) -> None:
    """``data`` as JSON (with a final newline) to ``path`` atomically: every JSON file goes through here."""
    write_text(Path(path), json.dumps(data, indent=indent) + "\n")


def round_to_float16_(scores: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Round float32 scores in place to the nearest float16 value, slab by slab along a2.

    The challenge reads pixel predictions with ``get_fdata(dtype=float16)``, so it sees exactly
    the same values; the zeroed low mantissa bits make the gzip-compressed file several times
    smaller and faster to write.
    """
    for z in range(0, scores.shape[2], chunk):
        slab = scores[:, :, z:z + chunk]
        slab[...] = slab.astype(np.float16)
    return scores


def write_scores_nifti(path: Path, scores: np.ndarray, like: Volume) -> None:
    """Scores (a0, a1, a2) in [0, 1] -> float32 NIfTI with the input's exact shape (a 4-D input
    with one volume stays 4-D), format (NIfTI-1 or -2) and geometry fields, so that it loads with
    the input's affine; no scaling (slope 1, intercept 0)."""
    if scores.shape != like.data.shape:
        raise ValueError(f"scores shape {scores.shape} != input shape {like.data.shape}")
    header = like.header.copy()
    header.set_data_dtype(np.float32)
    header.set_data_offset(0)  # recomputed on writing; never the input's (possibly huge) offset
    header.extensions.clear()
    header["cal_min"] = header["cal_max"] = 0  # the input's display window would hide [0, 1) scores
    data = np.asarray(scores, dtype=np.float32).reshape(header.get_data_shape())  # (a0, a1, a2[, 1])
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    # The affine equals the header's own, so nibabel leaves the qform/sform fields as they are.
    img = image_class(data, like.affine, header=header)
    img.header.set_slope_inter(1.0, 0.0)  # stored as is: float32 scores, never the input's scaling
    atomic_write(path, lambda tmp: nib.save(img, str(tmp)))
