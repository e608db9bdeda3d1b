#!/usr/bin/env python3
"""New weights against the shipped ones on the held-out set of issue 12 (``validate_weights --card``).

Reads ``info.validation.held_out`` of both cards and prints each method's pixel AP and sample
AUROC (the numbers that decide) beside the other metrics. With ``--scores``, the two weights'
case scores on the same toy set (``validate_weights.py`` writes ``<work>/<region>_lsr_case_scores.npz``;
the shipped weights' are kept in ``docs/weights/``), it also resamples the cases (the paired case
bootstrap of :mod:`mood.validation.bootstrap`) and prints the spread of each difference.

The new weights are better when their LSR has the higher pixel AP and the higher sample AUROC
and, with ``--scores``, is ahead on pixel AP in at least ``--ahead`` of the resamples (default 0.9:
a difference that a dozen cases cannot tell from noise is not worth shipping). Exit status: 0
better, 3 not, 2 when the two were not measured on the same set (nothing can be said), 1 on an
error.

    python scripts/compare_heldout.py NEW_WEIGHTS_DIR [SHIPPED_WEIGHTS_DIR (default weights/brain)] \\
        [--scores NEW_CASE_SCORES.npz SHIPPED_CASE_SCORES.npz]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mood.detection.weights import read_card  # noqa: E402
from mood.validation.bootstrap import load_case_scores, paired_bootstrap  # noqa: E402

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


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("new", type=Path, help="the new weights folder (validated with --card)")
    ap.add_argument("shipped", type=Path, nargs="?", default=Path("weights/brain"))
    ap.add_argument("--scores", type=Path, nargs=2, metavar=("NEW", "SHIPPED"),
                    help="the two weights' case scores (.npz from validate_weights.py, the same toy set)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--ahead", type=float, default=0.9,
                    help="share of resamples in which the new pixel AP must be higher (with --scores)")
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
    if args.scores:
        (new_cases, new_toy), (shipped_cases, shipped_toy) = (load_case_scores(p) for p in args.scores)
        if new_toy != shipped_toy:
            print(f"not comparable: {args.scores[0]} and {args.scores[1]} were scored on different toy sets")
            return 2
        spread = paired_bootstrap(new_cases, shipped_cases, resamples=args.resamples)
        print(f"\npaired case bootstrap ({args.resamples} resamples; 5th-95th percentile)\n\n"
              "| lsr | new | shipped | new - shipped | new ahead |\n|---|---|---|---|---|")
        for name, r in spread.items():
            print(f"| {name} | {r['new']:.4f} ({r['new_span'][0]:.4f}-{r['new_span'][1]:.4f}) "
                  f"| {r['old']:.4f} ({r['old_span'][0]:.4f}-{r['old_span'][1]:.4f}) "
                  f"| {r['difference_span'][0]:+.4f} to {r['difference_span'][1]:+.4f} | {r['new_ahead']:.1%} |")
        ahead = spread["pixel_ap"]["new_ahead"]
        if verdict and ahead < args.ahead:
            verdict = False
            message = (f"higher on both, but ahead on pixel AP in only {ahead:.1%} of the resamples "
                       f"(< {args.ahead:.0%}): within what these cases can tell; do not ship them")
    print(message)
    return 0 if verdict else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
