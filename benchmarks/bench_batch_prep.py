#!/usr/bin/env python3
"""Share of a training step that batch preparation takes, on the code path a GPU run takes.

Batches come from :class:`mood.training.batches.BatchStream`: the region's slice banks in the
training device's memory, a batch sampled and augmented there, and (``prefetch``, as on a GPU) the
next step's batch prepared by a background thread while the current step runs. This runs that path
on the CPU with real brain banks and the real VQ-VAE step (:func:`mood.training.steps.vqvae_step`)
and prints, per batch of ``--batch-size``:

- ``noise``: the Gaussian noise drawn from the CPU generator (B x S x S numbers), the largest part
  of the work a GPU run keeps on its CPU (the rest: a few hundred small draws, Python, kernel
  launches, one host-to-device copy), which the prefetching thread overlaps with the step;
- ``serial``: a whole batch made on this CPU, not overlapped (the CPU path's cost);
- ``wait``: what the loop waits for a batch with the prefetching stream (the GPU path);
- ``step``: the VQ-VAE step; the shares are ``serial / (serial + step)`` and ``wait / (wait + step)``.

    python benchmarks/bench_batch_prep.py --width 0.5 --batch-size 64 --threads 2 \\
        --json benchmarks/results/batch_prep_brain_w05.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench_train_precision import cpu_name  # noqa: E402
from mood.lsr.networks import VQVAE  # noqa: E402
from mood.training.batches import BatchStream  # noqa: E402
from mood.training.codebook import CodebookState  # noqa: E402
from mood.training.data import load_bank  # noqa: E402
from mood.training.distributed import Dist  # noqa: E402
from mood.training.settings import TrainSettings, model_config  # noqa: E402
from mood.training.steps import Batch, vqvae_step  # noqa: E402


def median_time(fn, n: int) -> float:
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "brain")
    ap.add_argument("--volumes", type=int, default=4, help="brain volumes made into banks (the first, by name)")
    ap.add_argument("--width", type=float, default=0.5, help="VQ-VAE channel scale (as mood train --width)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--draws", type=int, default=10, help="timed batches for noise and serial")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = model_config("brain", width=args.width)
    files = sorted(args.data.glob("*.nii.gz"))[: args.volumes]
    if not files:
        sys.exit(f"no brain volumes in {args.data}")
    banks = [load_bank(f, config) for f in files]
    aug, n = config.augmentation, args.batch_size
    size = config.vqvae.image_size
    noise = median_time(lambda i: torch.randn(n, size, size, generator=torch.Generator().manual_seed(i)), args.draws)
    cpu = BatchStream(banks, n, aug, torch.device("cpu"), seed=0)
    serial = median_time(cpu.draw, args.draws)

    settings = TrainSettings(batch_size=n, lr=1e-4)
    torch.manual_seed(0)
    model = VQVAE(config.vqvae).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    codebook = CodebookState.empty(config.vqvae.n_codes)
    waits, steps = [], []
    with BatchStream(banks, n, aug, torch.device("cpu"), seed=0, prefetch=True) as stream:
        for i in range(1 + args.steps):
            t = time.perf_counter()
            gen, x, coord = stream(i)
            t1 = time.perf_counter()
            vqvae_step(Batch(x, coord, i, gen), ddp=model, model=model, opt=opt, d=Dist(),
                       settings=settings, codebook=codebook)
            if i:  # the first batch cannot be prefetched, and the first step allocates
                waits.append(t1 - t)
                steps.append(time.perf_counter() - t1)
    wait, step = statistics.median(waits), statistics.median(steps)
    row = {"batch_size": n, "width": args.width, "volumes": len(files), "threads": args.threads,
           "noise_s": round(noise, 4), "serial_s": round(serial, 4), "wait_s": round(wait, 4),
           "step_s": round(step, 3), "serial_share": round(serial / (serial + step), 4),
           "prefetched_share": round(wait / (wait + step), 4)}
    print(f"batch {n}: noise {noise * 1e3:.1f} ms, serial {serial * 1e3:.0f} ms, wait with prefetch "
          f"{wait * 1e3:.1f} ms, VQ-VAE step (width {args.width}) {step:.2f} s")
    print(f"share of a step: serial {row['serial_share']:.1%}, prefetched (the GPU path) {row['prefetched_share']:.1%}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "cpu": cpu_name(),
                                         "torch": torch.__version__, "row": row}, indent=1) + "\n")


if __name__ == "__main__":
    main()
