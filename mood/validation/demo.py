"""The embedded demo: the whole pipeline on the shipped brain volume, in a few minutes on a 2-core CPU.

``mood demo`` (``python -m mood demo``) needs no data, no GPU and no Docker. It

1. builds a small validation set from the shipped volume (``mood/data/demo_brain_t1.nii.gz``: the
   MNI152 2009a template at 2 mm, licence in ``mood/data/LICENSE-MNI152.txt``) with
   :func:`mood.validation.toy.make_toy`: a few cases with synthetic anomalies of different kinds and at least
   one untouched normal;
2. runs the ``sample`` and ``pixel`` tasks on it with the brain weights and the method their card names
   (the localiser: every plane; LSR: ``slices`` slices, ``restorations`` restorations) (``weights/brain``, or
   ``$MOOD_WEIGHTS/brain``, as :func:`mood.detection.weights.default_weights_dir` resolves them, or ``weights``);
3. scores the predictions exactly as the challenge's evaluator does (:func:`mood.validation.validate.validate`:
   average precision, plus AUROC and best Dice), gives the table and draws one picture per case.

Out, under ``output``::

    brain/toy/toy_000.nii.gz ...          the cases (the MOOD toy layout that ``mood validate`` reads)
    brain/toy_label/{sample,pixel}/       their labels
    brain/toy_manifest.json               which anomaly each case got
    predictions/brain/{sample,pixel}/     the predictions
    pictures/brain/toy_000.png ...        slices with the pixel scores overlaid, labels outlined
    results.json                          the metrics, per-case scores and the demo's settings

Sizes, chosen for time: ``count`` = 5 cases (4 anomalous, one of each family: a dark blob, Gaussian
noise, a "source" deformation, a foreign patch; 1 normal) at ``size`` = 256^3, the challenge's
brain shape (the shipped volume is 2 mm, so this up-samples it). The localiser (the shipped brain
weights' method) scores every one of the 256 axial planes: the whole demo took 119 s of wall time
on a 2-core CPU with a training run on the other core (session 21). Until session 21 the demo
was 128^3; with the same weights and the same anomalies (seed 1, sizes relative to the head) the
localiser's pixel AP was 0.20 there and 0.26 at 256^3, and the normal case's highest score 0.21
against 0.07: a plane's false alarms are its own accidents, and the smoothing across slices
(``slice_sigma``, 4 planes of a 256-plane volume) likely averages twice as many of them away on
twice as many planes.

With ``--method lsr`` it scores ``slices`` = 12 axial slices with ``restorations`` = 3
restorations per slice in pixel mode (the challenge's runs: 32 and 15). ``seed`` = 1 places all
four anomalies across some of the 12 slices (with seed 0 a small deformation falls between them);
anomalies between the scored slices are missed, so LSR's settings show the pipeline, not the
method's accuracy. Measured at 128^3 for LSR with real-size random weights whose card thresholds
were set to the 90th/98th percentiles of their own code NLL (so that, as with calibrated weights,
about 10 % of the codes are resampled), one torch thread per process: 114 and 129 CPU-seconds in
all (most of it in pixel mode), 188 and 244 s of wall time on a heavily shared machine. On a busy
machine ``OMP_NUM_THREADS=1`` is faster than torch's default of one thread per core (442 s there
with the default).

Without installed weights (no ``card.json``) it raises :class:`mood.detection.weights.WeightsError` with a
one-line message that says what to do, before any work. It returns the report that it also writes
to ``results.json``; its progress and table go to ``say`` (``mood demo`` passes ``print``).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import region_preset
from ..detection.detector import DEFAULT_RESTORATIONS
from .validate import TASKS, format_table, succeeded
from ..volumes.volume_io import write_json, write_text

REGION = "brain"
#: The shipped normal volume (MNI152 2009a, 2 mm; see LICENSE-MNI152.txt beside it).
DEMO_VOLUME = Path(__file__).resolve().parents[1] / "data" / "demo_brain_t1.nii.gz"
#: Defaults sized for a few minutes on a 2-core CPU (measurements in the module docstring).
DEMO_COUNT = 5
DEMO_NORMALS = 1
DEMO_SIZE = 256
DEMO_SLICES = 12
DEMO_RESTORATIONS = 3
DEMO_SEED = 1
#: Anomaly kinds of the anomalous cases, one family each: intensity, texture, deformation, misplaced tissue.
DEMO_KINDS = ("blob_dark", "noise", "source", "foreign")
#: Marks a folder as the demo's own, so that a rerun may replace what an earlier run wrote there.
MARKER = ".mood-demo"
#: What the demo writes under its output folder (a rerun removes these, and only these).
_OWN = ("brain", "predictions", "pictures", "results.json")

#: Where the demo's lines go: nowhere by default (``mood demo`` passes ``print``).
Say = Callable[[str], None]


def _silent(text: str) -> None:
    pass


def _no_weights_message(reason: str) -> str:
    """One line: what is missing and what to do."""
    return (f"{reason}; the demo runs the trained models of the repository's weights/{REGION}: use a "
            f"checkout that includes them, pass --weights DIR or set MOOD_WEIGHTS=ROOT (ROOT/{REGION}), "
            f"or try the pipeline with random weights (meaningless metrics): "
            f"mood init-weights --region {REGION} --out random-weights && mood demo --weights random-weights")


def check_weights(weights: Path | None, method: str = "auto") -> tuple[Path, dict[str, Any], str]:
    """The brain weights folder the demo will use, and its card's ``info``, after loading both models.

    ``weights`` None means the installed default (:func:`mood.detection.weights.default_weights_dir`).
    Raises :class:`mood.detection.weights.WeightsError` with a message that says what is missing and what to do.
    """
    from ..detection.detector import Detector, resolve_weights
    from ..detection.weights import WeightsError, default_weights_dir

    if weights is None:
        directory = default_weights_dir(REGION)
        if not (directory / "card.json").is_file():
            raise WeightsError(_no_weights_message(
                f"no trained {REGION} weights are installed: {directory / 'card.json'} does not exist"))
    else:
        directory = Path(weights)
    try:
        directory = resolve_weights(REGION, directory)
        detector = Detector.load(REGION, directory, "cpu")  # every check of the real run, up front
        method = detector.resolve(method)
        detector.require(method)
    except WeightsError as exc:
        raise WeightsError(_no_weights_message(
            f"no usable {REGION} weights in {directory}: {str(exc).splitlines()[0]}")) from None
    return directory.absolute(), dict(detector.card.info), method


def _check_args(count: int, normals: int, size: int, slices: int, restorations: int) -> None:
    if count < 2:
        raise ValueError(f"count={count}: the metrics need at least 2 cases (anomalous and normal)")
    if not 1 <= normals < count:
        raise ValueError(f"normals={normals}: need at least one normal and one anomalous case of {count}")
    if size < 16:
        raise ValueError(f"size={size}: volumes need at least 16 voxels a side")
    if slices < 1 or restorations < 1:
        raise ValueError(f"slices={slices}, restorations={restorations}: both must be at least 1")


def prepare_output(output: Path) -> None:
    """Create ``output``, or clear what an earlier demo wrote there; refuse any other non-empty folder."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"output {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not (output / MARKER).is_file():
        raise ValueError(f"output folder {output} is not empty and was not written by `mood demo`; "
                         f"choose another with --output DIR")
    output.mkdir(parents=True, exist_ok=True)
    write_text(output / MARKER, "written by `mood demo`; a rerun replaces brain/, predictions/, "
                                "pictures/ and results.json\n")
    for name in _OWN:
        path = output / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _validate_task(output: Path, task: str, extra_args: Sequence[str], pictures: Path | None) -> dict[str, Any]:
    """One task through :func:`mood.validation.validate.validate`."""
    from .validate import validate

    return validate(output, tasks=(task,), regions=(REGION,), pictures=pictures,
                    extra_args=list(extra_args), workdir=output / "predictions")


def _announce(say: Say, output: Path, source: Path, weights_dir: Path, info: dict[str, Any], count: int, normals: int,
              size: int, slices: int, restorations: int, method: str) -> None:
    say(f"mood demo: {count} brain cases ({count - normals} with synthetic anomalies, {normals} normal) "
         f"at {size}^3, made from {source.name}")
    if source == DEMO_VOLUME:
        say(f"  (the MNI152 2009a template at 2 mm; licence: {DEMO_VOLUME.parent / 'LICENSE-MNI152.txt'});")
    if method == "localiser":
        say(f"  scored by the localiser on every one of its {size} axial planes.")
    else:
        say(f"  scored by {method} on {slices} slices, pixel mode with {restorations} restorations per slice "
             f"(challenge runs: 256^3, {region_preset(REGION).n_slices} slices, {DEFAULT_RESTORATIONS} "
             f"restorations).")
        say("  Sized to finish in a few minutes on a 2-core CPU; anomalies between the scored slices are "
             "missed, so the numbers show the pipeline, not the method's accuracy.")
    say(f"  weights: {weights_dir}")
    if info.get("random_init"):
        say("  NOTE: these weights are randomly initialised (their card says so): the metrics are meaningless.")
    say(f"  output: {output}")
    say("")


def _run_tasks(say: Say, output: Path, weights_dir: Path, device: str, seed: int, slices: int,
               restorations: int, method: str) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """Predict and score both tasks; returns the predictor arguments and validate's report, per task."""
    # validate adds --input, --output and --region; --restorations is pixel's alone
    # One torch thread: the restoration's many small products gain little from a second thread and
    # lose badly when anything else runs on the same cores.
    common = ["--weights", str(weights_dir), "--device", device, "--seed", str(seed), "--method", method,
              "--threads", "1"] + ([] if method == "localiser" else ["--slices", str(slices)])
    args = {"sample": common, "pixel": common + ["--restorations", str(restorations)]}
    toy_dir, pred_dir = output / REGION / "toy", output / "predictions" / REGION
    reports = {}
    for step, task in ((2, "sample"), (3, "pixel")):
        say(f"[{step}/3] {task} task: python -m mood {task} --input {toy_dir} --output {pred_dir / task} "
             f"--region {REGION} {' '.join(args[task])}" + ("  (the slow part)" if task == "pixel" else ""))
        reports[task] = _validate_task(output, task, args[task],
                                       pictures=output / "pictures" if task == "pixel" else None)
    return args, reports


def _print_summary(say: Say, output: Path, report: dict[str, Any], ok: bool) -> None:
    say("")
    say("The challenge's metric (average precision; AUROC and best Dice besides):")
    say(format_table(report["results"]))
    say("")
    say(f"{'case':<16}{'anomaly':<13}{'label':>6}{'sample score':>14}")
    for case, entry in report["demo"]["cases"].items():
        score = entry["sample_score"]
        say(f"{case:<16}{entry['kind'] or 'none':<13}{int(entry['kind'] is not None):>6}"
             f"{'-' if score is None else f'{score:.4f}':>14}")
    say("")
    say(f"toy set:     {output / REGION / 'toy'}  (labels in {output / REGION / 'toy_label'})")
    say(f"predictions: {output / 'predictions' / REGION}/{{sample,pixel}}")
    say(f"pictures:    {output / 'pictures' / REGION}  (pixel scores overlaid, anomalies outlined in cyan)")
    say(f"results:     {output / 'results.json'}")
    say(f"done in {report['demo']['seconds']:.0f} s"
         + ("" if ok else "; some predictions FAILED (see the errors above)"))


def demo(output: Path = Path("mood-demo"), weights: Path | None = None, device: str = "auto", *,
         count: int = DEMO_COUNT, normals: int = DEMO_NORMALS, size: int = DEMO_SIZE,
         slices: int = DEMO_SLICES, restorations: int = DEMO_RESTORATIONS, seed: int = DEMO_SEED,
         kinds: tuple[str, ...] = DEMO_KINDS, source: Path = DEMO_VOLUME, method: str = "auto",
         say: Say = _silent) -> dict[str, Any]:
    """Build a toy set from the shipped volume, run both tasks, score them, draw them; see the module doc.

    Args:
        output: folder for everything the demo writes (created; a rerun replaces an earlier demo's
            files; any other non-empty folder is refused).
        weights: brain weights folder (or a root with ``brain/``); default
            :func:`mood.detection.weights.default_weights_dir`.
        device: ``auto``, ``cpu`` or ``cuda``, for the predictions.
        count, normals: cases, of which ``normals`` are left untouched.
        size: side of the cubic volumes (the challenge's brain volumes are 256).
        slices: axial slices scored per volume by LSR (the localiser scores every plane).
        restorations: restorations per slice (LSR's pixel task).
        seed: seed of the toy set and of the restorations.
        kinds: anomaly kinds, used in turn by the anomalous cases.
        source: the normal volume the cases are made from.
        method: how to score (:data:`mood.config.METHODS`); "auto": the weights card's choice.
        say: receives the demo's lines (progress, the table, where everything is).

    Returns:
        The report written to ``results.json`` (``results``: validate's rows for both tasks;
        :func:`mood.validation.validate.succeeded` tells whether both ran and were scored). Raises
        ``ValueError`` for bad settings or an output folder it may not use and
        :class:`mood.detection.weights.WeightsError` without usable weights, both before any work.
    """
    from .toy import make_toy

    output, source = Path(output).absolute(), Path(source)
    _check_args(count, normals, size, slices, restorations)
    start = time.perf_counter()
    weights_dir, info, method = check_weights(weights, method)
    prepare_output(output)
    _announce(say, output, source, weights_dir, info, count, normals, size, slices, restorations, method)

    t0 = time.perf_counter()
    toy = make_toy(source, output / REGION, count, seed, region=REGION, normal_fraction=normals / count,
                   size=(size, size, size), kinds=kinds)
    t_toy = time.perf_counter() - t0
    say(f"[1/3] toy set: {toy.n_cases} cases in {output / REGION / 'toy'} ({t_toy:.0f} s): "
         + ", ".join(f"{c.name} {c.kind or 'normal'}" for c in toy.cases))
    args, reports = _run_tasks(say, output, weights_dir, device, seed, slices, restorations, method)

    rows = [row for task in TASKS for row in reports[task]["results"]]
    cases = {key: value for task in TASKS for key, value in reports[task]["cases"].items()}
    sample_cases = cases.get(f"{REGION}/sample", {})
    report = {
        "demo": {"source": str(source), "weights": str(weights_dir), "weights_info": info, "device": device,
                 "method": method, "count": count, "normals": normals, "size": [size] * 3, "slices": slices,
                 "restorations": restorations, "seed": seed,
                 "seconds": round(time.perf_counter() - start, 1), "toy_seconds": round(t_toy, 1),
                 "cases": {c.name: {"kind": c.kind, "changed_voxels": c.n_changed,
                                    "sample_score": sample_cases.get(f"{c.name}.txt", {}).get("score")}
                           for c in toy.cases}},
        "data": str(output), "predictor": reports["sample"]["predictor"], "extra_args": args,
        "results": rows, "skipped": [s for task in TASKS for s in reports[task]["skipped"]],
        "workdir": reports["sample"]["workdir"], "cases": cases,
    }
    write_json(output / "results.json", report)
    _print_summary(say, output, report, succeeded(rows))
    return report


__all__ = ["demo", "check_weights", "prepare_output", "DEMO_VOLUME", "DEMO_COUNT", "DEMO_NORMALS",
           "DEMO_SIZE", "DEMO_SLICES", "DEMO_RESTORATIONS", "DEMO_SEED", "DEMO_KINDS"]
