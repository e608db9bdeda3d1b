#!/usr/bin/env python3
"""Learning curves of training runs against CPU time, and a table of them at equal CPU time.

Reads the ``OUT/train/<kind>/log.jsonl`` of each run (written by ``mood train``), or a copy of its
holdout rows (``grep holdout_ OUT/train/vqvae/log.jsonl > docs/weights/logs/run.jsonl``: the
campaign keeps these, because a run's folder is lost with its machine; a run logged over several
sessions is the comma-separated list of its pieces), and draws, against
CPU-hours (this process's CPU time over all its threads, so runs that shared the machine compare
fairly): the holdout L1 reconstruction over whole slices and inside the body (where logged) and the
codes in use (VQ-VAE runs), the holdout NLL per code (prior runs), and the holdout BCE and pixel AP
on the training tasks' anomalies in the holdout head (localiser runs). Prints a Markdown table of
every run's holdout metric at equal CPU time (``--at HOURS``, default the shortest run of its kind)
and at its own end. With ``--held-out`` (a campaign JSON, ``docs/weights/campaign_<region>.json``), one
more panel each for the held-out pixel AP (with the reconstruction baseline of the same weights)
and sample AUROC of every validated candidate, against the campaign's CPU-hours logged up to it,
with ``--goal`` lines (e.g. a milestone and the target pixel AP).

    python scripts/campaign_curves.py --run "original=runs/brain/vq_w1" --run "width 0.5=runs/brain/vq_w05" \\
        --run "prior=docs/weights/logs/brain_session5_prior.jsonl" --out docs/weights/brain_curves.png
    python scripts/campaign_curves.py --run "VQ-VAE=L/s7.jsonl,L/s8.jsonl" --held-out docs/weights/campaign_brain.json \\
        --goal 0.05 --goal 0.30 --logx --out docs/weights/brain_campaign_curves.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

METRIC = {"vqvae": "holdout_recon", "prior": "holdout_nll", "localiser": "holdout_loss"}
#: the same metric inside the body (logged since session 10 for the VQ-VAE, session 12 for the prior)
INSIDE = {"vqvae": "holdout_recon_fg", "prior": "holdout_nll_body"}


def read_run(spec: str) -> tuple[str, list[dict]]:
    """(kind, checkpoint rows with a holdout metric, by step) of a ``mood train`` output folder, a log
    file, or the comma-separated log files of one run's pieces."""
    pieces = [read_piece(Path(p)) for p in spec.split(",")]
    kinds = {kind for kind, _ in pieces}
    if len(kinds) > 1:
        raise ValueError(f"{spec}: pieces of one run must log one model, not {' and '.join(sorted(kinds))}")
    by_step = {r["step"]: r for _, rows in pieces for r in rows}
    return kinds.pop(), [by_step[s] for s in sorted(by_step)]


def read_piece(path: Path) -> tuple[str, list[dict]]:
    """(kind, checkpoint rows with a holdout metric) of a ``mood train`` output folder or log file."""
    # A prior's folder may also hold its VQ-VAE's log: the prior's is the run's own.
    logs = [path] if path.is_file() else [path / "train" / kind / "log.jsonl" for kind in ("prior", "vqvae", "localiser")]
    for log in logs:
        if log.is_file():
            rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            for kind, key in METRIC.items():
                if any(key in r for r in rows):
                    return kind, [r for r in rows if key in r]
    raise ValueError(f"{path}: no log rows with {' or '.join(METRIC.values())} "
                     "(a run folder holds them in train/vqvae or train/prior log.jsonl)")


def at_cpu(rows: list[dict], key: str, cpu_s: float) -> float:
    """``key`` linearly interpolated at ``cpu_s`` CPU seconds."""
    return float(np.interp(cpu_s, [r["cpu_s"] for r in rows], [r[key] for r in rows]))


def table(runs: dict[str, tuple[str, list[dict]]], at_hours: float | None = None) -> str:
    lines = ["| run | model | steps | CPU-hours | holdout at equal CPU time | inside the body, same time "
             "| holdout best | holdout at end |",
             "|---|---|---|---|---|---|---|---|"]
    for kind in METRIC:
        mine = {name: rows for name, (k, rows) in runs.items() if k == kind and rows}
        if not mine:
            continue
        equal = at_hours * 3600 if at_hours else min(rows[-1]["cpu_s"] for rows in mine.values())
        for name, rows in mine.items():
            key = METRIC[kind]
            fg = [r for r in rows if INSIDE.get(kind) in r]
            inside = f"{at_cpu(fg, INSIDE[kind], equal):.4f}" if fg else "-"
            lines.append(f"| {name} | {kind} | {rows[-1]['step']} | {rows[-1]['cpu_s'] / 3600:.2f} | "
                         f"{key.split('_')[1]} {at_cpu(rows, key, equal):.4f} at {equal / 3600:.2f} h | "
                         f"{inside} | {min(r[key] for r in rows):.4f} | {rows[-1][key]:.4f} |")
    return "\n".join(lines)


