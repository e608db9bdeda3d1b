"""Any volume file -> the challenge's form: isotropic cube, RAS axes (slices along a2), values in [0, 1].

In: a NIfTI file (``.nii``, ``.nii.gz``) or any other single-channel 3-D format SimpleITK reads
(``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``). Out: ``(data, affine)`` with ``data`` float32 of shape
the region's challenge shape (or a smaller ``shape`` for quick runs) and ``affine`` a (4, 4) float64
voxel-to-world (RAS+, millimetres) matrix that describes the new grid exactly.

The steps, in order:

1. **Read** with :func:`mood.volumes.volume_io.read_volume` (nibabel for NIfTI, SimpleITK otherwise; ITK's
   LPS world is turned into RAS): a 4-D file with a single volume is taken as 3-D, non-finite values
   are replaced by the finite minimum/maximum.
2. **Reorient** to the closest canonical RAS orientation (``nibabel.as_closest_canonical``): array
   axes (a0, a1, a2) point to patient Right, Anterior, Superior, so axis a2 is axial, as the
   challenge stores its volumes. Oblique headers keep their small rotation in the affine.
3. **Intensities** (by modality, which defaults from the region; pass ``modality`` to override):

   * MRI (``brain``): ``lo`` = 0.5th percentile of *all* voxels (the background level; taking it
     from the foreground, as is common, would clip dark tissue such as CSF and bone to 0),
     ``hi`` = 99.5th percentile of the foreground; ``(x - lo) / (hi - lo)`` clipped to [0, 1].
     Background ends up at (or very near) 0.
   * CT (``abdom``): a Hounsfield window, by default -1000..1000 HU -> [0, 1], clipped. Air is 0.
     A CT without any negative value is assumed to be stored with a +1024 offset (warned).
4. **Object box**: the foreground (MRI: above 10 % of the robust maximum; CT: above -500 HU),
   largest connected component, holes filled, found on a grid of at most ~128 voxels a side.
5. **Resample** linearly onto an isotropic grid of ``shape`` voxels whose voxel size is
   ``max(object extent * margin / shape)`` (mm) and whose centre is the object box's centre; a
   Gaussian pre-filter (sigma = (factor - 1) / 2 voxels per axis) removes aliasing when shrinking.
   Outside the input the value is 0 (background/air).

Peak memory is about the input as float32 plus the output (measured: 1.0 GB for a 512x512x400 int16
CT converted to 512^3; 12 to 40 s on a shared 2-core CPU, most of it in the linear interpolation).
"""
from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..config import REGIONS, region_preset
from .volume_io import (READABLE_SUFFIXES, InputError, Volume, atomic_write, fit_unit_range, list_inputs,
                        needs_rescale, read_volume)

log = logging.getLogger(__name__)

MODALITIES = ("mri", "ct")
#: Default CT window in Hounsfield units mapped onto [0, 1].
CT_WINDOW = (-1000.0, 1000.0)
#: Padding around the object: the grid spans ``margin`` times the object's largest extent.
DEFAULT_MARGIN = 1.1
#: The foreground is searched on a grid of at most this many voxels per axis (speed, memory).
_MASK_GRID = 128


def strip_suffix(name: str) -> str:
    """``"case.nii.gz"`` -> ``"case"``; any suffix of :data:`READABLE_SUFFIXES` is removed."""
    for suffix in READABLE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# -- geometry --------------------------------------------------------------------------------
