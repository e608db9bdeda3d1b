#!/usr/bin/env python3
"""Measure localisers honestly: per anomaly kind, on held-out heads, each kind by a model that no
task of its kind trained (leave-task-out folds, as "Many tasks make light work").

The anomalies that judge (``mood make-toy``'s kinds) resemble some of the tasks that teach
(:data:`mood.config.KIND_TEACHERS`: blobs are a smooth intensity change, sink and source a
deformation, foreign a patch interpolation or blend; noise and shuffle are made by no task). A
localiser's number on a kind therefore *counts* only when none of that kind's teachers trained it.
Each weights folder's card says which tasks trained its localiser; this script scores every model
on the same toy set (every plane, one pass per case for both tasks, outputs as the evaluator reads
them), then reports per kind -- that kind's anomalous cases with all normal ones, the challenge's
metric -- and marks which numbers count:

    python scripts/validate_localiser.py --region brain --weights weights/brain \\
        --folds runs/brain/fold_no_intensity runs/brain/fold_no_deformation runs/brain/fold_no_patch \\
        --sources ../shared/data/eval_only/rorden_t1.nii.gz DATA/brain/measure_only/brainbrowser_structural1.nii.gz \\
                  DATA/brain/measure_only/brainbrowser_structural2.nii.gz ../shared/data/brain/fnndsc_eun_uchar_8.nii.gz \\
        --train-data DATA/brain --count 42 --work runs/validation_localiser --card --picture-dir docs/weights

Also written: each held-out head's highest correlation with a training head of the weights (both
in challenge form: a held-out head that is a training head in all but name measures nothing), the
case scores, and (``--picture-dir``) one picture per kind of the weights' map on its largest
anomaly, the label outlined. ``--card`` writes the summary into the weights card under
``info.validation.localiser``. The toy set is reused when ``--work`` already holds one made with
the same arguments, and so are LSR's outputs (``--work``/lsr/KEY/, KEY a digest of LSR's networks,
calibration and restorations): the fusion with a new localiser then costs the localiser's pass alone.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from validate_weights import compact_png, toy_set  # noqa: E402

from mood.config import KIND_TEACHERS, TRAINING_TASKS  # noqa: E402
from mood.detection.detector import Detector, fuse  # noqa: E402
from mood.detection.weights import read_card, write_card  # noqa: E402
from mood.training.data import provenance  # noqa: E402
from mood.validation.anomalies import KINDS  # noqa: E402
from mood.validation.metrics import Float16Histogram, ScoreCounts, auroc, average_precision, summarise  # noqa: E402
from mood.validation.show import show  # noqa: E402
from mood.validation.toy import MANIFEST  # noqa: E402
from mood.volumes.convert import ensure_challenge_form  # noqa: E402
from mood.volumes.volume_io import list_inputs, load_volume, write_json  # noqa: E402


def trained_tasks(weights: Path) -> tuple[str, ...]:
    """The task families that trained the localiser of ``weights`` (its card's training record)."""
    settings = read_card(weights).info.get("training", {}).get("localiser", {}).get("settings", {})
    return tuple(settings.get("tasks", TRAINING_TASKS))


def counts_for(kind: str, tasks: tuple[str, ...]) -> bool:
    """Whether a model trained on ``tasks`` may be measured on ``kind``: none of its teachers trained it."""
    return not set(KIND_TEACHERS[kind]) & set(tasks)


def portable(arg: str | Path) -> str:
    """An argument or path as a card may hold it: relative to the repository when inside it, else
    ``.../<name>`` for an absolute path (the machine's folders mean nothing elsewhere)."""
    text = str(arg)
    if not text.startswith("/"):
        return text
    try:
        return Path(text).resolve().relative_to(REPO).as_posix()
    except ValueError:
        return f".../{Path(text).name}"  # the name given, not a symlink's target's


def histogram(pixel: np.ndarray, label: np.ndarray) -> np.ndarray:
    """The counts of a pixel map as the evaluator reads it (clipped, float16) against its label."""
    hist = Float16Histogram()
    hist.add(np.clip(pixel, 0, 1).astype(np.float16), label)
    return hist.counts


def lsr_key(weights: Path, restorations: int) -> str:
    """A digest of what LSR's outputs depend on: its networks' bytes, its calibration and the number
    of restorations (not the localiser's, so a new localiser in the same folder reuses them)."""
    c = read_card(weights)
    shards = sorted(weights.glob("vqvae-*.safetensors")) + sorted(weights.glob("prior-*.safetensors"))
    blob = json.dumps([provenance(shards, weights), c.lambda_s, c.lambda_p, c.sample_map.scale, c.pixel_map.scale,
                       restorations], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def lsr_outputs(det: Detector, volume: np.ndarray, pixel: bool, cache: Path, restorations: int
                ) -> tuple[float, np.ndarray | None]:
    """LSR's sample score and (``pixel``) its map, as the evaluator reads it (float16), from
    ``cache`` (.npz) where it holds them; what it lacks is computed (seed 0) and added there."""
    held = {}
    if cache.is_file():
        with np.load(cache) as f:
            held = dict(f)
    missing = {"sample"} - set(held) | ({"map"} - set(held) if pixel else set())
    if "sample" in missing:
        held["sample"] = np.float64(det.score(volume, "sample", "lsr"))
    if "map" in missing:
        lsr_map = det.score(volume, "pixel", "lsr", restorations=restorations, seed=0)
        held["map"] = np.clip(lsr_map, 0, 1).astype(np.float16)
    if missing:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **held)
    return float(held["sample"]), held["map"].astype(np.float32) if pixel else None


def score_cases(weights: Path, region: str, region_dir: Path, cases: dict[str, dict],
                keep: set[str], out: Path, lsr: Path | None = None, lsr_pixel: set[str] = frozenset(),
                restorations: int = 15) -> dict[str, dict[str, dict]]:
    """Every case through the localiser of ``weights`` (one pass for both tasks): its sample score
    and its pixel histogram as the evaluator reads the map; the maps of ``keep`` saved under ``out``.
    With ``lsr`` (a cache folder of LSR's outputs, :func:`lsr_outputs`) also LSR's and the fusion's
    sample scores, and on the cases ``lsr_pixel`` their pixel maps (``restorations`` restorations,
    seed 0). Returns ``{method: {case: {"sample", "counts"}}}``."""
    det = Detector.load(region, weights, device="cpu")
    out.mkdir(parents=True, exist_ok=True)
    scored: dict[str, dict[str, dict]] = {"localiser": {}, **({"lsr": {}, "fusion": {}} if lsr is not None else {})}
    for name in sorted(cases):
        volume = load_volume(region_dir / "toy" / name)
        label = load_volume(region_dir / "toy_label" / "pixel" / name).data > 0.5
        sample, pixel = det.localiser_outputs(volume.data)
        scored["localiser"][name] = {"sample": sample, "counts": histogram(pixel, label)}
        if name in keep:
            np.save(out / f"{name.split('.nii')[0]}.npy", np.clip(pixel, 0, 1).astype(np.float16))
        if lsr is not None:
            lsr_sample, lsr_map = lsr_outputs(det, volume.data, name in lsr_pixel,
                                              lsr / f"{name.split('.nii')[0]}.npz", restorations)
            scored["lsr"][name] = {"sample": lsr_sample}
            scored["fusion"][name] = {"sample": fuse(sample, lsr_sample)}
            if lsr_map is not None:
                scored["lsr"][name]["counts"] = histogram(lsr_map, label)
                scored["fusion"][name]["counts"] = histogram(fuse(pixel, lsr_map), label)
    return scored


def group_metrics(scored: dict[str, dict], cases: dict[str, dict], members: list[str]) -> dict:
    """The challenge's metric on ``members``: pooled pixel AP (and AUROC, best Dice) over the members
    with a pixel map, sample AP and AUROC over all of them."""
    sample = ScoreCounts.from_arrays(np.array([scored[n]["sample"] for n in members]),
                                     np.array([cases[n]["kind"] is not None for n in members]))
    out = {"n_cases": len(members), "sample_ap": average_precision(sample), "sample_auroc": auroc(sample)}
    mapped = [n for n in members if "counts" in scored[n]]
    if mapped and any(cases[n]["kind"] is not None for n in mapped):
        pixel = summarise(Float16Histogram(sum(scored[n]["counts"] for n in mapped)).to_counts())
        out.update(pixel_cases=len(mapped), pixel_ap=pixel["ap"], pixel_auroc=pixel["auroc"],
                   pixel_best_dice=pixel["best_dice"])
    return out


def head_correlations(sources: list[Path], train_files: list[Path], region: str) -> dict[str, dict]:
    """Each held-out head's Pearson correlation with every training head, both in challenge form:
    the highest, and with which head."""
    def flat(path: Path) -> np.ndarray:
        v = ensure_challenge_form(path, region)[0].astype(np.float32).ravel()
        return (v - v.mean()) / max(float(v.std()), 1e-6)

    if not train_files:
        raise ValueError("no training head of the weights' card found in --train-data")
    train = {p.name: flat(p) for p in train_files}
    out = {}
    for src in sources:
        v = flat(src)
        corr = {name: float(np.dot(v, t) / v.size) for name, t in train.items()}
        best = max(corr, key=corr.get)
        out[src.name] = {"max": round(corr[best], 3), "with": best}
    return out


def table(models: dict[str, dict], kinds: list[str]) -> str:
    """Markdown: one row per kind (its cases with all normal ones); each model's pixel AP (sample
    AUROC); numbers that do not count (a task of the kind trained the model) in brackets."""
    lines = ["| kind | cases | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for kind in kinds:
        cells = []
        for m in models.values():
            r = m["kinds"][kind]
            cell = f"{r['pixel_ap']:.3f} ({r['sample_auroc']:.2f})" if "pixel_ap" in r else f"- ({r['sample_auroc']:.2f})"
            cells.append(cell if r["counts"] else f"[{cell}]")
        n = next(iter(models.values()))["kinds"][kind]["n_cases"]
        lines.append(f"| {kind} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--region", required=True, choices=("brain", "abdom"))
    ap.add_argument("--weights", required=True, type=Path, help="the weights folder whose localiser ships")
    ap.add_argument("--folds", nargs="*", type=Path, default=[],
                    help="weights folders of leave-task-out localisers (their cards name their tasks)")
    ap.add_argument("--sources", required=True, nargs="+", type=Path,
                    help="normal volumes of people no model trained or was tuned on (any grid)")
    ap.add_argument("--train-data", type=Path, default=None,
                    help="the folder that trained the weights: each source's correlation with its heads")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=None,
                    help="score only these kinds' cases and the normal ones (e.g. noise shuffle: an arm's quick "
                         "reading on the kinds no task makes); the toy set is the same")
    ap.add_argument("--count", type=int, default=42)
    ap.add_argument("--normal-fraction", type=float, default=1 / 3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, nargs=3, default=None, metavar=("A0", "A1", "A2"),
                    help="toy volumes of this shape instead of the region's challenge shape (quick runs)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", type=Path, default=Path("runs/validation_localiser"))
    ap.add_argument("--lsr", action="store_true",
                    help="also LSR and the fusion (the --weights must hold LSR's networks): sample scores on "
                         "every case")
    ap.add_argument("--lsr-pixel-cases", type=int, default=0, metavar="K",
                    help="with --lsr, their pixel maps on the first K cases of each kind and as many normal "
                         "cases as keep the set's share of normals (LSR's pixel task takes minutes a case on a CPU)")
    ap.add_argument("--restorations", type=int, default=15, help="LSR's restorations (default: 15)")
    ap.add_argument("--card", action="store_true", help="write the summary into the weights card")
    ap.add_argument("--picture-dir", type=Path, default=None, help="also copy the pictures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    card = read_card(args.weights)
    record = card.info.get("training", {}).get("localiser", {})
    leaked = sorted({p.name for p in args.sources} & set(record.get("train_files", []) + record.get("holdout_files", [])))
    if leaked:
        ap.error(f"these sources trained or tuned the localiser: {', '.join(leaked)}")

    start = time.perf_counter()
    data = toy_set(args.region, args.sources, args.work, args.count, args.seed,
                   tuple(args.size) if args.size else None, args.normal_fraction)
    region_dir = data / args.region
    cases = json.loads((region_dir / MANIFEST).read_text())["cases"]
    if args.kinds:
        cases = {n: c for n, c in cases.items() if c["kind"] is None or c["kind"] in args.kinds}
        if not any(c["kind"] for c in cases.values()):
            ap.error(f"the toy set holds no case of {', '.join(args.kinds)}")
    normals = [n for n, c in cases.items() if c["kind"] is None]
    kinds = sorted({c["kind"] for c in cases.values() if c["kind"] is not None})
    largest = {k: max((n for n, c in cases.items() if c["kind"] == k), key=lambda n: cases[n]["n_changed"])
               for k in kinds}

    lsr_pixel: set[str] = set()
    if args.lsr and args.lsr_pixel_cases:
        k = args.lsr_pixel_cases
        lsr_pixel = {n for kind in kinds for n in sorted(n for n, c in cases.items() if c["kind"] == kind)[:k]}
        lsr_pixel |= set(sorted(normals)[:max(1, round(len(lsr_pixel) * len(normals) / (len(cases) - len(normals))))])

    correlations = {}
    if args.train_data is not None:
        names = set(record.get("train_files", []))
        correlations = head_correlations(args.sources, [p for p in list_inputs(args.train_data) if p.name in names],
                                         args.region)

    models: dict[str, dict] = {}
    others: dict[str, dict] = {}  # LSR and the fusion: every kind counts (no task trained them)
    weights = {"shipped": args.weights, **{p.name: p for p in args.folds}}
    for name, folder in weights.items():
        tasks = trained_tasks(folder)
        shipped = name == "shipped"
        methods = score_cases(folder, args.region, region_dir, cases, set(largest.values()) if shipped else set(),
                              args.work / "maps" / name,
                              lsr=args.work / "lsr" / lsr_key(folder, args.restorations) if args.lsr and shipped else None,
                              lsr_pixel=lsr_pixel if shipped else set(), restorations=args.restorations)
        for method, scored in methods.items():
            taught = tasks if method == "localiser" else ()
            per_kind = {k: {**group_metrics(scored, cases, [n for n, c in cases.items() if c["kind"] == k] + normals),
                            "counts": counts_for(k, taught)} for k in kinds}
            untaught = [n for n, c in cases.items() if c["kind"] is not None and counts_for(c["kind"], taught)]
            result = {"tasks": list(taught), "kinds": per_kind, "all": group_metrics(scored, cases, list(cases)),
                      "untaught": group_metrics(scored, cases, untaught + normals) if untaught else None,
                      "case_scores": {n: round(s["sample"], 6) for n, s in scored.items()}}
            if method == "localiser":
                models[name] = result
            else:
                others[method] = result
            print(f"{name} {method}: all cases {json.dumps({k: round(v, 4) for k, v in result['all'].items()})}",
                  flush=True)

    # Each kind's number that counts: the shipped model's if untaught, else the first fold's that is.
    honest = {}
    for k in kinds:
        source = next((m for m in models if models[m]["kinds"][k]["counts"]), None)
        honest[k] = {"model": source, **(models[source]["kinds"][k] if source else {})}

    pictures = {}
    for k, case in largest.items():
        png = args.work / f"{args.region}_localiser_{k}.png"
        show(region_dir / "toy" / case, png, scores=np.load(args.work / "maps" / "shipped" / f"{case.split('.nii')[0]}.npy"),
             label=region_dir / "toy_label" / "pixel" / case,
             title=f"{args.region} localiser: {case} ({k} in {cases[case]['source']})")
        pictures[k] = png
    if args.picture_dir is not None:
        args.picture_dir.mkdir(parents=True, exist_ok=True)
        for k, png in pictures.items():
            pictures[k] = args.picture_dir / f"{args.region}_heldout_localiser_{k}.png"
            compact_png(png, pictures[k])

    summary = {
        "command": " ".join(["python scripts/validate_localiser.py", *map(portable, sys.argv[1:])]),
        "set": f"{len(cases)} cases ({len(normals)} normal) from {', '.join(p.name for p in args.sources)} "
               f"(make-toy seed {args.seed})",
        "kind_teachers": {k: list(KIND_TEACHERS[k]) for k in kinds},
        "honest": honest,
        "models": {m: {k: v for k, v in r.items() if k != "case_scores"} for m, r in models.items()},
        **({"lsr_and_fusion": {m: {k: v for k, v in r.items() if k != "case_scores"} for m, r in others.items()},
            "lsr_pixel_cases": sorted(lsr_pixel)} if others else {}),
        "correlation_with_training_heads": correlations,
        "pictures": {k: portable(p.resolve()) for k, p in pictures.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(args.work / f"{args.region}_localiser_validation.json",
               {**summary, "case_scores": {m: r["case_scores"] for m, r in {**models, **others}.items()}})
    if args.card:
        card = read_card(args.weights)
        card.info.setdefault("validation", {})["localiser"] = summary
        write_card(args.weights, card)
    print(table(models, kinds))
    if others:
        print(table(others, kinds))
    print("counts:", json.dumps({k: (v["model"], round(v.get("pixel_ap", float("nan")), 4)) for k, v in honest.items()}))
    if correlations:
        print("correlations:", json.dumps(correlations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