def held_out_points(campaign: dict) -> list[tuple[float, dict]]:
    """(campaign CPU-hours logged up to and including the run, its ``held_out`` readings) of every
    validated run of a campaign JSON, in the order the runs were logged."""
    points, hours = [], 0.0
    for run in campaign["campaign"]["runs"]:
        hours += run["cpu_hours"]
        if "held_out" in run:
            points.append((hours, run["held_out"]))
    return points


def plot_held_out(axes, points: list[tuple[float, dict]], goals: list[float]) -> None:
    """The held-out pixel AP (LSR and the reconstruction baseline; log axis) and sample AUROC."""
    hours = [h for h, _ in points]
    for ax, keys, title in ((axes[0], ("pixel_ap", "baseline_pixel_ap"), "held out: pixel AP"),
                            (axes[1], ("sample_auroc", "baseline_sample_auroc"), "held out: sample AUROC")):
        for key, label in zip(keys, ("LSR", "reconstruction baseline")):
            ax.plot(hours, [p.get(key, np.nan) for _, p in points], "o-", label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("campaign CPU-hours logged")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    for goal in goals:
        axes[0].axhline(goal, color="k", ls="--", lw=0.8)
    axes[1].axhline(0.5, color="grey", ls=":", lw=0.8)  # chance
    for ax in axes:
        ax.legend(fontsize=8)


def plot(runs: dict[str, tuple[str, list[dict]]], out: Path, logx: bool = False,
         held_out: list[tuple[float, dict]] = (), goals: list[float] = ()) -> None:
    panels = [("vqvae", "holdout_recon", "VQ-VAE: holdout L1 reconstruction"),
              ("vqvae", "holdout_recon_fg", "VQ-VAE: holdout L1 inside the body"),
              ("vqvae", "holdout_codes_used", "VQ-VAE: codes in use (holdout)"),
              ("prior", "holdout_nll", "prior: holdout NLL per code (nats)"),
              ("prior", "holdout_nll_body", "prior: holdout NLL inside the body (nats)"),
              ("localiser", "holdout_loss", "localiser: holdout BCE (training tasks)"),
              ("localiser", "holdout_ap", "localiser: holdout pixel AP (training tasks)")]
    panels = [p for p in panels if any(k == p[0] and rows and p[1] in rows[-1] for k, rows in runs.values())]
    n = len(panels) + 2 * bool(held_out)
    cols = min(n, 4)
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(5 * cols, 3.6 * -(-n // cols)), squeeze=False)
    axes = axes.ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    if held_out:
        plot_held_out(axes[len(panels):n], held_out, list(goals))
    for ax, (kind, key, title) in zip(axes, panels):
        for name, (k, rows) in runs.items():
            mine = [r for r in rows if key in r] if k == kind else []
            if mine:
                ax.plot([r["cpu_s"] / 3600 for r in mine], [r[key] for r in mine], label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("CPU-hours")
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, metavar="NAME=FOLDER",
                    help="a `mood train` output folder or a copy of its log rows (or the comma-separated "
                         "copies of one run's pieces), with the name to show")
    ap.add_argument("--logx", action="store_true",
                    help="CPU-hours on a log axis: a power law is a straight line, so a curve that "
                         "bends flatter there is slowing down faster than one")
    ap.add_argument("--at", type=float, default=None, metavar="HOURS",
                    help="CPU-hours at which the table compares the runs (default: the shortest run's end)")
    ap.add_argument("--held-out", type=Path, default=None, metavar="CAMPAIGN_JSON",
                    help="a campaign's JSON (docs/weights/campaign_<region>.json): panels of its validated "
                         "candidates' held-out pixel AP and sample AUROC")
    ap.add_argument("--goal", type=float, action="append", default=[], metavar="AP",
                    help="a pixel AP to draw as a line on the held-out panel (repeat: milestone, target)")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = ap.parse_args()
    runs = {}
    for spec in args.run:
        name, _, folder = spec.partition("=")
        runs[name] = read_run(folder)
    held_out = held_out_points(json.loads(args.held_out.read_text())) if args.held_out else []
    plot(runs, args.out, args.logx, held_out, args.goal)
    print(table(runs, args.at))
    if held_out:
        print("\n| campaign CPU-hours | held-out pixel AP | baseline | sample AUROC | baseline |\n|---|---|---|---|---|")
        for hours, p in held_out:
            print(f"| {hours:.2f} | {p['pixel_ap']:.4f} | {p.get('baseline_pixel_ap', float('nan')):.4f} | "
                  f"{p['sample_auroc']:.2f} | {p.get('baseline_sample_auroc', float('nan')):.2f} |")


if __name__ == "__main__":
    main()
