#!/usr/bin/env python3
"""New weights against the shipped ones on the held-out set of issue 12 (``validate_weights --card``).

Reads ``info.validation.held_out`` of both cards, prints each method's pixel AP and sample AUROC
(the numbers that decide) beside the other metrics, and exits 0 when the new weights' LSR is better
on both (higher pixel AP and higher sample AUROC), 3 when not, 2 when the two were not measured on
the same set (then nothing can be said), 1 on an error.

    python scripts/compare_heldout.py NEW_WEIGHTS_DIR [SHIPPED_WEIGHTS_DIR (default weights/brain)]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mood.method.weights import read_card  # noqa: E402

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
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    new_dir, shipped_dir = Path(argv[0]), Path(argv[1] if len(argv) > 1 else "weights/brain")
    new, shipped = held_out(new_dir), held_out(shipped_dir)
    print(f"| held out | new ({new_dir}) | shipped ({shipped_dir}) |\n|---|---|---|")
    for m, t, k in ROWS:
        if m in new and m in shipped:
            print(f"| {m} {t} {k} | {new[m][t][k]:.4f} | {shipped[m][t][k]:.4f} |")
    if new["set"] != shipped["set"]:
        print(f"not comparable: new weights measured on '{new['set']}', shipped on '{shipped['set']}'")
        return 2
    verdict = better(new, shipped)
    print("better than the shipped weights on pixel AP and sample AUROC: commit them (docs/gpu.md)" if verdict
          else "not better than the shipped weights on both pixel AP and sample AUROC: do not ship them")
    return 0 if verdict else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
