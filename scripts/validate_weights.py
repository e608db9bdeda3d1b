#!/usr/bin/env python3
"""Measure a region's weights on held-out volumes, next to the reconstruction-error baseline.

Builds a toy set with ``mood make-toy`` from normal volumes that did not train the weights, scores
it with each method through the package's command line, exactly as the challenge's metric reads
outputs (per kind with the localiser's leave-task-out rule: ``scripts/validate_localiser.py``):

* ``localiser``: the self-supervised U-Net, when the weights hold one;
* ``lsr``: latent spatial restoration (``--method lsr``);
* ``reconstruction``: the plain VQ-VAE baseline of the same weights (``--method reconstruction``:
  ``|x - decode(encode(x))|`` per voxel, its mean per volume),

and writes a JSON report, one picture per method of the anomalous case with the largest anomaly,
one picture of what the networks make of held-out slices (input, reconstruction, one restoration,
the LSR pixel map, the label outlined: two planes of that case and one of a normal case,
:mod:`mood.validation.stages`), what restoration does to the normal cases (the share of their codes
it replaces, ``|x - restoration|`` against ``|x - recon|`` inside the body: false alarms in the
making) and how much the prior gains from the context on them (NLL against the entropy of
their codes' own frequencies), whether the prior finds the anomalies unlikely (the AUROC of its
NLL on their codes against the normal body's, and the share of each above lambda_p, which
restoration replaces first; all and per kind), the LSR's case scores
(``<work>/<region>_lsr_case_scores.npz``: what
``compare_heldout.py --scores`` resamples) and (``--card``) the numbers into the weights card under
``info.validation.held_out``. Besides the whole set, both tasks are scored per anomaly kind and
per anomaly size (changed voxels), each group's anomalous cases with all the normal ones: what
the challenge's score would be if every anomaly were of that kind or size. With a dozen cases a
group holds one to four of them, so read these as where the weights fail, not as precise numbers.

    python scripts/validate_weights.py --region brain --weights weights/brain \\
        --sources ../shared/data/eval_only/rorden_t1.nii.gz ../shared/data/eval_only/icbm2009asym_t1_template.nii.gz \\
        --count 10 --work runs/validation --threads 2 --card --picture-dir docs/weights

The toy set is reused when ``--work`` already holds one made with the same arguments.
"""
from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mood.config import METHODS, region_preset  # noqa: E402
from mood.detection.detector import Detector  # noqa: E402
from mood.validation.bootstrap import read_case_scores, save_case_scores  # noqa: E402
from mood.validation.stages import (Row, code_separation, context_gain, draw_stages, nll_on_anomaly, planes_to_draw,  # noqa: E402
                                    restoration_on_normal)
from mood.validation.show import show  # noqa: E402
from mood.validation.toy import MANIFEST, make_toy  # noqa: E402
from mood.validation.validate import validate  # noqa: E402
from mood.volumes.volume_io import load_volume, write_json  # noqa: E402
from mood.detection.weights import read_card, write_card  # noqa: E402

METRICS = ("ap", "auroc", "best_dice")


def toy_set(region: str, sources: list[Path], work: Path, count: int, seed: int,
            size: tuple[int, int, int] | None = None, normal_fraction: float = 0.25) -> Path:
    """``work/toy/<region>`` made from ``sources`` (symlinked into one folder), reused if identical."""
    data = work / "toy"
    region_dir = data / region
    manifest = region_dir / MANIFEST
    wanted = {"inputs": sorted(p.name for p in sources), "count": count, "seed": seed,
              "shape": list(size or region_preset(region).challenge_shape), "normal_fraction": normal_fraction}
    if manifest.is_file():
        have = json.loads(manifest.read_text())
        if {**{k: have.get(k) for k in wanted}, "inputs": sorted(have["inputs"])} == wanted:
            return data
        shutil.rmtree(region_dir)
    src = work / "sources" / region
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for p in sources:
        (src / p.name).symlink_to(p.resolve())
    make_toy(src, region_dir, count=count, seed=seed, region=region, size=size, normal_fraction=normal_fraction)
    return data


def compact_png(src: Path, dst: Path) -> None:
    """Copy a picture as a 256-colour PNG: a fifth of the size, the same look (for the repository)."""
    from PIL import Image

    Image.open(src).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE,
                                            dither=Image.Dither.NONE).save(dst, optimize=True)


def largest_anomaly(cases: dict[str, dict]) -> str:
    return max(cases, key=lambda name: cases[name]["n_changed"])


#: anomaly sizes in changed voxels: (upper bound, group name); the challenge's toy cases span a few
#: hundred to tens of thousands
SIZES = ((1_000, "size < 1k voxels"), (10_000, "size 1k-10k voxels"), (float("inf"), "size > 10k voxels"))


