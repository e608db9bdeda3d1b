#!/usr/bin/env python3
"""Export trained weights for shipping: float16 shards and a card that says what trained them.

Copies ``--src`` (a ``mood train prior`` output folder: card + both models) to ``--dst`` as float16
and writes into the card's ``info``:

* ``data``: the training and holdout files by name, with their sha256 and licence, taken from the
  data folder and its README's table (``| region/file | what | size | source | licence | use |``);
  never a path of the training machine;
* every key of ``--info`` (a JSON file: ``quality``, ``notes``, ``campaign``, ...).

The training record of both models (``info.training``) comes with the source card; where an older
``mood train`` stored a folder as a path, it is replaced by the folder's name, and its ``tiny``
(once "channels differ from the preset", so true for a narrowed model) is restated from the config.

    python scripts/export_weights.py --src runs/brain/full --dst weights/brain \\
        --data ../shared/data/brain --info runs/brain_info.json

With ``--localiser``, ``--src`` is a ``mood train localiser`` output folder instead, and its localiser
is added to the existing weights folder ``--dst`` (float16), whose LSR networks and card stay; the
localiser's data provenance goes under ``info.data_localiser``. Calibrate it next:

    python scripts/export_weights.py --localiser --src runs/brain/loc_all --dst weights/brain --data DATA/brain
    mood calibrate --region brain --data HOLDOUT --weights weights/brain --networks localiser
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from mood.config import is_tiny  # noqa: E402
from mood.training import export_weights  # noqa: E402
from mood.training.export import add_localiser  # noqa: E402
from mood.training.data import provenance  # noqa: E402
from mood.detection.weights import read_card  # noqa: E402


def licences(data: Path) -> dict[str, str]:
    """``{file name: "licence; source"}`` from the data README's table (one folder above ``data``)."""
    readme = data.parent / "README.md"
    out = {}
    for line in readme.read_text().splitlines() if readme.is_file() else []:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[0].startswith(f"{data.name}/"):
            out[cells[0].split("/", 1)[1]] = f"{cells[4]}; {cells[3]}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, required=True, help="trained weights folder (VQ-VAE and prior)")
    ap.add_argument("--dst", type=Path, required=True, help="folder to write, e.g. weights/brain")
    ap.add_argument("--data", type=Path, required=True, help="the folder of volumes they were trained on")
    ap.add_argument("--info", type=Path, default=None, help="JSON object merged into the card's info")
    ap.add_argument("--localiser", action="store_true",
                    help="add --src's localiser to the existing weights folder --dst")
    args = ap.parse_args()
    if args.localiser:
        record = read_card(args.src).info["training"]["localiser"]
        data_info = data_record(args.data, record["train_files"], record["holdout_files"])
        add_localiser(args.src, args.dst, torch.float16, {"data_localiser": data_info})
        print(f"added the localiser of {args.src} to {args.dst} (float16)")
        return

    card = read_card(args.src)
    training = card.info["training"]
    for record in training.values():  # an older `mood train` stored folders as paths, and `tiny` wrongly
        record["tiny"] = is_tiny(card.config)
        if isinstance(record.get("data"), str):
            record["data"] = {"folder": Path(record["data"]).name}
        if isinstance(record.get("vqvae_from"), str):
            record["vqvae_from"] = {"weights": Path(record["vqvae_from"]).name}
    vq = training["vqvae"]
    # the prior may have learnt from more volumes than its frozen VQ-VAE (heads added later)
    trained_on = list(dict.fromkeys(vq["train_files"] + training.get("prior", {}).get("train_files", [])))
    extra = json.loads(args.info.read_text()) if args.info else {}
    export_weights(args.src, args.dst, dtype=torch.float16, info={
        "training": training, "data": data_record(args.data, trained_on, vq["holdout_files"]), **extra})
    print(f"exported {args.src} -> {args.dst} (float16, {len(trained_on) + len(vq['holdout_files'])} files recorded)")


def data_record(data: Path, trained_on: list[str], holdout: list[str]) -> dict:
    """What trained a model: files by name with sha256 and licence (refused without a licence)."""
    files = trained_on + [f for f in holdout if f not in trained_on]
    known = licences(data)
    missing = [f for f in files if f not in known]
    if missing:
        raise SystemExit(f"no licence for {missing} in {data.parent / 'README.md'}")
    return {"folder": data.resolve().name, "trained_on": trained_on, "holdout_for_loss_and_calibration": holdout,
            "sha256": provenance([data / f for f in files], data), "licences": {f: known[f] for f in files},
            "source": "public volumes gathered for this project (../shared/data, see its README)"}


if __name__ == "__main__":
    main()
