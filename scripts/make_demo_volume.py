#!/usr/bin/env python3
"""Build the demo volume shipped in the package: ``mood/data/demo_brain_t1.nii.gz``.

Source: the MNI ICBM152 2009a nonlinear symmetric T1 template (1 mm, 197x233x189, uint8) as shipped
in the PyPI ``nilearn`` wheel (``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``;
the same file is ``../shared/data/brain/mni152_2009a_t1_template.nii.gz``). Licence: the MNI
copyright notice in ``mood/data/LICENSE-MNI152.txt`` (free use, keep the notice).

Reduction: 2x2x2 block means (exact anti-aliasing for a factor of two) -> 2 mm, 99x117x95, stored
as uint8 with ``scl_slope = 1/255`` so that readers see values in [0, 1]; the affine keeps the
template's world coordinates (each new voxel centre is the centre of its 2x2x2 block). The gzip
stream has no time stamp, so the file is byte-for-byte reproducible (about 230 KiB).

Usage::

    python scripts/make_demo_volume.py [--source FILE] [--output mood/data/demo_brain_t1.nii.gz]

Without ``--source`` the script takes the template from an installed ``nilearn``, else from
``../shared/data/brain/``; to get it from the registry: ``pip download nilearn --no-deps`` and pass
the file inside the wheel (a zip) after extracting it.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEMPLATE_NAME = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
TEMPLATE_MD5 = "5908620a4fa5aa20e26f79365f30bb56"  # nilearn 0.14.1's copy
DEFAULT_OUTPUT = REPO / "mood" / "data" / "demo_brain_t1.nii.gz"


def find_template() -> Path:
    """The template from an installed nilearn, else from ``../shared/data/brain``."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("nilearn")
        if spec is not None and spec.submodule_search_locations:
            candidate = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / TEMPLATE_NAME
            if candidate.is_file():
                return candidate
    except ImportError:
        pass
    candidate = REPO.parent / "shared" / "data" / "brain" / "mni152_2009a_t1_template.nii.gz"
    if candidate.is_file():
        return candidate
    raise SystemExit(f"template not found: install nilearn or pass --source (the file {TEMPLATE_NAME})")


def reduce(data: np.ndarray, affine: np.ndarray, factor: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Block means of ``factor``^3 voxels (edge padded) and the matching affine."""
    pad = [(0, (-n) % factor) for n in data.shape]
    data = np.pad(data.astype(np.float64), pad, mode="edge")
    shape = tuple(n // factor for n in data.shape)
    blocks = data.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))
    new = affine.copy()
    new[:3, :3] = affine[:3, :3] * factor
    new[:3, 3] = affine[:3, :3] @ np.full(3, (factor - 1) / 2.0) + affine[:3, 3]
    return blocks, new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=None, help=f"the template ({TEMPLATE_NAME})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    source = args.source or find_template()
    digest = hashlib.md5(source.read_bytes()).hexdigest()
    if digest != TEMPLATE_MD5:
        print(f"warning: {source} has md5 {digest}, not the expected {TEMPLATE_MD5}", file=sys.stderr)
    img = nib.load(str(source))
    raw = np.asarray(img.dataobj, dtype=np.float64)
    blocks, affine = reduce(raw, np.asarray(img.affine, dtype=np.float64))
    top = float(blocks.max()) or 1.0
    stored = np.clip(np.rint(blocks / top * 255.0), 0, 255).astype(np.uint8)

    out = nib.Nifti1Image(stored, affine)
    out.header.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1.0 / 255.0, 0.0)
    out.header.set_xyzt_units("mm")
    out.set_qform(affine, 4)  # 4: MNI152 space
    out.set_sform(affine, 4)
    out.header["descrip"] = b"MNI ICBM152 2009a sym T1, 2mm (see LICENSE-MNI152.txt)"
    buffer = io.BytesIO()
    file_map = nib.Nifti1Image.make_file_map({"image": buffer, "header": buffer})
    out.to_file_map(file_map)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(buffer.getvalue())
    check = nib.load(str(args.output))
    values = check.get_fdata()
    print(f"{source} -> {args.output}: {check.shape} at {check.header.get_zooms()[0]:.0f} mm, "
          f"values {values.min():.3f}..{values.max():.3f}, {args.output.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
