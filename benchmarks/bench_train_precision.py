#!/usr/bin/env python3
"""Training step time in float32 and under bfloat16 autocast (``mood train --bf16``).

Runs the real step functions of :mod:`mood.training.steps` (forward, loss, backward, Adam, codebook
bookkeeping) on random slices of the region's size, float32 then bfloat16 back to back for each
model, and prints the median wall and CPU seconds per step and their ratio. The ratio is what to
read on a machine busy with other work; absolute times need an idle one.

    python benchmarks/bench_train_precision.py --region brain --width 0.5 --batch-size 8 --threads 1 \\
        --json benchmarks/results/train_precision_brain_w05.json

The campaign's models alone, in float32 (a CPU without bfloat16 units)::

    python benchmarks/bench_train_precision.py --width 0.5 --prior-channels 64 --prior-blocks 2 --precisions fp32
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mood.config import narrow, region_preset, resize_prior  # noqa: E402
from mood.lsr.networks import VQVAE, PixelSNAIL  # noqa: E402
from mood.training.codebook import CodebookState  # noqa: E402
from mood.training.distributed import Dist  # noqa: E402
from mood.training.settings import TrainSettings  # noqa: E402
from mood.training.steps import Batch, prior_step, vqvae_step  # noqa: E402


def step_times(kind: str, bf16: bool, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    torch.manual_seed(0)
    config = resize_prior(narrow(region_preset(args.region), args.width), args.prior_channels, args.prior_blocks)
    settings = TrainSettings(batch_size=args.batch_size, lr=1e-4, bf16=bf16)
    vq = VQVAE(config.vqvae).to(memory_format=torch.channels_last)
    if kind == "vqvae":
        model = vq
        step = partial(vqvae_step, settings=settings, codebook=CodebookState.empty(config.vqvae.n_codes))
    else:
        model = PixelSNAIL(config.prior)
        step = partial(prior_step, settings=settings, vq=vq)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    size = config.vqvae.image_size
    wall, cpu = [], []
    for i in range(args.warmup + args.steps):
        g = torch.Generator().manual_seed(i)
        batch = Batch(x=torch.randn(args.batch_size, size, size, generator=g),
                      coord=torch.rand(args.batch_size, 1, generator=g), step=i, gen=g)
        t, c = time.perf_counter(), time.process_time()
        step(batch, ddp=model, model=model, opt=opt, d=Dist())
        if i >= args.warmup:
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--region", default="brain", choices=("brain", "abdom"))
    ap.add_argument("--width", type=float, default=1.0, help="VQ-VAE channel scale (as mood train --width)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per model and precision")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps (allocation, oneDNN kernels)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prior-channels", type=int, default=None, help="as mood train --prior-channels")
    ap.add_argument("--prior-blocks", type=int, default=None, help="as mood train --prior-blocks")
    ap.add_argument("--models", nargs="+", choices=("vqvae", "prior"), default=["vqvae", "prior"])
    ap.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"],
                    help="fp32 alone on a CPU without bfloat16 units, where bf16 is emulated and slow")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for kind in args.models:
        times = {}
        for bf16 in (p == "bf16" for p in args.precisions):
            wall, cpu = step_times(kind, bf16, args)
            times[bf16] = statistics.median(wall)
            rows.append({"model": kind, "precision": "bf16" if bf16 else "fp32",
                         "wall_s": round(times[bf16], 3), "cpu_s": round(statistics.median(cpu), 3)})
            print(f"{kind:6s} {rows[-1]['precision']}: {rows[-1]['wall_s']:.3f} s/step wall, "
                  f"{rows[-1]['cpu_s']:.3f} CPU s", flush=True)
        if len(times) == 2:
            print(f"{kind:6s} bf16/fp32 = {times[True] / times[False]:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "cpu": cpu_name(), "torch": torch.__version__, "rows": rows}, indent=1))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
