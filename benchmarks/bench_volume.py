"""Per-volume wall time and peak memory of ``mood sample`` and ``mood pixel``, and the I/O floor.

For each region, one challenge-shaped synthetic volume (brain 256^3, abdomen 512^3; a smooth
textured ellipsoid in [0, 1], float32 .nii.gz) is scored by the CLI in a fresh process, timed with
``/usr/bin/time``. The floor is a process that reads the same file and writes a float32 .nii.gz of
the same shape. Weights: ``--weights`` (default: the packaged ones); with ``--random``, real-size
random models whose thresholds are set to the 90th/98th percentile of the volume's own code NLL, so
that restoration resamples as much as calibrated weights do on normal data.

    python benchmarks/bench_volume.py --regions brain abdom --restorations 15 --json benchmarks/results/volume.json
    python benchmarks/bench_volume.py --regions brain --method localiser --json benchmarks/results/volume_brain_localiser.json

``--method`` (default ``auto``: each card's choice) is passed to ``mood``; with ``--random`` the
models include a real-size random localiser.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPES = {"brain": (256, 256, 256), "abdom": (512, 512, 512)}


def phantom(shape: tuple[int, int, int]) -> np.ndarray:
    axes = [np.linspace(-1, 1, s, dtype=np.float32) for s in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    r2 = x**2 / 0.7 + y**2 / 0.8 + z**2 / 0.9
    tissue = 0.55 + 0.15 * np.sin(9 * x) * np.cos(7 * y) * np.sin(5 * z)
    return np.where(r2 < 1, tissue, 0).astype(np.float32)


def timed(cmd: list[str]) -> dict:
    """Run ``cmd`` under /usr/bin/time: wall seconds and peak RSS (MB) of the process."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", tf.name, *cmd],
                              capture_output=True, text=True)
        wall, rss_kb = tf.read().split()[-2:]
    if proc.returncode not in (0,):
        sys.stderr.write(proc.stderr[-2000:])
    return {"wall_s": float(wall), "peak_rss_mb": int(rss_kb) / 1024, "exit": proc.returncode}


FLOOR = """
import sys, numpy as np, nibabel as nib
img = nib.load(sys.argv[1])
data = np.asarray(img.dataobj, dtype=np.float32)
nib.save(nib.Nifti1Image(data, img.affine), sys.argv[2])
"""


def random_weights(region: str, volume: np.ndarray, out: Path) -> Path:
    import torch

    from mood.detection.detector import Detector
    from mood.training import init_weights
    from mood.detection.weights import read_card, write_card

    init_weights(region, out / region)
    det = Detector.load(region, out, device="cpu")
    s = det.slices(volume)
    nll = det.code_nll(det.encode(s), s.coord)
    card = read_card(out / region)
    card.lambda_p = float(torch.quantile(nll.flatten().double(), 0.90))
    card.lambda_s = float(torch.quantile(nll.flatten().double(), 0.98))
    write_card(out / region, card)
    return out


def write_report(report: dict, path: Path | None) -> None:
    """``report`` with the machine's CPU count and name, as JSON at ``path`` (if given)."""
    report = {**report, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()}
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regions", nargs="+", default=["brain", "abdom"], choices=sorted(SHAPES))
    ap.add_argument("--restorations", type=int, default=15)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--random", action="store_true", help="real-size random models (see above)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="passed to mood --threads")
    ap.add_argument("--method", default="auto", help="passed to mood --method (default: auto)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="mood-bench-") as tmp:
        tmp = Path(tmp)
        for region in args.regions:
            vol = phantom(SHAPES[region])
            src = tmp / region / "in"
            src.mkdir(parents=True)
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(src / f"{region}.nii.gz"))
            weights = random_weights(region, vol, tmp / "w") if args.random else args.weights
            del vol
            row = {"region": region, "shape": SHAPES[region],
                   "input_mb": (src / f"{region}.nii.gz").stat().st_size / 2**20}
            row["floor"] = timed([sys.executable, "-c", FLOOR, str(src / f"{region}.nii.gz"),
                                  str(tmp / region / "floor.nii.gz")])
            for task in ("sample", "pixel"):
                cmd = [sys.executable, "-m", "mood", task, "-i", str(src), "-o", str(tmp / region / task),
                       "--region", region, "--device", args.device, "--method", args.method, "-q"]
                if weights:
                    cmd += ["--weights", str(weights)]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                if task == "pixel":
                    cmd += ["--restorations", str(args.restorations)]
                row[task] = timed(cmd)
                row[task]["ratio_to_floor"] = row[task]["wall_s"] / row["floor"]["wall_s"]
            results.append(row)
            print(json.dumps(row), flush=True)
    write_report({"results": results, "method": args.method, "restorations": args.restorations, "device": args.device,
                  "threads": args.threads or "torch default",
                  "weights": "random real-size" if args.random else str(args.weights or "packaged")},
                 args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
