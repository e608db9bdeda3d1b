"""Pictures: a montage of axial slices with a score map overlaid and a label outlined.

In: a volume (file or array (a0, a1, a2)) with its affine, optionally a score map and a label of the
same shape. Out: one PNG. Slices are shown as a radiologist reads them: axial, anterior at the top,
the patient's right on the image's left (radiological convention). The orientation comes from the
affine (nibabel orientation codes), never from assumptions about the array order; an array without
an affine is taken to be RAS (the challenge's storage: a0 -> right, a1 -> anterior, a2 -> superior).

Matplotlib runs headless (Agg, no pyplot state) and never needs a writable home: when
``MPLCONFIGDIR`` is unset and ``$HOME`` is not writable, a temporary folder is used.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from ..volumes.volume_io import InputError, read_volume

#: Scores at or below this fraction of the colour range are not drawn (the anatomy stays visible);
#: above it the overlay's opacity grows with the score up to OVERLAY_ALPHA at half the range.
OVERLAY_FLOOR = 0.05
OVERLAY_ALPHA = 0.7


def ensure_mpl_config() -> None:
    """Point matplotlib's config/cache folder at a temporary one if home is not writable (a read-only
    container): call it before matplotlib is imported."""
    if os.environ.get("MPLCONFIGDIR"):
        return
    home = Path(os.environ.get("HOME") or "/nonexistent") / ".config"
    if os.access(home if home.exists() else home.parent, os.W_OK):
        return
    os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="mood-mpl-")


def _load(item: Path | str | np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """An array as it is (no affine), or a file through :func:`mood.volumes.volume_io.read_volume`."""
    if isinstance(item, np.ndarray):
        return item, None
    try:
        volume = read_volume(Path(item))
    except InputError as exc:
        raise ValueError(f"{what} {item}: {exc}") from None
    return volume.data, volume.affine


def to_ras(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``data`` (a0, a1, a2) reordered so that its axes point R, A, S (a view; no resampling)."""
    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(data, ornt)


