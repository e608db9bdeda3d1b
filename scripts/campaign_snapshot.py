#!/usr/bin/env python3
"""Save a campaign run as a small, committable snapshot, or restore one to resume it.

The weights campaign trains on machines that may be replaced between sessions; what is committed
survives. At the end of each session, the run's latest state goes to ``campaign/<region>/`` (one
fixed folder per region, overwritten each time; within ``--budget-mb``, 15 MB by default, optimiser
moments included only if they fit); the next session, on a new machine, restores it and resumes
with ``mood train ... --resume`` (see docs/weights/campaign.md, "Resuming the campaign").

    python scripts/campaign_snapshot.py save --vqvae-run runs/brain/vq --prior-run runs/brain/prior \\
        --out campaign/brain
    python scripts/campaign_snapshot.py restore campaign/brain --kind vqvae --out runs/brain/vq
    python scripts/campaign_snapshot.py restore campaign/brain --kind prior --out runs/brain/prior
    python scripts/campaign_snapshot.py save --localiser-run runs/brain/loc_all --out campaign/brain_localiser/all
    python scripts/campaign_snapshot.py restore campaign/brain_localiser/all --kind localiser --out runs/brain/loc_all
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mood.training.snapshot import restore_snapshot, save_snapshot  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("save", help="snapshot a VQ-VAE run and/or a prior run, or a localiser run")
    s.add_argument("--vqvae-run", type=Path, help="the VQ-VAE's `mood train --out` folder")
    s.add_argument("--prior-run", type=Path, help="the prior's `mood train --out` folder")
    s.add_argument("--localiser-run", type=Path, help="the localiser's `mood train --out` folder")
    s.add_argument("--prior-vqvae", type=Path,
                   help="the frozen VQ-VAE the prior learns (its --vqvae; default: the prior's folder)")
    s.add_argument("--out", type=Path, required=True, help="the snapshot folder (replaced)")
    s.add_argument("--budget-mb", type=float, default=15.0, help="the snapshot's size limit (default: 15)")
    r = sub.add_parser("restore", help="write a snapshot back as a run folder for `mood train --resume`")
    r.add_argument("snapshot", type=Path)
    r.add_argument("--kind", choices=("vqvae", "prior", "localiser"), required=True)
    r.add_argument("--out", type=Path, required=True, help="the run folder to create (`mood train --out`)")
    args = p.parse_args(argv)
    try:
        if args.action == "restore":
            ckpt = restore_snapshot(args.snapshot, args.out, args.kind)
            print(f"restored {args.kind} at step {json.loads((ckpt / 'state.json').read_text())['step']} "
                  f"into {args.out}; continue with `mood train {args.kind} --out {args.out} --resume ...`"
                  + (f" --vqvae {args.out / 'frozen-vqvae'}" if args.kind == "prior" else ""))
            return 0
        runs = {k: v for k, v in (("vqvae", args.vqvae_run), ("prior", args.prior_run),
                                  ("localiser", args.localiser_run)) if v is not None}
        if not runs:
            p.error("save needs --vqvae-run and/or --prior-run, or --localiser-run")
        summary = save_snapshot(runs, args.out, budget_mb=args.budget_mb, prior_vqvae=args.prior_vqvae)
        total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
        print(json.dumps({**summary, "total_bytes": total}, indent=1))
        return 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"campaign_snapshot: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
