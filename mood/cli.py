"""Command line: ``mood <command> ...`` (also ``python -m mood``). Each command calls one API function.

All argument parsing lives here (shared options come from parent parsers); the library functions
take keyword arguments, return data and print nothing, and this module prints what they return.
Every expected failure (bad input or data folder, missing weights, a file-system error) ends in
one line ``mood <command>: error: <reason>`` on stderr and exit status 1; command-line usage
errors exit 2 (argparse); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .config import DEFAULT_IN_FLIGHT, DEFAULT_METHOD, METHODS, REGIONS, TRAINING_TASKS

EPILOG = """\
examples:
  mood sample --input scans/ --output pred/                 # one score per volume (<name>.txt)
  mood pixel  --input scans/ --output pred/ --region brain  # voxel score maps (<name>)
  mood pixel  -i scans/ -o pred/ --shard 3/8 --skip-existing --report runs/pixel.json
                                                            # one of 8 independent processes
  torchrun --nproc_per_node=4 -m mood pixel -i scans/ -o pred/   # 4 GPUs: shard and GPU per process
  mood report runs/pixel.shard*.json                        # the shards' reports as one table
  mood make-toy --input normals/ --output toy/ --count 8 --region brain
  mood validate data/                                       # the challenge's metric on a toy layout
  mood demo                                                 # everything above on a shipped volume

Weights are read from --weights, else $MOOD_WEIGHTS/<region>, else the packaged weights/<region>.
Many GPUs and machines: docs/scale.md (torchrun, SLURM arrays, Kubernetes indexed Jobs).
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    values = tuple(_positive_int(v) for v in text.split(",") if v.strip())
    if len(values) < 2:
        raise argparse.ArgumentTypeError(f"needs at least two comma-separated widths, got {text!r}")
    return values


def _task_list(text: str) -> tuple[str, ...]:
    tasks = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))  # each family once
    unknown = [t for t in tasks if t not in TRAINING_TASKS]
    if unknown or not tasks:
        raise argparse.ArgumentTypeError(f"unknown task(s) {unknown or text!r}; choose from {', '.join(TRAINING_TASKS)}")
    return tasks


def _shard(text: str):
    from .running.shard import Shard

    try:
        return Shard.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parent(*arguments: tuple[tuple[str, ...], dict]) -> argparse.ArgumentParser:
    """A parent parser holding ``arguments`` ((flags, options) pairs), shared by several commands."""
    parent = argparse.ArgumentParser(add_help=False)
    for flags, options in arguments:
        parent.add_argument(*flags, **options)
    return parent


DEVICE = _parent((("--device",), dict(default="auto", help="auto, cpu or cuda (default: auto)")))
SEED = _parent((("--seed",), dict(type=int, default=0, help="random seed (default: 0)")))
THREADS = _parent((("--threads",), dict(
    type=_positive_int, default=None,
    help="CPU threads for torch (default: torch's choice; 1 is often faster on a busy machine)")))
REGION = _parent((("--region",), dict(required=True, choices=REGIONS)))
WEIGHTS = _parent((("--weights",), dict(
    type=Path, default=None, help="weights folder (with card.json) or a root with one folder per region")))


