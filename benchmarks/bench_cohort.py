"""Throughput of ``mood sample`` on a folder: one process against two shards, with and without
overlapped reading and writing (``--in-flight 3`` against ``--in-flight 1``).

A folder of ``--count`` challenge-shaped brain volumes (256^3 float32 .nii.gz, the textured
ellipsoid of ``bench_volume.py``) is scored by the CLI in fresh processes; each configuration is
timed from the start of the command to its end (start-up, weights, reading, scoring, writing), and
reported as volumes per minute. Two model sizes: ``real`` (real-size random models, compute-bound
on a CPU) and ``tiny`` (tiny random models: scoring costs less than reading, as on a fast GPU).
A configuration counts only if every volume got its output.

    python benchmarks/bench_cohort.py --count 20 --models tiny --json benchmarks/results/cohort_sample_tiny.json
    python benchmarks/bench_cohort.py --count 6 --models real --json benchmarks/results/cohort_sample_real.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bench_volume import phantom, write_report

CONFIGS = [  # name, workers, in-flight
    ("1 process, no overlap", 1, 1),
    ("1 process, overlap", 1, 3),
    ("2 shards, no overlap", 2, 1),
    ("2 shards, overlap", 2, 3),
]


def make_folder(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    first = folder / "brain_000.nii.gz"
    nib.save(nib.Nifti1Image(phantom((256, 256, 256)), np.eye(4)), str(first))
    for i in range(1, count):  # the same bytes under other names: reading costs the same
        shutil.copyfile(first, folder / f"brain_{i:03d}.nii.gz")


def run(folder: Path, out: Path, weights: Path, workers: int, in_flight: int) -> dict:
    cmd = [sys.executable, "-m", "mood", "sample", "-i", str(folder), "-o", str(out), "--region", "brain",
           "--weights", str(weights), "--device", "cpu", "--workers", str(workers),
           "--in-flight", str(in_flight), "-q"]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # one process: torch's default; two: one thread each (--workers)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    written = len(list(out.glob("*.txt")))
    if proc.returncode or written != len(list(folder.iterdir())):
        raise SystemExit(f"{cmd} failed ({proc.returncode}, {written} outputs):\n{proc.stderr[-2000:]}")
    return {"wall_s": round(wall, 2), "volumes_per_minute": round(60 * written / wall, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--models", nargs="+", default=["tiny", "real"], choices=["tiny", "real"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from mood.training import init_weights

    rows = []
    with tempfile.TemporaryDirectory(prefix="mood-cohort-") as tmp:
        tmp = Path(tmp)
        make_folder(tmp / "in", args.count)
        for models in args.models:
            weights = init_weights("brain", tmp / "w" / models, tiny=models == "tiny")
            for name, workers, in_flight in CONFIGS:
                out = tmp / "out" / models / f"{workers}-{in_flight}"
                row = {"models": models, "config": name, "workers": workers, "in_flight": in_flight,
                       "load_before": round(os.getloadavg()[0], 2),
                       **run(tmp / "in", out, weights, workers, in_flight)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    write_report({"task": "sample", "volumes": args.count, "shape": [256, 256, 256], "rows": rows,
                  "date": time.strftime("%Y-%m-%d")}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
