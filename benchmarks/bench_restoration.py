"""Fast restoration against the reference raster loop, on the same codes and uniforms.

Real-size prior of the chosen region, randomly initialised; the resampling threshold is the 90th
percentile of the codes' NLL (so about 10 % of positions resample at first, as the calibrated
lambda_p does on normal data). The reference loop costs one full prior pass over every restoration
per grid position; running all L*L of them at real size takes hours on a CPU, so it is timed on its
first ``--reference-steps`` positions and extrapolated (said so in the output). On a tiny-ish model
(``--check``) both run to the end and their codes are compared.

    python benchmarks/bench_restoration.py --region brain --slices 32 --restorations 15
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from mood.config import region_preset
from mood.lsr.networks import PixelSNAIL, code_nll
from mood.lsr.restoration import draw_uniforms, restore, restore_reference
from mood.volumes.volume_io import write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--region", choices=("brain", "abdom"), default="brain")
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--restorations", type=int, default=15)
    ap.add_argument("--reference-steps", type=int, default=2)
    ap.add_argument("--check", action="store_true",
                    help="small prior (16 channels): run the reference to the end and compare codes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = region_preset(args.region).prior
    if args.check:
        cfg = replace(cfg, channels=16, key_size=8)
    device = torch.device(args.device)
    prior = PixelSNAIL(cfg).eval().requires_grad_(False).to(device)
    s, n, lat = args.slices, args.restorations, cfg.latent_size
    codes = torch.randint(0, cfg.n_codes, (s, lat, lat), device=device)
    coord = torch.linspace(-0.45, 0.45, s, device=device).view(-1, 1)
    uniforms = draw_uniforms(s, n, lat * lat, seed=0)
    with torch.no_grad():
        threshold = float(code_nll(prior(codes, coord), codes).quantile(0.9))

    t0 = time.perf_counter()
    fast = restore(prior, codes, coord, uniforms, threshold)
    t_fast = time.perf_counter() - t0
    changed = float((fast != codes[:, None]).float().mean())

    result = {"region": args.region, "slices": s, "restorations": n, "latent": lat,
              "channels": cfg.channels, "threshold": threshold, "changed_fraction": changed,
              "fast_s": t_fast, "device": str(device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}
    if args.check:
        t0 = time.perf_counter()
        ref = restore_reference(prior, codes, coord, uniforms, threshold)
        result["reference_s"] = time.perf_counter() - t0
        result["reference_measured"] = "full"
        result["identical_codes"] = bool(torch.equal(ref, fast))
    else:
        rows = codes.repeat_interleave(n, 0)
        row_coord = coord.repeat_interleave(n, 0)
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(args.reference_steps):
                prior(rows, row_coord)
            per_step = (time.perf_counter() - t0) / args.reference_steps
        result["reference_s"] = per_step * lat * lat
        result["reference_measured"] = f"{args.reference_steps} of {lat * lat} steps, extrapolated"
    result["speedup"] = result["reference_s"] / t_fast
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)
    return 0 if result.get("identical_codes", True) else 1


if __name__ == "__main__":
    sys.exit(main())