def _scoring_arguments(p: argparse.ArgumentParser, pixel: bool) -> None:
    p.add_argument("--input", "-i", required=True, type=Path,
                   help="a NIfTI file (.nii/.nii.gz) or a folder of them")
    p.add_argument("--output", "-o", required=True, type=Path,
                   help="folder for the predictions (created if missing); nothing is written elsewhere")
    p.add_argument("--region", default="auto", choices=("auto",) + REGIONS,
                   help="auto: brain for 256^3, abdomen for 512^3 volumes (default: auto)")
    p.add_argument("--slices", type=_positive_int, default=None,
                   help="slices scored per volume, evenly spread (default: every plane for the localiser, "
                        "the weights card's 32 for LSR)")
    p.add_argument("--restorations", type=_positive_int, default=15,
                   help="restorations per slice; more lowers variance, costs time (default: 15)"
                   if pixel else "ignored (accepted so that one argument list serves both tasks)")
    p.add_argument("--method", choices=("auto",) + METHODS, default=os.environ.get("MOOD_METHOD") or DEFAULT_METHOD,
                   help="auto: the method the weights card names for its region (the one that measured best), "
                        "else the first the weights can score with; "
                        "localiser: a U-Net trained to segment synthetic anomalies, every plane scored; "
                        "lsr: latent spatial restoration (VQ-VAE and PixelSNAIL prior, the reference method); "
                        "fusion: the mean of the two; reconstruction: the plain VQ-VAE baseline, "
                        "|x - decode(encode(x))| per voxel and its mean per volume, to measure what the "
                        f"prior adds. Default: $MOOD_METHOD if set (the container's way, since the "
                        f"challenge's call passes no flags), else {DEFAULT_METHOD}")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave inputs whose output already exists (resume a large batch)")
    scale = p.add_argument_group(
        "many processes, GPUs and machines (docs/scale.md)",
        "Outputs are the same bytes however a folder is split. Under torchrun (RANK, WORLD_SIZE, "
        "LOCAL_RANK set) each process takes its shard and GPU from the environment, no flags needed, "
        "and exits 0 when only some volumes failed (torchrun would stop the other processes): read "
        "the ERROR lines or the reports (`mood report` exits 1 on failures).")
    scale.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                       help="score only shard I of N (0 <= I < N): the files whose name hashes to I "
                            "mod N, so N processes (a SLURM array, a Kubernetes indexed Job) cover the "
                            "folder exactly once, and adding files moves none to another shard")
    scale.add_argument("--workers", default="auto", metavar="auto|N",
                       help="worker processes on this machine, each with its own part of the shard; "
                            "auto: one per visible GPU, one on the CPU (default: auto)")
    scale.add_argument("--in-flight", type=_positive_int, default=DEFAULT_IN_FLIGHT, metavar="K",
                       help="volumes held at once: the next ones are read and the previous outputs "
                            "written while one is scored; 1 reads, scores and writes one at a time "
                            f"(default: {DEFAULT_IN_FLIGHT}; a brain volume holds about 64 MB, an abdomen 512 MB)")
    scale.add_argument("--report", type=Path, default=None, metavar="FILE",
                       help="write this run's summary (counts, failures, time) as JSON, beside (never "
                            "inside) the output folder; sharded runs insert .shardI-of-N before the "
                            "suffix. Merge them with `mood report FILE...`")
    p.add_argument("--max-voxels", type=_positive_int, default=None,
                   help="refuse larger volumes before reading them (default: $MOOD_MAX_VOXELS, else 2*512^3)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mood", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Unsupervised anomaly detection in 3-D brain MRI and abdominal CT (MICCAI MOOD): "
                    "a localiser trained on synthetic anomalies (the default where it measures "
                    "best) and Latent Spatial Restoration (a VQ-VAE and a PixelSNAIL prior, the "
                    "reference method), one --method away from each other.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    for task, text in (("sample", "one anomaly score in [0, 1) per volume -> <name>.txt"),
                       ("pixel", "voxel anomaly scores in [0, 1) -> <name>, same shape and affine")):
        p = sub.add_parser(task, help=text, description=text, parents=[DEVICE, WEIGHTS, SEED, THREADS])
        _scoring_arguments(p, pixel=task == "pixel")

    p = sub.add_parser("report", help="merge the --report files of a sharded run into one table",
                       description="Merge the per-shard reports of `mood sample|pixel --report` into "
                                   "one table: counts, failures, time, and the shards missing (not "
                                   "finished: rerun them with --skip-existing). Exit status 1 if any "
                                   "volume failed or any shard is missing.")
    p.add_argument("reports", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--json", type=Path, default=None, help="also write the merged report as JSON")

    from .training.settings import CODEBOOK_UPDATES, PLANES, QUANTISER_GRADIENTS, SCHEDULES, TrainSettings

    TRAIN = TrainSettings()  # the one place the training defaults are defined
    p = sub.add_parser("train", help="train the localiser, the VQ-VAE or the prior on normal volumes",
                       parents=[REGION, DEVICE, SEED, THREADS],
                       description="Train one model of a region on a folder of normal volumes (any grid; "
                                   "converted to the challenge's form). Resumable; logs to OUT/train/. "
                                   "Multi-process: torchrun --nproc_per_node=N -m mood train ...")
    p.add_argument("model", choices=("localiser", "vqvae", "prior"),
                   help="localiser: a U-Net that learns to segment synthetic anomalies drawn into the "
                        "normal slices (the default method); vqvae, then prior: LSR's two networks")
    p.add_argument("--data", required=True, type=Path, help="folder of normal volumes")
    p.add_argument("--out", required=True, type=Path, help="weights folder to write")
    p.add_argument("--vqvae", type=Path, help="(prior) weights folder of the trained VQ-VAE")
    p.add_argument("--steps", type=_positive_int, default=TRAIN.steps, help=f"(default: {TRAIN.steps})")
    p.add_argument("--batch-size", type=_positive_int, default=TRAIN.batch_size,
                   help=f"global: split over the processes of a torchrun (default: {TRAIN.batch_size})")
    p.add_argument("--lr", type=float, default=TRAIN.lr, help=f"(default: {TRAIN.lr:g})")
    p.add_argument("--holdout", nargs="*", default=None, help="file names kept out for the holdout loss")
    p.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step: about 20 %% faster VQ-VAE steps on a CPU after "
                        "a minute of compiling (needs a C++ compiler); worth it for long runs")
    p.add_argument("--bf16", action="store_true",
                   help="forward passes in bfloat16 autocast (weights, optimiser and evaluation stay "
                        "float32): prior steps took 0.44x the time, VQ-VAE steps 0.7x, on this "
                        "project's CPU (AMX); on a CPU without bfloat16 units (AVX2 only) it is 7-10x "
                        "slower, and training says so")
    p.add_argument("--init-from", type=Path, default=None, metavar="WEIGHTS",
                   help="start from this weights folder's model (fine-tuning; fresh optimiser), "
                        "e.g. the shipped weights/brain")
    p.add_argument("--tiny", action="store_true", help="a tiny model of the same structure (smoke runs)")
    p.add_argument("--width", type=float, default=1.0,
                   help="(vqvae) scale every VQ-VAE channel count, e.g. 0.5 for a narrower, faster model "
                        "(default: 1, the original architecture)")
    p.add_argument("--cell", type=_positive_int, default=None, metavar="PIXELS",
                   help="(vqvae) latent cells of PIXELS x PIXELS, a power of two: 4 gives a brain slice 40 x 40 "
                        "codes, each of a smaller patch, at four times the prior's positions (default: the "
                        "region's, 8 brain, 16 abdomen)")
    p.add_argument("--codes", type=_positive_int, default=None, metavar="N",
                   help="(vqvae) codebook size; the prior predicts one of N (default: the region's, 128)")
    p.add_argument("--prior-channels", type=_positive_int, default=None,
                   help="(prior) channels of the PixelSNAIL (default: the region's, 128)")
    p.add_argument("--prior-blocks", type=_positive_int, default=None,
                   help="(prior) PixelSNAIL blocks (default: the region's, 4)")
    p.add_argument("--prior-dropout", type=_fraction, default=None, metavar="P",
                   help="(prior) channel dropout in the PixelSNAIL's residual blocks, a regulariser for "
                        "priors that learn their few training heads by heart (default: the region's, 0.1)")
    p.add_argument("--schedule", choices=SCHEDULES, default=TRAIN.schedule,
                   help="learning rate after the warm-up: constant (the original's) or a cosine decay to "
                        f"lr/10 at --steps (default: {TRAIN.schedule})")
    p.add_argument("--warmup", type=int, default=TRAIN.warmup,
                   help=f"steps of linear learning-rate warm-up (default: {TRAIN.warmup})")
    p.add_argument("--codebook-update", choices=CODEBOOK_UPDATES, default=TRAIN.codebook_update,
                   help="(vqvae) how the codebook learns: 'loss' (the original's codebook loss) or 'ema' "
                        "(moving averages of the encoder outputs assigned to each code, as VQ-VAE-2) "
                        f"(default: {TRAIN.codebook_update})")
    p.add_argument("--ema-decay", type=float, default=TRAIN.ema_decay,
                   help=f"(vqvae) decay of the codebook's moving averages (default: {TRAIN.ema_decay})")
    p.add_argument("--quantiser-gradient", choices=QUANTISER_GRADIENTS, default=TRAIN.quantiser_gradient,
                   help="(vqvae) how the reconstruction's gradient crosses the quantiser to the encoder: "
                        "'straight_through' (the original's copy) or 'rotation' (the rotation trick, "
                        f"arXiv:2410.06424; the same model at inference) (default: {TRAIN.quantiser_gradient})")
    p.add_argument("--planes", choices=PLANES, default=TRAIN.planes,
                   help="planes to train on: 'all' (the whole extent, as inference scores it) or 'tissue' "
                        f"(only planes with at least 1 %% of pixels inside the body) (default: {TRAIN.planes})")
    p.add_argument("--intensity-curve", type=float, default=TRAIN.intensity_curve, metavar="SIGMA",
                   help="augment with a random monotone intensity curve (tissues' contrasts changed one "
                        "against another, as between scanners and sequences): SIGMA is the spread of its "
                        f"log slopes, 0.5 a strong one (default: {TRAIN.intensity_curve}: off, as the original)")
    p.add_argument("--resolution", type=float, default=TRAIN.resolution, metavar="FACTOR",
                   help="augment with a lower resolution: each slice, with the augmentations' probability "
                        "(one in two), resampled down by a random factor up to FACTOR and back up, so that "
                        "coarser scans and smooth templates count as normal; "
                        f"2 halves the resolution at most (default: {TRAIN.resolution}: off)")
    p.add_argument("--crop", type=int, default=TRAIN.crop, metavar="PIXELS",
                   help="(vqvae) train on random PIXELS x PIXELS windows of the slices, a multiple of the "
                        "VQ-VAE's downsampling (8 brain, 16 abdomen); it still encodes whole slices "
                        f"(default: {TRAIN.crop}: whole slices)")
    p.add_argument("--tasks", type=_task_list, default=TRAIN.tasks, metavar="T1,T2,...",
                   help="(localiser) the synthetic-anomaly families it learns from, of "
                        f"{', '.join(TRAINING_TASKS)} (default: all). Leave one out to measure the model on "
                        "the validation kinds that family would make (a leave-task-out fold)")
    p.add_argument("--label-sigma", type=float, default=TRAIN.label_sigma,
                   help="(localiser) target 1 - exp(-d^2 / (2 SIGMA^2)) of each pixel's change d in normalised "
                        f"units (default: {TRAIN.label_sigma})")
    p.add_argument("--average", type=float, default=TRAIN.average, metavar="DECAY",
                   help="(localiser) decay of the moving average of the weights that is evaluated and "
                        f"exported; 0 exports the latest weights (default: {TRAIN.average})")
    p.add_argument("--channels", type=_int_list, default=None, metavar="C1,C2,...",
                   help="(localiser) U-Net widths from full resolution down, each further one halving the grid "
                        "(default: the region's, e.g. 16,32,64,128,128)")
    p.add_argument("--image-size", type=_positive_int, default=None, metavar="PIXELS",
                   help="(localiser) slice side in pixels it trains and scores at (default: the region's)")
    p.add_argument("--ckpt-every", type=_positive_int, default=TRAIN.ckpt_every,
                   help=f"steps between checkpoints (default: {TRAIN.ckpt_every})")
    p.add_argument("--log-every", type=_positive_int, default=TRAIN.log_every,
                   help=f"steps between log lines (default: {TRAIN.log_every})")
    p.add_argument("--time-limit", type=float, default=TRAIN.time_limit,
                   help="stop (with a checkpoint) after this many seconds")
    p.set_defaults(seed=TRAIN.seed, compile=TRAIN.compile, bf16=TRAIN.bf16)

    p = sub.add_parser("calibrate", help="fit thresholds and score maps on normal holdout volumes",
                       parents=[REGION, DEVICE, SEED],
                       description="Set lambda_s (98th) and lambda_p (90th percentile of per-code NLL) and "
                                   "the score maps from normal holdout volumes; writes them into the card.")
    p.add_argument("--data", required=True, type=Path, help="folder of normal holdout volumes")
    p.add_argument("--weights", required=True, type=Path)
    p.add_argument("--slices", type=_positive_int, default=8, help="(lsr) slices for the (slow) pixel part")
    p.add_argument("--restorations", type=_positive_int, default=3, help="(lsr) restorations for the pixel part")
    p.add_argument("--networks", choices=("all", "localiser", "lsr"), default="all",
                   help="calibrate the localiser, LSR, or every method the weights hold (default: all)")
    p.add_argument("--slice-sigma", type=float, default=None, metavar="PLANES",
                   help="(localiser) smooth its probabilities across slices with a Gaussian of this many "
                        "planes of a challenge-size volume before fitting its maps (0: none; default: the "
                        "card's)")

    p = sub.add_parser("init-weights", help="write randomly initialised models (tests, smoke runs)",
                       parents=[REGION, SEED])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--tiny", action="store_true")

    p = sub.add_parser("convert", help="convert volumes (NIfTI, NRRD, MHA) to the challenge's form",
                       parents=[REGION])
    p.add_argument("--input", "-i", required=True, type=Path)
    p.add_argument("--output", "-o", required=True, type=Path)

    p = sub.add_parser("make-toy", help="a validation set with synthetic anomalies (MOOD toy layout)",
                       parents=[SEED],
                       description="Writes OUT/toy/, OUT/toy_label/sample/<name>.txt and "
                                   "OUT/toy_label/pixel/<name> from normal volumes.")
    p.add_argument("--input", "-i", required=True, type=Path, help="a normal volume or a folder of them")
    p.add_argument("--output", "-o", required=True, type=Path)
    p.add_argument("--count", required=True, type=_positive_int, help="number of cases")
    p.add_argument("--region", choices=REGIONS, default=None)
    p.add_argument("--normal-fraction", type=float, default=0.25, help="share of untouched normals")
    p.add_argument("--size", type=_positive_int, nargs=3, default=None, metavar=("A0", "A1", "A2"),
                   help="write smaller volumes (quick runs; then score with an explicit --region)")

    _validate_arguments(sub.add_parser(
        "validate", help="the challenge's metric on a toy layout (package or --docker IMAGE)",
        description="Run the package or a container on a MOOD toy layout and score it exactly as the "
                    "challenge's evaluator does (average precision), plus AUROC and best Dice. "
                    "Arguments after a bare '--' go to the predictor."))

    p = sub.add_parser("show", help="a PNG montage of axial slices with scores and labels")
    p.add_argument("volume", type=Path)
    p.add_argument("--scores", type=Path, default=None, help="a pixel prediction to overlay")
    p.add_argument("--label", type=Path, default=None, help="a mask to outline")
    p.add_argument("--png", required=True, type=Path)
    p.add_argument("--slices", type=_positive_int, default=12)

    p = sub.add_parser("demo", help="the whole pipeline on a shipped volume, in a few minutes on a CPU",
                       parents=[WEIGHTS, DEVICE])
    p.add_argument("--output", "-o", type=Path, default=Path("mood-demo"),
                   help="folder for the toy set, predictions, pictures and results.json; created if "
                        "missing, an earlier demo's output replaced, any other non-empty folder "
                        "refused (default: mood-demo)")
    p.add_argument("--method", choices=("auto",) + METHODS, default=os.environ.get("MOOD_METHOD") or DEFAULT_METHOD,
                   help="how to score, as for sample and pixel (default: $MOOD_METHOD if set, else auto: "
                        "the method the weights card names)")
    return parser


