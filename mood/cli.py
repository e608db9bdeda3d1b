"""Command line: ``mood <command> ...`` (also ``python -m mood``). Each command calls one API function."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import REGIONS

EPILOG = """\
examples:
  mood sample --input scans/ --output pred/                 # one score per volume (<name>.txt)
  mood pixel  --input scans/ --output pred/ --region brain  # voxel score maps (<name>)
  mood make-toy --input normals/ --output toy/ --count 8 --region brain
  mood validate data/                                       # the challenge's metric on a toy layout
  mood demo                                                 # everything above on a shipped volume

Weights are read from --weights, else $MOOD_WEIGHTS/<region>, else the packaged weights/<region>.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _scoring_arguments(p: argparse.ArgumentParser, pixel: bool) -> None:
    p.add_argument("--input", "-i", required=True, type=Path,
                   help="a NIfTI file (.nii/.nii.gz) or a folder of them")
    p.add_argument("--output", "-o", required=True, type=Path,
                   help="folder for the predictions (created if missing); nothing is written elsewhere")
    p.add_argument("--region", default="auto", choices=("auto",) + REGIONS,
                   help="auto: brain for 256^3, abdomen for 512^3 volumes (default: auto)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--weights", type=Path, default=None,
                   help="weights folder (with card.json) or a root with one folder per region")
    p.add_argument("--seed", type=int, default=0, help="seed of the restoration draws (default: 0)")
    p.add_argument("--slices", type=_positive_int, default=None,
                   help="slices scored per volume, evenly spread (default: the weights card's, 32)")
    if pixel:
        p.add_argument("--restorations", type=_positive_int, default=15,
                       help="restorations per slice; more lowers variance, costs time (default: 15)")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave inputs whose output already exists (resume a large batch)")
    p.add_argument("--max-voxels", type=_positive_int, default=None,
                   help="refuse larger volumes before reading them (default: 2*512^3)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mood", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Latent Spatial Restoration: unsupervised anomaly detection in 3-D brain MRI "
                    "and abdominal CT with a VQ-VAE and a PixelSNAIL prior (MICCAI MOOD).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    for task, text in (("sample", "one anomaly score in [0, 1) per volume -> <name>.txt"),
                       ("pixel", "voxel anomaly scores in [0, 1) -> <name>, same shape and affine")):
        p = sub.add_parser(task, help=text, description=text)
        _scoring_arguments(p, pixel=task == "pixel")
    return parser


def _run_predict(args: argparse.Namespace) -> int:
    from .predict import predict
    from .volume_io import DEFAULT_MAX_VOXELS

    summary = predict(args.command, args.input, args.output, region=args.region, device=args.device,
                      weights=args.weights, seed=args.seed,
                      restorations=getattr(args, "restorations", 15), slices=args.slices,
                      skip_existing=args.skip_existing,
                      max_voxels=args.max_voxels or DEFAULT_MAX_VOXELS, progress=not args.quiet)
    print(summary.line(), file=sys.stderr)
    return 0 if summary.ok else 1


HANDLERS = {"sample": _run_predict, "pixel": _run_predict}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        return HANDLERS[args.command](args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"mood {args.command}: error: {exc}", file=sys.stderr)
        return 2