def to_canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute axes to the closest canonical RAS orientation (a view where possible).

    ``data`` (a0, a1, a2) with ``affine`` (4, 4) -> the same voxels with axes pointing R, A, S.
    """
    img = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    return np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)


def override_orientation(data: np.ndarray, affine: np.ndarray, axcodes: str) -> np.ndarray:
    """An affine that says the array axes point to ``axcodes`` (e.g. ``"LPS"``), keeping the zooms.

    For files whose header orientation is known to be wrong; the object stays centred on the
    world position of the array centre.
    """
    codes = tuple(str(axcodes).upper())
    try:
        ornt = nib.orientations.axcodes2ornt(codes)  # per array axis: (world axis, sign)
    except ValueError:
        ornt = None
    if len(codes) != 3 or ornt is None or sorted(ornt[:, 0].tolist()) != [0, 1, 2]:
        raise ValueError(f"orientation {axcodes!r}: expected three axis codes such as 'RAS' or 'LPS'")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    new = np.zeros((4, 4))
    new[3, 3] = 1.0
    for axis, (world, sign) in enumerate(ornt):
        new[int(world), axis] = sign * zooms[axis]
    centre_idx = (np.asarray(data.shape[:3]) - 1) / 2.0
    centre_world = affine[:3, :3] @ centre_idx + affine[:3, 3]
    new[:3, 3] = centre_world - new[:3, :3] @ centre_idx
    return new


def foreground_mask(data: np.ndarray, modality: str, step: int = 1) -> np.ndarray:
    """The object (head or body) on ``data[::step, ::step, ::step]``: bool, holes filled.

    ``data`` must be in the file's units (MRI arbitrary, CT in HU). MRI: above 10 % of the 99th
    percentile above the background level; CT: above -500 HU. Largest connected component.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    small = data[::step, ::step, ::step]
    if modality == "ct":
        mask = small > -500.0
    else:
        lo, hi = np.percentile(small, [0.5, 99.0])
        mask = small > lo + 0.1 * (hi - lo)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def object_grid(mask: np.ndarray, step: int, affine: np.ndarray, shape: tuple[int, int, int],
                margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """Affine (4, 4) of an isotropic ``shape`` grid centred on the mask's box and covering it.

    ``mask`` was found on the grid ``[::step]`` of a canonical volume with ``affine``; the new
    grid keeps that volume's axis directions, with voxel size ``max(extent_mm * margin / shape)``.
    """
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    full_shape = np.asarray(mask.shape) * step
    if mask.any():
        idx = [np.flatnonzero(mask.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
        lo = np.array([v[0] * step for v in idx], dtype=np.float64)
        hi = np.array([v[-1] * step + step - 1 for v in idx], dtype=np.float64)
    else:
        lo, hi = np.zeros(3), full_shape - 1.0
    extent = (hi - lo + 1) * zooms
    voxel = float(np.max(extent * margin / np.asarray(shape, dtype=np.float64)))
    centre_world = affine[:3, :3] @ ((lo + hi) / 2.0) + affine[:3, 3]
    new = np.eye(4)
    new[:3, :3] = affine[:3, :3] / zooms * voxel
    new[:3, 3] = centre_world - new[:3, :3] @ ((np.asarray(shape, dtype=np.float64) - 1) / 2.0)
    return new


def resample(data: np.ndarray, affine: np.ndarray, new_affine: np.ndarray,
             shape: tuple[int, int, int], anti_alias: bool = True) -> np.ndarray:
    """Linear resampling of ``data`` (with ``affine``) onto the grid (``new_affine``, ``shape``).

    Returns float32 ``shape``; 0 outside the input. With ``anti_alias`` a Gaussian of sigma
    ``(factor - 1) / 2`` input voxels smooths every axis that shrinks by ``factor > 1``.
    ``data`` may be modified in place by the pre-filter when it is float32.
    """
    # output index -> input index: inv(A) @ B
    mapping = np.linalg.inv(affine) @ new_affine
    matrix, offset = mapping[:3, :3], mapping[:3, 3]
    factors = np.sqrt((matrix ** 2).sum(axis=1))  # input voxels per output step, per input axis
    data = np.asarray(data, dtype=np.float32)
    if anti_alias and np.any(factors > 1.0 + 1e-6):
        sigma = np.maximum(0.0, (factors - 1.0) / 2.0)
        ndimage.gaussian_filter(data, sigma=sigma, output=data, mode="nearest", truncate=3.0)
    if np.allclose(matrix, np.diag(np.diag(matrix)), atol=1e-9):
        matrix = np.diag(matrix)  # faster path in scipy for axis-aligned grids
    return ndimage.affine_transform(data, matrix, offset=offset, output_shape=tuple(shape), order=1,
                                    mode="constant", cval=0.0, prefilter=False, output=np.float32)


# -- intensities -----------------------------------------------------------------------------
def scale_intensities(data: np.ndarray, modality: str, mask: np.ndarray | None = None, step: int = 1,
                      ct_window: tuple[float, float] = CT_WINDOW) -> np.ndarray:
    """Map ``data`` (file units) to [0, 1] in place (float32) and return it.

    MRI: (x - p0.5(all)) / (p99.5(foreground) - p0.5(all)), clipped; ``mask`` is the foreground
    on the ``[::step]`` grid (whole volume when None). CT: the HU window ``ct_window`` -> [0, 1].
    """
    if modality == "ct":
        lo, hi = ct_window
        if not hi > lo:
            raise ValueError(f"CT window {ct_window}: the upper bound must exceed the lower")
        if float(data.min()) >= 0.0:
            log.warning("CT volume has no negative values: assuming Hounsfield units + 1024")
            lo, hi = lo + 1024.0, hi + 1024.0
    elif modality == "mri":
        small = data[::step, ::step, ::step]
        lo = float(np.percentile(small, 0.5))
        fg = small[mask] if mask is not None and mask.any() else small
        hi = float(np.percentile(fg, 99.5))
        if not hi > lo:
            lo, hi = float(data.min()), float(data.max())
        if not hi > lo:
            hi = lo + 1.0  # constant volume: all zeros
    else:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    data -= np.float32(lo)
    data *= np.float32(1.0 / (hi - lo))
    np.clip(data, 0.0, 1.0, out=data)
    return data


# -- public ----------------------------------------------------------------------------------
def _check_shape(shape: tuple[int, ...] | None, region: str) -> tuple[int, int, int]:
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; expected one of {', '.join(REGIONS)}")
    if shape is None:
        return region_preset(region).challenge_shape
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"shape {shape}: expected three sizes of at least 2 voxels")
    return shape  # type: ignore[return-value]


def to_challenge_form(path: str | Path, region: str, *, shape: tuple[int, int, int] | None = None,
                      modality: str | None = None, margin: float = DEFAULT_MARGIN,
                      ct_window: tuple[float, float] = CT_WINDOW,
                      orientation: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Convert one volume file to the challenge's form.

    Args:
        path: a NIfTI, NRRD, MHA or MHD file.
        region: ``"brain"`` (256^3, MRI scaling) or ``"abdom"`` (512^3, CT window).
        shape: grid size (a0, a1, a2) instead of the region's challenge shape (for quick runs).
        modality: ``"mri"`` or ``"ct"`` to override the region's default intensity mapping.
        margin: the grid spans ``margin`` times the object's largest extent (>= 1).
        ct_window: Hounsfield units mapped to 0 and 1.
        orientation: axis codes (e.g. ``"LPS"``) that replace the header's orientation, for files
            whose header is known to be wrong.

    Returns:
        ``(data, affine)``: float32 ``shape`` in [0, 1] with axes R, A, S (slices along a2), and
        the (4, 4) float64 affine of the isotropic grid (voxel size in mm on its diagonal for
        axis-aligned inputs).
    """
    target = _check_shape(shape, region)
    modality = region_preset(region).modality if modality is None else modality
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    if not margin >= 1.0:
        raise ValueError(f"margin {margin}: must be at least 1 (the grid must cover the object)")

    return _convert(_read(path), target, modality, margin, ct_window, orientation)


def _read(path: str | Path) -> Volume:
    """:func:`mood.volumes.volume_io.read_volume` with the file named in its errors and notes."""
    try:
        volume = read_volume(Path(path))
    except InputError as exc:
        raise ValueError(f"{path}: {exc}") from None
    for note in volume.notes:
        log.warning("%s: %s", path, note)
    return volume


def _convert(volume: Volume, target: tuple[int, int, int], modality: str, margin: float = DEFAULT_MARGIN,
             ct_window: tuple[float, float] = CT_WINDOW,
             orientation: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The steps of :func:`to_challenge_form` on a volume read in its own units (arguments checked)."""
    data, affine = volume.data, volume.affine
    if min(data.shape) < 2:
        raise ValueError(f"{volume.path}: shape {data.shape} has an axis shorter than 2 voxels")
    if orientation is not None:
        affine = override_orientation(data, affine, orientation)
    data, affine = to_canonical(data, affine)
    step = max(1, int(np.ceil(max(data.shape) / _MASK_GRID)))
    mask = foreground_mask(data, modality, step)
    new_affine = object_grid(mask, step, affine, target, margin)
    # ``data`` is our own float32 array (or a flipped view of it): scaled and filtered in place
    data = scale_intensities(np.asarray(data, dtype=np.float32), modality, mask, step, ct_window)
    out = resample(data, affine, new_affine, target)
    del data
    np.clip(out, 0.0, 1.0, out=out)
    return out, new_affine


def ensure_challenge_form(path: str | Path, region: str, *, shape: tuple[int, int, int] | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """One volume file in challenge form, for training, calibration and make-toy alike.

    A volume already in challenge form -- the region's challenge shape (or ``shape``) and values
    that inference would at most clip into [0, 1], not rescale -- is returned exactly as
    inference reads it (:func:`mood.volumes.volume_io.load_volume`: the array as stored, no reorientation,
    crop or intensity mapping), so that its slices are the ones the detector scores. Any other
    volume goes through :func:`to_challenge_form`.

    Returns ``(data, affine)``: float32 (a0, a1, a2) in [0, 1] and the (4, 4) float64 affine.
    """
    target = _check_shape(shape, region)
    volume = _read(path)
    data = volume.data
    if data.shape == target and not needs_rescale(float(data.min()), float(data.max())):
        volume = fit_unit_range(volume)
        return volume.data, volume.affine
    return _convert(volume, target, region_preset(region).modality)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, dtype: type = np.float32) -> Path:
    """Write ``data`` with ``affine`` (qform and sform code 1) atomically: temp file, then rename."""
    path = Path(path)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: nib.save(img, str(tmp)))
    return path


def convert_folder(input: Path, output: Path, region: str, **options) -> list[Path]:
    """Convert every volume in ``input`` (a folder or one file) into ``output/<name>.nii.gz``.

    ``options`` are passed to :func:`to_challenge_form`. A file that fails is logged (one line:
    file and reason) and skipped; the others are still converted. Returns the written paths.
    A file whose output would overwrite it is skipped. Raises ``ValueError`` for an unknown region
    or bad ``shape``, or if ``input`` holds no volume file.
    """
    input, output = Path(input), Path(output)
    _check_shape(options.get("shape"), region)
    files = list_inputs(input, READABLE_SUFFIXES)
    if not files:
        raise ValueError(f"{input}: no volume files ({', '.join(READABLE_SUFFIXES)})")
    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path in files:
        target = output / (strip_suffix(path.name) + ".nii.gz")
        if target.resolve() == path.resolve():
            log.error("%s: output would overwrite the input; skipped", path)
            continue
        try:
            data, affine = to_challenge_form(path, region, **options)
        except (ValueError, MemoryError) as exc:
            log.error("%s", exc if str(exc).startswith(str(path)) else f"{path}: {exc}")
            continue
        written.append(save_nifti(target, data, affine))
        log.info("%s -> %s", path, target)
    return written


__all__ = ["MODALITIES", "CT_WINDOW", "to_canonical", "override_orientation",
           "foreground_mask", "object_grid", "resample", "scale_intensities", "to_challenge_form",
           "ensure_challenge_form", "save_nifti", "convert_folder", "strip_suffix"]
