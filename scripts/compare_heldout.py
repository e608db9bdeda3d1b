#!/usr/bin/env python3
"""New weights against the shipped ones on the held-out set of issue 12 (``validate_weights --card``).

Reads ``info.validation.held_out`` of both cards and prints each method's pixel AP and sample
AUROC (the numbers that decide) beside the other metrics. With ``--work``, the two
``validate_weights.py`` work folders of the same toy set, it also resamples the cases (the paired
case bootstrap of :mod:`mood.validation.bootstrap`) and prints the spread of each difference.

The new weights are better when their LSR has the higher pixel AP and the higher sample AUROC
and, with ``--work``, is ahead on pixel AP in at least ``--ahead`` of the resamples (default 0.9:
a difference that a dozen cases cannot tell from noise is not worth shipping). Exit status: 0
better, 3 not, 2 when the two were not measured on the same set (nothing can be said), 1 on an
error.

    python scripts/compare_heldout.py NEW_WEIGHTS_DIR [SHIPPED_WEIGHTS_DIR (default weights/brain)] \\
        [--work NEW_VALIDATION_WORK SHIPPED_VALIDATION_WORK]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mood.method.weights import read_card  # noqa: E402
from mood.validation.bootstrap import paired_bootstrap, read_case_scores  # noqa: E402
from mood.validation.toy import MANIFEST  # noqa: E402

#: (method, task, metric) rows; the first two decide
ROWS = (("lsr", "pixel", "ap"), ("lsr", "sample", "auroc"), ("lsr", "pixel", "auroc"), ("lsr", "sample", "ap"),
        ("reconstruction", "pixel", "ap"), ("reconstruction", "sample", "auroc"))


def held_out(weights: Path) -> dict:
    numbers = read_card(weights).info.get("validation", {}).get("held_out")
    if not numbers:
        raise SystemExit(f"compare_heldout: {weights}/card.json has no held-out validation "
                         f"(run scripts/validate_weights.py --card)")
    return numbers


def better(new: dict, shipped: dict) -> bool:
    """The new LSR beats the shipped one on pixel AP and on sample AUROC."""
    return all(new[m][t][k] > shipped[m][t][k] for m, t, k in ROWS[:2])


def bootstrap(region: str, new_work: Path, shipped_work: Path, resamples: int) -> dict | None:
    """The paired case bootstrap of the two validations' LSR predictions; None if their toy sets differ."""
    toys = [w / "toy" / region for w in (new_work, shipped_work)]
    if json.loads((toys[0] / MANIFEST).read_text()) != json.loads((toys[1] / MANIFEST).read_text()):
        return None
    new, shipped = (read_case_scores(w / "pred" / "lsr" / region, toy / "toy_label")
                    for w, toy in zip((new_work, shipped_work), toys))
    return paired_bootstrap(new, shipped, resamples=resamples)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("new", type=Path, help="the new weights folder (validated with --card)")
    ap.add_argument("shipped", type=Path, nargs="?", default=Path("weights/brain"))
    ap.add_argument("--work", type=Path, nargs=2, metavar=("NEW_WORK", "SHIPPED_WORK"),
                    help="validate_weights.py --work folders of the two weights (the same toy set)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--ahead", type=float, default=0.9,
                    help="share of resamples in which the new pixel AP must be higher (with --work)")
    args = ap.parse_args(argv)

    new, shipped = held_out(args.new), held_out(args.shipped)
    print(f"| held out | new ({args.new}) | shipped ({args.shipped}) |\n|---|---|---|")
    for m, t, k in ROWS:
        if m in new and m in shipped:
            print(f"| {m} {t} {k} | {new[m][t][k]:.4f} | {shipped[m][t][k]:.4f} |")
    if new["set"] != shipped["set"]:
        print(f"not comparable: new weights measured on '{new['set']}', shipped on '{shipped['set']}'")
        return 2
    verdict = better(new, shipped)
    message = ("better than the shipped weights on pixel AP and sample AUROC: commit them (docs/gpu.md)" if verdict
               else "not better than the shipped weights on both pixel AP and sample AUROC: do not ship them")
    if args.work:
        spread = bootstrap(read_card(args.new).config.region, *args.work, args.resamples)
        if spread is None:
            print(f"not comparable: {args.work[0]} and {args.work[1]} hold different toy sets")
            return 2
        print(f"\npaired case bootstrap ({args.resamples} resamples; 5th-95th percentile)\n\n"
              "| lsr | new | shipped | new - shipped | new ahead |\n|---|---|---|---|---|")
        for name, r in spread.items():
            print(f"| {name} | {r['new']:.4f} ({r['new_span'][0]:.4f}-{r['new_span'][1]:.4f}) "
                  f"| {r['old']:.4f} ({r['old_span'][0]:.4f}-{r['old_span'][1]:.4f}) "
                  f"| {r['difference_span'][0]:+.4f} to {r['difference_span'][1]:+.4f} | {r['new_ahead']:.0%} |")
        ahead = spread["pixel_ap"]["new_ahead"]
        if verdict and ahead < args.ahead:
            verdict = False
            message = (f"higher on both, but ahead on pixel AP in only {ahead:.0%} of the resamples "
                       f"(< {args.ahead:.0%}): within what these cases can tell; do not ship them")
    print(message)
    return 0 if verdict else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
