#!/usr/bin/env python3
"""Held-out slices and what each VQ-VAE makes of them: a picture to read beside the holdout L1.

One row of inputs (planes of ``--volume`` spread as inference spreads them, through the training
pipeline: challenge form, the region's slice extraction and normalisation), then one row of
reconstructions ``decode(encode(x))`` per weights folder (a VQ-VAE alone is enough; the first
folder's card says the region and its preprocessing), each panel
with its L1 inside the body. The same grey scale for every panel of a column.

    python scripts/reconstructions.py --volume ../shared/data/brain/niivue_otsu.nii.gz \\
        --weights "base=runs/arms/base" --weights "crops=runs/arms/crop64" --out docs/weights/recon.png
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mood.detection.weights import load_vqvae, read_card  # noqa: E402
from mood.training.data import fixed_batch, load_bank  # noqa: E402
from mood.validation.show import ensure_mpl_config  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--volume", required=True, type=Path, help="a held-out normal volume (any grid)")
    ap.add_argument("--weights", required=True, action="append", metavar="NAME=DIR")
    ap.add_argument("--slices", type=int, default=4, help="planes to show (spread over the middle half)")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    models = {}
    for spec in args.weights:
        name, _, folder = spec.partition("=")
        models[name] = load_vqvae(Path(folder), read_card(Path(folder)))
    config = read_card(Path(args.weights[0].partition("=")[2])).config
    with tempfile.TemporaryDirectory() as cache:
        bank = load_bank(args.volume, config, Path(cache))
    x, coord = fixed_batch([bank], 2 * args.slices)
    x, coord = x[args.slices // 2: args.slices // 2 + args.slices], coord[args.slices // 2: args.slices // 2 + args.slices]
    inside = x != config.background
    rows = [("input", x)]
    with torch.no_grad():
        for name, vq in models.items():
            rows.append((name, vq(x, coord)[0]))

    ensure_mpl_config()
    from matplotlib.figure import Figure

    height = 2.3 * len(rows) + 0.4
    fig = Figure(figsize=(2.2 * len(x), height), dpi=100)
    fig.patch.set_facecolor("black")
    for c in range(len(x)):
        lo, hi = np.percentile(x[c].numpy(), [0.5, 99.5])
        for r, (name, images) in enumerate(rows):
            ax = fig.add_subplot(len(rows), len(x), r * len(x) + c + 1)
            ax.imshow(images[c].numpy(), cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-3), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.text(0.02, 0.98, name, color="yellow", fontsize=8, va="top", transform=ax.transAxes)
            if r > 0:
                err = float((images[c] - x[c]).abs()[inside[c]].mean()) if inside[c].any() else 0.0
                ax.text(0.98, 0.02, f"L1 body {err:.3f}", color="white", fontsize=7, ha="right",
                        transform=ax.transAxes)
    fig.suptitle(f"{args.volume.name}: held-out planes and their reconstructions (networks' frame)",
                 color="white", fontsize=9, y=1 - 0.1 / height)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.4 / height,
                        wspace=0.02, hspace=0.02)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, facecolor="black")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