def ras_zooms(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes (mm) along the R, A, S axes of :func:`to_ras`'s output."""
    ornt = nib.orientations.io_orientation(affine)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    out = np.empty(3)
    for axis, (world, _sign) in enumerate(ornt):
        out[int(world)] = zooms[axis]
    return out


def radiological(slice_ra: np.ndarray) -> np.ndarray:
    """An axial slice indexed (R, A) -> image rows anterior-first, columns patient-right-first."""
    return slice_ra.T[::-1, ::-1]


def _overlay_rgba(scores: np.ndarray, s_max: float, cmap) -> np.ndarray:
    """Scores (rows, cols) -> RGBA whose opacity grows with the score: low scores stay clear."""
    t = np.clip(np.nan_to_num(scores / s_max), 0.0, 1.0)
    rgba = cmap(t)
    rgba[..., 3] = np.where(t > OVERLAY_FLOOR, OVERLAY_ALPHA * np.clip(t / 0.5, 0.0, 1.0) ** 0.75, 0.0)
    return rgba


def choose_slices(volume_ras: np.ndarray, n_slices: int, label_ras: np.ndarray | None = None,
                  scores_ras: np.ndarray | None = None) -> list[int]:
    """``n_slices`` axial indices spread evenly over the object, including the label's and the
    scores' largest slices when given. Returns sorted, unique indices."""
    depth = volume_ras.shape[2]
    profile = (volume_ras > 0.05 * float(volume_ras.max() or 1.0)).sum(axis=(0, 1))
    rows = np.flatnonzero(profile)
    first, last = (int(rows[0]), int(rows[-1])) if rows.size else (0, depth - 1)
    n = max(1, min(n_slices, last - first + 1))
    chosen = np.unique(np.round(np.linspace(first, last, n + 2)[1:-1] if n < last - first + 1
                                else np.arange(first, last + 1)).astype(int)).tolist()
    for extra in (label_ras, scores_ras):
        if extra is None:
            continue
        area = (extra > 0.5).sum(axis=(0, 1)) if extra is label_ras else extra.sum(axis=(0, 1))
        # Only slices through the object: score maps are held constant beyond the outermost
        # scored plane, which would otherwise make an empty end slice the "largest".
        area = np.where((np.arange(depth) >= first) & (np.arange(depth) <= last), area, 0)
        if float(area.max()) > 0:
            best = int(np.argmax(area))
            if best not in chosen:
                chosen[int(np.argmin([abs(c - best) for c in chosen]))] = best
    return sorted(set(chosen))


def show(volume: Path | str | np.ndarray, png: Path | str, scores: Path | str | np.ndarray | None = None,
         label: Path | str | np.ndarray | None = None, n_slices: int = 12,
         affine: np.ndarray | None = None, title: str | None = None) -> Path:
    """Draw a montage of axial slices of ``volume`` into ``png`` and return its path.

    Args:
        volume: NIfTI path or array (a0, a1, a2).
        png: output file (folders are created).
        scores: score map (path or array) of the volume's shape, drawn as a semi-transparent
            colour map (0..1 when its values lie there, else 0..max); values near 0 are not drawn.
        label: anomaly mask of the volume's shape, outlined in cyan (contour at 0.5).
        n_slices: number of axial slices (evenly over the object's extent; the label's and the
            scores' largest slices are included).
        affine: (4, 4) voxel -> world; default the volume file's affine, or RAS identity for arrays.
        title: figure title (default: the volume's file name).
    """
    if n_slices < 1:
        raise ValueError(f"n_slices={n_slices}: must be at least 1")
    vol, vol_affine = _load(volume, "volume")
    if vol.ndim != 3:
        raise ValueError(f"volume: expected a 3-D array, got shape {vol.shape}")
    if affine is None:
        affine = vol_affine if vol_affine is not None else np.eye(4)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("affine: expected a finite, non-singular (4, 4) matrix")
    extras = []
    for item, what in ((scores, "scores"), (label, "label")):
        if item is None:
            extras.append(None)
            continue
        arr, _ = _load(item, what)
        if arr.shape != vol.shape:
            raise ValueError(f"{what} shape {arr.shape} differs from the volume's {vol.shape}")
        extras.append(to_ras(np.asarray(arr, dtype=np.float32), affine))
    score_ras, label_ras = extras
    vol_ras = to_ras(np.asarray(vol, dtype=np.float32), affine)
    zooms = ras_zooms(affine)
    slices = choose_slices(vol_ras, n_slices, label_ras, score_ras)

    ensure_mpl_config()
    from matplotlib import colormaps  # imported here, after the config folder is settled
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    stride = max(1, int(round((vol_ras.size / 2e6) ** (1 / 3))))  # ~2M voxels suffice for percentiles
    sample = vol_ras[::stride, ::stride, ::stride]
    finite = sample[np.isfinite(sample)]
    v_lo, v_hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
    v_hi = v_hi if v_hi > v_lo else v_lo + 1.0
    s_max = 1.0
    if score_ras is not None:
        top = float(np.nanmax(score_ras)) if score_ras.size else 0.0
        s_max = 1.0 if (0.0 <= float(np.nanmin(score_ras)) and top <= 1.0) else (top or 1.0)

    n = len(slices)
    cols = next((c for c in (6, 5, 4) if n % c == 0), min(n, 6)) if n > 6 else n
    rows = int(np.ceil(n / cols))
    aspect = zooms[1] / zooms[0]  # image rows run along A, columns along R
    panel_w = 2.6
    panel_h = panel_w * aspect * vol_ras.shape[1] / vol_ras.shape[0]
    fig = Figure(figsize=(cols * panel_w + (0.9 if score_ras is not None else 0.2), rows * panel_h + 0.6),
                 dpi=100)
    fig.patch.set_facecolor("black")
    cmap = colormaps["inferno"]
    for i, k in enumerate(slices):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_facecolor("black")
        ax.imshow(radiological(vol_ras[:, :, k]), cmap="gray", vmin=v_lo, vmax=v_hi, aspect=aspect,
                  interpolation="nearest")
        if score_ras is not None:
            ax.imshow(_overlay_rgba(radiological(score_ras[:, :, k]), s_max, cmap), aspect=aspect,
                      interpolation="nearest")
        if label_ras is not None:
            lab = radiological(label_ras[:, :, k])
            if lab.max() > 0.5 and lab.min() < 0.5:
                ax.contour(lab, levels=[0.5], colors="cyan", linewidths=0.9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.02, 0.02, f"z={k}", color="yellow", fontsize=7, transform=ax.transAxes)
        if i == 0:  # orientation letters: anterior up, patient's right on the left
            for x, y, t in ((0.5, 0.96, "A"), (0.5, 0.04, "P"), (0.05, 0.5, "R"), (0.95, 0.5, "L")):
                ax.text(x, y, t, color="white", fontsize=8, ha="center", va="center", transform=ax.transAxes)
    if score_ras is not None:
        cax = fig.add_axes((0.965, 0.1, 0.012, 0.8))
        bar = fig.colorbar(ScalarMappable(Normalize(0.0, s_max), cmap), cax=cax)
        bar.ax.tick_params(colors="white", labelsize=7)
    if title is None:
        title = Path(volume).name if not isinstance(volume, np.ndarray) else "volume"
    fig.suptitle(f"{title}  (axial, radiological: patient's right on the left)", color="white", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.95 if score_ras is not None else 0.99, bottom=0.01,
                        top=1 - 0.45 / (rows * panel_h + 0.6), wspace=0.02, hspace=0.02)
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, facecolor="black")
    return png


__all__ = ["show", "to_ras", "ras_zooms", "radiological", "choose_slices", "ensure_mpl_config"]
