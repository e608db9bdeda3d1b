"""Files -> volume and scores -> files: validated NIfTI reading and atomic writing.

A :class:`Volume` holds one input as float32 in the challenge's array layout (a0, a1, a2) (slices
along a2) with the header it came with; everything downstream works on it and the writers put the
exact shape and affine back.
"""
from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Refuse inputs above this many voxels before reading any data (decompression bombs, memory).
#: Two 512^3 volumes' worth; override with ``--max-voxels`` or ``MOOD_MAX_VOXELS``.
DEFAULT_MAX_VOXELS = int(os.environ.get("MOOD_MAX_VOXELS", 2 * 512**3))
#: Values this far outside [0, 1] trigger a robust rescale (challenge data lie in [0, 1]).
RANGE_TOLERANCE = 0.01
_UMASK = os.umask(0)
os.umask(_UMASK)


class InputError(ValueError):
    """An input file cannot be scored; the message is one line naming the reason."""


@dataclass(frozen=True)
class Volume:
    data: np.ndarray  # (a0, a1, a2) float32, finite, in [0, 1]
    affine: np.ndarray  # (4, 4)
    header: nib.Nifti1Header
    path: Path
    notes: tuple[str, ...] = ()  # what was repaired on the way in (one line each)


def is_nifti_name(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES) and not path.name.startswith(".")


def list_inputs(path: Path) -> list[Path]:
    """Inputs under ``path`` (a NIfTI file or a folder of them), sorted by name, non-recursive."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if is_nifti_name(p))
    if path.exists() or path.is_symlink():
        return [path]
    raise InputError(f"{path}: no such file or directory")


def load_volume(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read and validate one NIfTI file. Raises :class:`InputError` with a one-line reason."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file (or a broken symlink)")
    if not path.is_file():
        raise InputError("not a regular file")
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise InputError("not a NIfTI file name (.nii or .nii.gz)")
    if path.stat().st_size == 0:
        raise InputError("empty file")
    try:
        img = nib.load(str(path))
    except PermissionError:
        raise InputError("permission denied") from None
    except Exception as exc:  # nibabel raises many types for junk; all mean "unreadable"
        raise InputError(f"not a readable NIfTI ({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"not a NIfTI image ({type(img).__name__})")

    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"expected a 3-D volume (or 4-D with one volume), got shape {tuple(img.shape)}")
    if min(shape) < 1:
        raise InputError(f"empty dimension in shape {shape}")
    if int(np.prod(shape, dtype=np.int64)) > max_voxels:
        raise InputError(f"{int(np.prod(shape, dtype=np.int64)):,} voxels {shape} exceed the limit of "
                         f"{max_voxels:,} (raise it with --max-voxels if this is intended)")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError("header affine is not finite or is singular")

    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise InputError(f"truncated or corrupt data ({type(exc).__name__}: {_first_line(exc)})") from None

    data, notes = _repair_values(data)
    return Volume(data=data, affine=affine, header=img.header.copy(), path=path, notes=notes)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else "no detail"


def _repair_values(data: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Make values finite and bring them into [0, 1]; say what was done."""
    notes: list[str] = []
    finite = np.isfinite(data)
    n_bad = data.size - int(finite.sum())
    if n_bad == data.size:
        raise InputError("no finite voxel values")
    if n_bad:
        lo, hi = float(data[finite].min()), float(data[finite].max())
        np.nan_to_num(data, copy=False, nan=lo, posinf=hi, neginf=lo)
        notes.append(f"{n_bad:,} non-finite voxels (NaN/Inf) replaced by the finite minimum/maximum")
    lo, hi = float(data.min()), float(data.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        # Percentiles keep a few extreme voxels from squashing everything else to one value.
        p_lo, p_hi = np.percentile(data[:: max(1, data.size // 2_000_000)], [0.5, 99.5])
        if p_hi <= p_lo:
            p_lo, p_hi = lo, hi
        if p_hi > p_lo:
            data -= np.float32(p_lo)
            data /= np.float32(p_hi - p_lo)
        np.clip(data, 0.0, 1.0, out=data)
        notes.append(f"values in [{lo:.4g}, {hi:.4g}] are outside [0, 1]; rescaled robustly "
                     f"(0.5th..99.5th percentile -> [0, 1])")
    elif lo < 0 or hi > 1:
        np.clip(data, 0.0, 1.0, out=data)
    return data, tuple(notes)


# -- writing ---------------------------------------------------------------------------------
def output_path(input_path: Path, output_dir: Path, suffix: str = "") -> Path:
    """``output_dir / (input name + suffix)``, refusing anything that would overwrite the input."""
    out = output_dir / (input_path.name + suffix)
    if out.resolve() == input_path.resolve():
        raise InputError(f"output {out} would overwrite the input; choose another --output")
    return out


def _atomic_write(final: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: never a partial file."""
    suffix = ".nii.gz" if final.name.endswith(".gz") else final.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name[:40]}.", suffix=".part" + suffix, dir=final.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(text))


def write_scores_nifti(path: Path, scores: np.ndarray, like: Volume) -> None:
    """Scores (a0, a1, a2) in [0, 1] -> NIfTI with the input's shape, affine and orientation codes."""
    if scores.shape != like.data.shape:
        raise ValueError(f"scores shape {scores.shape} != input shape {like.data.shape}")
    header = like.header.copy()
    header.set_data_dtype(np.float32)
    img = nib.Nifti1Image(np.asarray(scores, dtype=np.float32), like.affine, header=header)
    img.header.set_slope_inter(1.0, 0.0)
    # Keep the input's qform/sform codes (the affine itself is identical).
    img.set_qform(like.affine, int(like.header["qform_code"]) or 1)
    img.set_sform(like.affine, int(like.header["sform_code"]) or 1)
    if img.header.get_data_shape() != like.data.shape:
        img.header.set_data_shape(like.data.shape)
    _atomic_write(path, lambda tmp: nib.save(img, str(tmp)))
