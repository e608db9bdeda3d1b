"""GPU check for a lent accelerator: exactness of the fast restoration and per-volume times.

1. Fast == reference on the GPU: a small brain- and abdomen-like prior, float32, the same uniforms;
   then the fast restoration's agreement with float32 under bf16 autocast and with TF32 matmuls.
2. Per-volume time of sample and pixel (15 restorations) for a 256^3 brain and a 512^3 abdomen
   volume held in memory (file I/O excluded), with the region's weights under ``--weights``
   (default: the shipped ``weights/``) when their shards are there, else real-size random models
   with thresholds at the 90th/98th NLL percentile of the volume.
Writes a Markdown table to $OUT/gpu_check.md (and JSON beside it).

``--dry-run`` runs the same code on the CPU with small volumes, 4 slices and 2 restorations (a few
minutes),
to check the script before spending device time on it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_volume import SHAPES, phantom  # noqa: E402

from mood.config import PriorConfig  # noqa: E402
from mood.detection.detector import Detector  # noqa: E402
from mood.lsr.networks import PixelSNAIL, code_nll  # noqa: E402
from mood.lsr.restoration import draw_uniforms, restore, restore_reference  # noqa: E402
from mood.volumes.volume_io import write_json  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def agreement(out: dict, dev: torch.device) -> None:
    for name, cfg in {"brain-like": PriorConfig(n_codes=32, latent_size=10, channels=32, n_blocks=2,
                                                n_res_blocks=2, key_size=8, dropout=0.0),
                      "abdomen-like": PriorConfig(n_codes=32, latent_size=6, channels=32, n_blocks=2,
                                                  n_res_blocks=2, first_kernel=3, attention_downsample=1,
                                                  key_size=8, dropout=0.0)}.items():
        torch.manual_seed(0)
        prior = PixelSNAIL(cfg).eval().requires_grad_(False).to(dev)
        with torch.no_grad():
            for p in prior.parameters():
                p.mul_(3.0)
        lat = cfg.latent_size
        codes = torch.randint(0, cfg.n_codes, (4, lat, lat), device=dev)
        coord = torch.linspace(-0.4, 0.4, 4, device=dev).view(-1, 1)
        u = draw_uniforms(4, 6, lat * lat, seed=1)
        thr = float(code_nll(prior(codes, coord), codes).median())
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        ref = restore_reference(prior, codes, coord, u, thr)
        fast = restore(prior, codes, coord, u, thr)
        row = {"float32_identical": bool(torch.equal(ref, fast)),
               "float32_agreement": float((ref == fast).float().mean())}
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        row["tf32_agreement"] = float((restore(prior, codes, coord, u, thr) == fast).float().mean())
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            row["bf16_agreement"] = float((restore(prior, codes, coord, u, thr) == fast).float().mean())
        out[name] = row
        print(name, row, flush=True)


def timings(out: dict, restorations: int, dev: torch.device, shapes: dict[str, tuple[int, int, int]],
            n_slices: int | None = None, root: Path = Path("weights")) -> None:
    from mood.training import init_weights
    from mood.detection.weights import read_card, write_card

    for region, shape in shapes.items():
        vol = torch.from_numpy(phantom(shape))
        # a device call leaves the shipped shards behind (scripts/device_payload.sh --hide-weights)
        random = not ((root / region / "card.json").is_file() and any((root / region).glob("*.safetensors")))
        weights = Path(os.environ.get("OUT", "/tmp")) / "w" if random else root
        if random:
            init_weights(region, weights / region)
        det = Detector.load(region, weights, device=dev.type)
        if random:
            s = det.slices(vol)
            nll = det.code_nll(det.encode(s), s.coord).flatten().double()
            card = read_card(weights / region)
            card.lambda_p, card.lambda_s = float(nll.quantile(0.9)), float(nll.quantile(0.98))
            write_card(weights / region, card)
            det = Detector.load(region, weights, device=dev.type)
        row = {"weights": "random real-size" if random else str(root / region)}
        for task in ("sample", "pixel"):
            det.score_sample(vol, n_slices) if task == "sample" else det.score_pixel(vol, n_slices, 1)  # warm-up
            _sync(dev)
            t0 = time.perf_counter()
            if task == "sample":
                det.score_sample(vol, n_slices)
            else:
                det.score_pixel(vol, n_slices, restorations)
            _sync(dev)
            row[f"{task}_s"] = time.perf_counter() - t0
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else float("nan")
        out[region] = row
        print(region, row, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, small volumes, 4 slices, 2 restorations")
    ap.add_argument("--weights", type=Path, default=Path("weights"),
                    help="root with one weights folder per region (default: the shipped weights)")
    args = ap.parse_args()
    out_dir = Path(os.environ.get("OUT", "."))
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cpu" if args.dry_run else "cuda")
    shapes = {"brain": (64, 64, 48), "abdom": (96, 96, 64)} if args.dry_run else SHAPES
    restorations = 2 if args.dry_run else 15
    result = {"gpu": "dry run on the CPU" if args.dry_run else torch.cuda.get_device_name(),
              "torch": torch.__version__}
    agreement(result.setdefault("agreement", {}), dev)
    timings(result.setdefault("times", {}), restorations, dev, shapes, 4 if args.dry_run else None, args.weights)
    write_json(out_dir / "gpu_check.json", result)
    lines = [f"GPU: {result['gpu']}, torch {result['torch']}", "",
             "| prior | fp32 identical | fp32 agreement | TF32 agreement | bf16 autocast agreement |",
             "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['float32_identical']} | {v['float32_agreement']:.4f} | {v['tf32_agreement']:.4f} "
              f"| {v['bf16_agreement']:.4f} |" for k, v in result["agreement"].items()]
    lines += ["", f"| region | weights | sample s | pixel s ({restorations} restorations) | peak GPU MB |",
              "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['weights']} | {v['sample_s']:.2f} | {v['pixel_s']:.2f} | {v['peak_gpu_mb']:.0f} |"
              for k, v in result["times"].items()]
    (out_dir / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