def case_groups(cases: dict[str, dict]) -> dict[str, list[str]]:
    """Case -> groups it counts in: its anomaly's kind and size; a normal case counts in every group."""
    anomalous = {name: [f"kind {c['kind']}", next(g for bound, g in SIZES if c["n_changed"] < bound)]
                 for name, c in cases.items() if c["kind"] is not None}
    every = sorted({g for gs in anomalous.values() for g in gs})
    return {name: anomalous.get(name, every) for name in cases}


def group_table(methods: dict[str, dict]) -> str:
    """Markdown: all cases, then one row per group; AP (AUROC) of each method and task."""
    names = [(m, t) for m in methods for t in ("pixel", "sample")]
    rows = {"all cases": {(m, t): methods[m][t] for m, t in names}}
    for g in sorted({g for m, t in names for g in methods[m][t]["groups"]}):
        rows[g] = {(m, t): methods[m][t]["groups"][g] for m, t in names}
    lines = ["| cases | n (normal ones included) | " + " | ".join(f"{t} AP (AUROC) {m}" for m, t in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for g, row in rows.items():
        cells = [f"{row[k]['ap']:.4f} ({row[k]['auroc']:.2f})" for k in names]
        lines.append(f"| {g} | {row[names[0]]['n_cases']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@functools.lru_cache(maxsize=4)
def _volume(path: Path) -> np.ndarray:
    """A toy volume in [0, 1], read once although the picture and the summaries both use it."""
    return load_volume(path).data


def stages_picture(det: Detector, region_dir: Path, pred: Path, cases: dict[str, dict], png: Path) -> Path:
    """:func:`mood.validation.stages.draw_stages` of the largest anomaly's two fullest planes and the
    middle plane of the first normal case, with the LSR pixel maps in ``pred``."""
    anomalous = largest_anomaly(cases)
    normal = next((n for n, c in sorted(cases.items()) if c["kind"] is None), None)
    rows = []
    for name in [anomalous] + ([normal] if normal else []):
        label = load_volume(region_dir / "toy_label" / "pixel" / name).data > 0.5
        volume, scores = _volume(region_dir / "toy" / name), load_volume(pred / name).data
        for plane in planes_to_draw(label, 2 if name == anomalous else 1):
            rows.append(Row(name=f"{name.split('.nii')[0]} ({cases[name]['kind'] or 'normal'})",
                            volume=volume, scores=scores, label=label, plane=plane))
    return draw_stages(det, rows, png, title=f"{det.config.region}: held-out slices through the networks")


def normals_summary(det: Detector, region_dir: Path, cases: dict[str, dict]) -> dict[str, float]:
    """:func:`mood.validation.stages.restoration_on_normal` (3 restorations) and
    :func:`~mood.validation.stages.context_gain` (``context_*``) averaged over the normal cases,
    rounded for the card."""
    volumes = [_volume(region_dir / "toy" / name) for name, c in sorted(cases.items()) if c["kind"] is None]
    rows = [{**restoration_on_normal(det, v), **{f"context_{k}": x for k, x in context_gain(det, v).items()}}
            for v in volumes]
    if not rows:
        return {}
    return {"cases": len(rows), **{k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}}


def anomalies_summary(det: Detector, region_dir: Path, cases: dict[str, dict]) -> dict:
    """Does the prior find the anomalies unlikely? :func:`mood.validation.stages.code_separation` of
    the anomalous cases (all, and per kind)."""
    pooled: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for name, c in sorted(cases.items()):
        if c["kind"] is None:
            continue
        label = load_volume(region_dir / "toy_label" / "pixel" / name).data > 0.5
        split = nll_on_anomaly(det, _volume(region_dir / "toy" / name), label)
        for group in ("all", c["kind"]):
            pooled.setdefault(group, []).append(split)
    return {g: code_separation(splits, det.card.threshold_pixel) for g, splits in pooled.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--region", required=True, choices=("brain", "abdom"))
    ap.add_argument("--weights", required=True, type=Path, help="the region's weights folder")
    ap.add_argument("--sources", required=True, nargs="+", type=Path,
                    help="normal volumes that did not train the weights (any grid)")
    ap.add_argument("--count", type=int, default=10, help="toy cases (a quarter of them normal)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--restorations", type=int, default=15)
    ap.add_argument("--size", type=int, nargs=3, default=None, metavar=("A0", "A1", "A2"),
                    help="toy volumes of this shape instead of the region's challenge shape (quick runs)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                    help="default: every method the weights hold but fusion (which repeats LSR's slow pixel part)")
    ap.add_argument("--work", type=Path, default=Path("runs/validation"))
    ap.add_argument("--card", action="store_true", help="write the numbers into the weights card")
    ap.add_argument("--picture-dir", type=Path, default=None,
                    help="also copy the pictures here (e.g. docs/weights)")
    ap.add_argument("--picture-prefix", default=None,
                    help="file names of the copies: PREFIX_<lsr|reconstruction|stages>.png "
                         "(default: <region>_heldout)")
    args = ap.parse_args()

    card = read_card(args.weights)
    if args.methods is None:
        args.methods = [m for m in Detector.load(args.region, args.weights, device="cpu").methods() if m != "fusion"]
    trained_on = {f for model in ("vqvae", "prior", "localiser")
                  for f in card.info.get("training", {}).get(model, {}).get("train_files", [])}
    leaked = sorted(p.name for p in args.sources if p.name in trained_on)
    if leaked:
        ap.error(f"these sources trained the weights: {', '.join(leaked)}")

    start = time.perf_counter()
    data = toy_set(args.region, args.sources, args.work, args.count, args.seed,
                   tuple(args.size) if args.size else None)
    region_dir = data / args.region
    common = ["--weights", str(args.weights.resolve()), "--restorations", str(args.restorations)]
    if args.threads:
        common += ["--threads", str(args.threads)]

    report: dict = {"region": args.region, "weights": str(args.weights), "sources": [p.name for p in args.sources],
                    "count": args.count, "seed": args.seed, "restorations": args.restorations,
                    "cases": json.loads((region_dir / MANIFEST).read_text())["cases"], "methods": {}}
    case = largest_anomaly(report["cases"])
    groups = case_groups(report["cases"])
    pictures = {}
    for method in args.methods:
        pred_root = args.work / "pred" / method
        result = validate(data, regions=[args.region], workdir=pred_root,
                          extra_args=[*common, "--method", method], groups=groups)
        report["methods"][method] = {
            row["task"]: {**{k: row[k] for k in (*METRICS, "n_cases", "n_missing", "seconds")},
                          "groups": {g: {k: r[k] for k in (*METRICS, "n_cases", "n_positive")}
                                     for g, r in (row["groups"] or {}).items()}}
            for row in result["results"]}
        png = args.work / f"{args.region}_{method}_{case.split('.nii')[0]}.png"
        manifest_case = report["cases"][case]
        show(region_dir / "toy" / case, png, scores=pred_root / args.region / "pixel" / case,
             label=region_dir / "toy_label" / "pixel" / case,
             title=f"{args.region} {method}: {case} ({manifest_case['kind']} in {manifest_case['source']})")
        pictures[method] = png
    if "lsr" in args.methods:
        scores_file = args.work / f"{args.region}_lsr_case_scores.npz"
        save_case_scores(scores_file, read_case_scores(args.work / "pred" / "lsr" / args.region,
                                                       region_dir / "toy_label"),
                         json.loads((region_dir / MANIFEST).read_text()))
        det = Detector.load(args.region, args.weights, device="cpu")
        pictures["stages"] = stages_picture(det, region_dir, args.work / "pred" / "lsr" / args.region / "pixel",
                                            report["cases"], args.work / f"{args.region}_stages.png")
        report["normals"] = normals_summary(det, region_dir, report["cases"])
        report["anomalies"] = anomalies_summary(det, region_dir, report["cases"])
    report["seconds"] = round(time.perf_counter() - start, 1)
    out_json = args.work / f"{args.region}_validation.json"
    write_json(out_json, report)

    if args.picture_dir is not None:
        args.picture_dir.mkdir(parents=True, exist_ok=True)
        for what, png in pictures.items():
            pictures[what] = args.picture_dir / f"{args.picture_prefix or args.region + '_heldout'}_{what}.png"
            compact_png(png, pictures[what])
    kinds = sorted({c["kind"] or "normal" for c in report["cases"].values()})
    summary = {
        "command": " ".join(["python scripts/validate_weights.py", *sys.argv[1:]]),
        "set": f"{args.count} cases from {', '.join(report['sources'])} (make-toy seed {args.seed}; "
               f"kinds: {', '.join(kinds)}), {args.restorations} restorations",
        **{method: {task: {k: row[k] for k in (*METRICS, "n_cases", "groups")}
                    for task, row in report["methods"][method].items()}
           for method in args.methods},
        "pictures": {m: str(p) for m, p in pictures.items()},
        **({"normals": report["normals"]} if report.get("normals") else {}),
        **({"anomalies": report["anomalies"]} if report.get("anomalies") else {}),
        **({"case_scores": str(scores_file)} if "lsr" in args.methods else {}),
    }
    if args.card:
        card.info.setdefault("validation", {})["held_out"] = summary
        write_card(args.weights, card)
    print(json.dumps({k: v for k, v in summary.items() if k not in args.methods}, indent=2))
    print(group_table(report["methods"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