def _validate_arguments(p: argparse.ArgumentParser) -> None:
    from .validation.validate import TASKS

    p.add_argument("data", type=Path, help="folder with <region>/toy and <region>/toy_label/{sample,pixel}")
    p.add_argument("--json", dest="output_json", type=Path, default=None, help="write the results here")
    p.add_argument("--docker", default=None, metavar="IMAGE",
                   help="run this container image the way the challenge does, instead of the package")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--regions", nargs="+", choices=REGIONS, default=list(REGIONS))
    p.add_argument("--pictures", type=Path, default=None, help="folder for one PNG per case")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep predictions in WORKDIR/<region>/<task> (default: a temporary folder)")
    p.add_argument("--extra-args", dest="extra_args", default="", metavar="'ARGS'",
                   help="arguments for 'python -m mood' (or 'docker run'), as one quoted string; "
                        "everything after a bare '--' is added to them")


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` -> (before a bare ``--``, after it): the tail goes to validate's predictor unparsed."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors that argparse cannot see alone (combinations): exit 2 with argparse's message."""
    from .training.settings import TrainSettings  # the defaults; no torch

    if getattr(args, "method", None) is not None and args.method not in ("auto",) + METHODS:
        parser.error(f"MOOD_METHOD={args.method!r} is not a method; choose one of auto, {', '.join(METHODS)}")
    if args.command == "train" and args.model != "localiser" and (
            args.tasks != TRAINING_TASKS or args.channels or args.image_size
            or args.label_sigma != TrainSettings.label_sigma or args.average != TrainSettings.average):
        parser.error("--tasks, --label-sigma, --average, --channels and --image-size apply to the localiser")
    if args.command == "train" and args.model == "localiser" and (
            args.vqvae or args.width != 1.0 or args.cell or args.codes or args.crop or args.prior_channels
            or args.prior_blocks or args.prior_dropout is not None or args.codebook_update != TrainSettings.codebook_update
            or args.ema_decay != TrainSettings.ema_decay or args.quantiser_gradient != TrainSettings.quantiser_gradient):
        parser.error("--vqvae, --width, --cell, --codes, --crop, --codebook-update, --ema-decay, --quantiser-gradient "
                     "and --prior-* apply to LSR's networks, not the localiser")
    if args.command == "train" and args.model == "prior":
        if args.width != 1.0 or args.cell or args.codes:
            parser.error("--width, --cell and --codes apply to the VQ-VAE; the prior takes its architecture from --vqvae")
        if args.crop:
            parser.error("--crop applies to the VQ-VAE; the prior learns whole slices' code grids")
        if args.vqvae is None:
            parser.error("training the prior needs --vqvae DIR (the trained VQ-VAE's weights)")
    if args.command == "train" and args.model == "vqvae" and (args.prior_channels or args.prior_blocks
                                                               or args.prior_dropout is not None):
        parser.error("--prior-channels, --prior-blocks and --prior-dropout apply to the prior")
    if args.command != "validate" and args._extra:
        parser.error(f"unrecognized arguments after '--': {' '.join(args._extra)} (only validate takes them)")


def _run_predict(args: argparse.Namespace) -> int:
    from .running.predict import predict
    from .running.report import report_path, write_report
    from .running.shard import placement, under_torchrun
    from .volumes.volume_io import max_voxels_from_environment
    from .running.workers import run_workers, worker_count

    max_voxels = args.max_voxels or max_voxels_from_environment()
    place = placement(args.shard, args.device)
    workers = worker_count(args.workers, place, args.device)
    if workers > 1:
        from .running.report import merge, read_reports, table

        reports = [report_path(args.report, place.shard.split(w, workers), args.output)
                   for w in range(workers)] if args.report else []
        code = run_workers(args._argv, workers)
        if reports:
            print(table(merge(read_reports([p for p in reports if p.is_file()]))), file=sys.stderr)
        return code
    report = report_path(args.report, place.shard, args.output) if args.report else None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if place.device.startswith("cuda:"):
        import torch

        torch.cuda.set_device(place.device)  # allocations without a device go to this process's GPU
    summary = predict(args.command, args.input, args.output, region=args.region, device=place.device,
                      weights=args.weights, seed=args.seed,
                      restorations=args.restorations, slices=args.slices,
                      skip_existing=args.skip_existing,
                      max_voxels=max_voxels, progress=not args.quiet,
                      method=args.method, shard=place.shard, in_flight=args.in_flight)
    print(summary.line(), file=sys.stderr)
    if report:
        write_report(report, summary, task=args.command, method=args.method, input=args.input,
                     output=args.output)
    if not summary.ok and under_torchrun():
        # A bad file must not cost the other shards their run: torchrun would end them on status 1.
        print(f"exit status 0 despite {len(summary.failed)} failed volume(s): under torchrun a non-zero "
              f"status would stop the other processes; `mood report` exits 1 on failures",
              file=sys.stderr)
        return 0
    return 0 if summary.ok else 1


def _run_report(args: argparse.Namespace) -> int:
    from .running.report import merge, read_reports, table
    from .volumes.volume_io import write_json

    merged = merge(read_reports(args.reports))
    print(table(merged))
    if args.json:
        write_json(args.json, merged, indent=1)
    return 0 if not merged["failed"] and not merged["missing"] else 1


def train_settings(args: argparse.Namespace):
    """The :class:`mood.training.TrainSettings` of a parsed ``mood train`` (options named like its fields)."""
    from dataclasses import fields

    from .training.settings import TrainSettings

    return TrainSettings(**{f.name: getattr(args, f.name) for f in fields(TrainSettings) if hasattr(args, f.name)})


def _run_train(args: argparse.Namespace) -> int:
    from .training import train_localiser, train_prior, train_vqvae

    common = dict(settings=train_settings(args), holdout=args.holdout, resume=args.resume, tiny=args.tiny,
                  device=args.device, threads=args.threads, init_from=args.init_from)
    if args.model == "localiser":
        out = train_localiser(args.region, args.data, args.out, channels=args.channels, image_size=args.image_size,
                              **common)
    elif args.model == "vqvae":
        out = train_vqvae(args.region, args.data, args.out, width=args.width, cell=args.cell, codes=args.codes,
                          **common)
    else:
        out = train_prior(args.region, args.data, args.out, vqvae=args.vqvae, prior_channels=args.prior_channels,
                          prior_blocks=args.prior_blocks, prior_dropout=args.prior_dropout, **common)
    print(f"weights written to {out}", file=sys.stderr)
    return 0


def _run_calibrate(args: argparse.Namespace) -> int:
    from .training.calibrate import calibrate

    card = calibrate(args.region, args.data, args.weights, device=args.device, n_slices=args.slices,
                     restorations=args.restorations, seed=args.seed,
                     parts=("localiser", "lsr") if args.networks == "all" else (args.networks,),
                     slice_sigma=args.slice_sigma)
    done = ("localiser", "lsr") if args.networks == "all" else (args.networks,)
    done = [part for part in done if part in card.info["calibration"]]
    if "localiser" in done:
        print(f"localiser: slice sigma={card.config.localiser.slice_sigma:g} sample scale="
              f"{card.localiser_sample_map.scale:.4g} -> {args.weights}")
    if "lsr" in done:
        print(f"lsr: lambda_s={card.lambda_s:.4g} lambda_p={card.lambda_p:.4g} sample scale="
              f"{card.sample_map.scale:.4g} pixel scale={card.pixel_map.scale:.4g} -> {args.weights}")
    return 0


def _run_init_weights(args: argparse.Namespace) -> int:
    from .training import init_weights

    print(init_weights(args.region, args.out, tiny=args.tiny, seed=args.seed))
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    from .volumes.convert import convert_folder

    written = convert_folder(args.input, args.output, args.region)
    print(f"converted {len(written)} volume(s) into {args.output}", file=sys.stderr)
    return 0 if written else 1


def _run_make_toy(args: argparse.Namespace) -> int:
    import json

    from .validation.toy import make_toy, summary_dict

    summary = make_toy(args.input, args.output, args.count, args.seed, region=args.region,
                       normal_fraction=args.normal_fraction,
                       size=tuple(args.size) if args.size else None)
    print(json.dumps(summary_dict(summary), indent=2))
    return 0


def _run_validate(args: argparse.Namespace) -> int:
    import shlex

    from .validation.validate import format_table, succeeded, validate

    report = validate(args.data, output_json=args.output_json, docker=args.docker, tasks=tuple(args.tasks),
                      regions=tuple(args.regions), pictures=args.pictures,
                      extra_args=shlex.split(args.extra_args or "") + args._extra, workdir=args.workdir)
    print(format_table(report["results"]))
    for line in report["skipped"]:
        print(f"skipped {line}")
    return 0 if succeeded(report["results"]) else 1


def _run_show(args: argparse.Namespace) -> int:
    from .validation.show import show

    print(show(args.volume, args.png, scores=args.scores, label=args.label, n_slices=args.slices))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from .validation.demo import demo
    from .validation.validate import succeeded

    report = demo(args.output, weights=args.weights, device=args.device, method=args.method,
                  say=lambda text: print(text, flush=True))
    return 0 if succeeded(report["results"]) else 1


HANDLERS = {"sample": _run_predict, "pixel": _run_predict, "report": _run_report, "train": _run_train,
            "calibrate": _run_calibrate, "init-weights": _run_init_weights, "convert": _run_convert,
            "make-toy": _run_make_toy, "validate": _run_validate, "show": _run_show, "demo": _run_demo}


def expected_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure the user can act on (bad input, missing weights, file system),
    as opposed to a bug: the former end in one line and exit 1, the latter keep their traceback."""
    weights = sys.modules.get(f"{__package__}.detection.weights")  # loaded whenever a WeightsError was raised
    return isinstance(exc, (ValueError, OSError)) or (weights is not None and isinstance(exc, weights.WeightsError))


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    own, extra = split_extra(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(own)
    args._extra = extra
    args._argv = own  # what the workers of a multi-GPU run are started with
    check_arguments(parser, args)
    try:
        return HANDLERS[args.command](args)
    except Exception as exc:
        if not expected_failure(exc):
            raise
        print(f"mood {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 1
