"""Read prior checkpoints without a validation: code AUROC and context gain on a toy set.

For each prior (the weights folder's own, or each CHECKPOINT: a prior's ``model-STEP.safetensors``
from ``OUT/train/prior/`` of a run on the same frozen VQ-VAE), on a ``mood make-toy`` folder in
challenge form:

- :func:`mood.validation.stages.code_separation` of the anomalous cases: the AUROC of per-code NLL
  (latent cells more than half inside a label against their normal body's: whether any lambda_p
  could tell them apart), the share of each above the card's lambda_p and their median NLL; and the
  same AUROC of each code's NLL less the entropy of the prior's prediction at its cell
  (``surprise_auroc``: :func:`mood.validation.stages.surprise_on_anomaly`);
- on the normal cases, the body codes' mean NLL, the entropy of their own frequencies
  (``unigram``) and the difference (``gain``, nats): how much the prior gets from its context;
- with ``--train-head VOLUME`` (repeated: heads the prior trained on, converted to the toy set's
  form as training converts them), the same gain on those (``train_gain``) and what of it does not
  carry over to the unseen normal cases (``gain_gap``): the part of the context the prior has
  learnt as memory of its training heads;
- with ``--sources DIR`` (the normal volumes the toy set was made from, as its manifest names
  them), an oracle's view of the anomalous cases (:func:`mood.validation.stages.rise_over_clean`):
  the share of anomalous cells whose code the anomaly changed (``changed_codes``) and the AUROC of
  the NLL's rise over the clean volume's at the same cell (``oracle_auroc``): what a prior that
  knew each cell's normal NLL would reach. Made from training heads (``mood make-toy`` of them),
  the toy set's ``code_auroc`` says what memory of the very heads buys. Before the priors, one
  line of the VQ-VAE's own (:func:`mood.validation.stages.encoder_view`): whether the anomaly moves
  its cells' encodings (``shift_auroc``, an oracle) and whether they land far from every code
  (``residual_auroc``); if the encoder does not see an anomaly, no prior can. ``--picture PNG``
  draws these readings' histograms for the last prior read;
- with ``--bank DIR`` (normal volumes, such as the heads the networks trained on), a score that
  needs no code and no prior (:func:`mood.validation.stages.nearest_normal`): each cell's distance
  from its encoding to the nearest body-cell encoding of DIR's volumes, leaving out the one a case
  was made from (a file of the same name; leave other scans of the same person out of DIR too),
  on the VQ-VAE's line (``nearest_auroc``).

These are the readings of ``scripts/validate_weights.py`` (``info.validation.held_out``), for one
prior pass per case instead of a validation's restorations:

    python scripts/read_prior.py --weights weights/brain --toy VAL/toy/brain RUN/train/prior/model-*.safetensors
    python scripts/read_prior.py --weights W --toy TOY --train-head DATA/brain/a.nii.gz --train-head DATA/brain/b.nii.gz
    python scripts/read_prior.py --weights W --toy TOY --sources NORMALS  # NORMALS: make-toy's --input
    python scripts/read_prior.py --weights W --toy TOY --bank DATA/brain
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mood.detection.detector import Detector  # noqa: E402
from mood.validation.stages import (Coded, body_encodings, code_separation, coded, context_gain, encoder_view,  # noqa: E402
                                   nearest_normal, nll_on_anomaly, pooled_auroc, rise_over_clean, surprise_on_anomaly)
from mood.validation.show import ensure_mpl_config  # noqa: E402
from mood.validation.toy import MANIFEST  # noqa: E402
from mood.volumes.convert import ensure_challenge_form  # noqa: E402
from mood.volumes.volume_io import load_volume  # noqa: E402


Splits = list[tuple[torch.Tensor, torch.Tensor]]  # per case, (anomalous cells, normal body cells)


def read(det: Detector, cases: list[tuple[np.ndarray | Coded, np.ndarray | None]],
         train_heads: Sequence[np.ndarray | Coded] = (), clean: Sequence[np.ndarray | Coded | None] = ()
         ) -> tuple[dict[str, float], dict[str, Splits]]:
    """The readings of ``det``'s prior on ``cases`` (volume, label or None for a normal case), on
    the volumes ``train_heads`` it trained on and, given ``clean`` (per case, the normal volume it
    was made from), the oracle's. Volumes may come :func:`~mood.validation.stages.coded` (the VQ-VAE
    is frozen, so its codes serve every prior read). Also returns the per-cell values it pooled:
    ``nll``, ``surprise`` and (given ``clean``) ``rise``."""
    splits = [nll_on_anomaly(det, volume, label) for volume, label in cases if label is not None]
    gains = [context_gain(det, volume) for volume, label in cases if label is None]
    out = code_separation(splits, det.card.threshold_pixel) if splits else {}
    surprises = [surprise_on_anomaly(det, volume, label) for volume, label in cases if label is not None]
    if "code_auroc" in out:
        out["surprise_auroc"] = pooled_auroc(*(torch.cat([sp[i] for sp in surprises]) for i in (0, 1)))
    if gains:
        out.update({f"context_{k}": float(np.mean([g[k] for g in gains])) for k in gains[0]})
    if len(train_heads):
        out["train_gain"] = float(np.mean([context_gain(det, volume)["gain"] for volume in train_heads]))
        if gains:
            out["gain_gap"] = out["train_gain"] - out["context_gain"]
    rises = [rise_over_clean(det, volume, normal, label) for (volume, label), normal in zip(cases, clean)
             if label is not None]
    rises = [r for r in rises if len(r[0])]  # cases whose label covers no cell say nothing here
    if rises:
        anomalous, normal = (torch.cat([r[i] for r in rises]) for i in (0, 1))
        out["changed_codes"] = float(np.average([r[2] for r in rises], weights=[len(r[0]) for r in rises]))
        out["oracle_auroc"] = pooled_auroc(anomalous, normal)
    return out, {"nll": splits, "surprise": surprises, "rise": [r[:2] for r in rises]}


def read_encoder(det: Detector, cases: list[tuple[np.ndarray | Coded, np.ndarray | None]],
                 clean: Sequence[np.ndarray | Coded | None] = (), bank: dict[str, torch.Tensor] | None = None,
                 sources: Sequence[str | None] = ()) -> tuple[dict[str, float], dict[str, Splits]]:
    """The VQ-VAE's own readings of the anomalous ``cases``, pooled: given ``clean`` (per case, the
    normal volume it was made from; :func:`~mood.validation.stages.encoder_view`) each cell's
    encoding shift (an oracle) and its quantisation residual; given ``bank`` (normal volumes'
    :func:`~mood.validation.stages.body_encodings` by name) and ``sources`` (per case, the name of
    the one it was made from, left out of the bank) the distance to the nearest normal encoding,
    ``nearest``. For each, the AUROC of the anomalous cells against the normal body's and the
    median of each; and the per-cell values."""
    views: dict[str, Splits] = {}
    if len(clean):
        encoder = [encoder_view(det, volume, normal, label) for (volume, label), normal in zip(cases, clean)
                   if label is not None]
        views |= {what: [v[what] for v in encoder] for what in ("shift", "residual")}
    if bank:
        # one bank per source head, built once however many cases were made from it
        left_out = {source: torch.cat([b for name, b in bank.items() if name != source]) for source in set(sources) if source}
        views["nearest"] = [nearest_normal(det, volume, label, left_out[source])
                            for (volume, label), source in zip(cases, sources) if label is not None]
    out = {}
    for what, splits in views.items():
        anomalous, normal = (torch.cat([sp[i] for sp in splits]) for i in (0, 1))
        if len(anomalous) and len(normal):
            out[f"{what}_auroc"] = pooled_auroc(anomalous, normal)
            out[f"{what}_median_anomalous"], out[f"{what}_median_normal"] = float(anomalous.median()), float(normal.median())
    return out, views


def draw(cells: dict[str, Splits], png: Path, title: str) -> None:
    """Histograms of the anomalous cells' readings against the normal body's, each with its pooled
    AUROC (``cells``: :func:`read`'s and :func:`read_encoder`'s per-cell values): what the prior
    says (NLL, surprise), what an oracle of it would (the NLL's rise over the clean head's) and what
    the encoder sees (the encoding's shift, an oracle; its quantisation residual; given a bank, its
    distance to the nearest normal encoding)."""
    panels = {"per-code NLL (nats)": cells["nll"],
              "NLL less the prediction's entropy (nats)": cells["surprise"],
              "NLL rise over the clean head's (nats; oracle)": cells["rise"],
              "encoding's shift from the clean head's (oracle)": cells["shift"],
              "encoding's distance to its code": cells["residual"]}
    if "nearest" in cells:
        panels["distance to the nearest normal head's encoding"] = cells["nearest"]
    ensure_mpl_config()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8))
    for ax, (what, splits) in zip(axes, panels.items()):
        a, n = (torch.cat([sp[i] for sp in splits]) for i in (0, 1))
        both = torch.cat([a, n]).numpy()
        if "shift" in what:  # from numerical noise to a new code: decades apart
            bins = np.geomspace(max(both.min(), 1e-4), both.max() + 1e-4, 41)
            a, n = a.clamp_min(1e-4), n.clamp_min(1e-4)
            ax.set_xscale("log")
        else:
            bins = np.histogram_bin_edges(both, 40)
        ax.hist(n.numpy(), bins, density=True, alpha=0.6, label=f"normal body cells ({len(n):,})")
        ax.hist(a.numpy(), bins, density=True, alpha=0.6, label=f"anomalous cells ({len(a):,})")
        ax.set_yscale("log")
        ax.set_title(f"AUROC {pooled_auroc(a, n):.2f}", fontsize=10)
        ax.set_xlabel(what, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--weights", type=Path, required=True, help="weights folder: card, VQ-VAE and a prior of this shape")
    ap.add_argument("--region", choices=("brain", "abdom"), default="brain")
    ap.add_argument("--toy", type=Path, required=True, help="a `mood make-toy` output folder (toy/, toy_label/, manifest)")
    ap.add_argument("checkpoints", nargs="*", type=Path, help="prior state dicts to read in turn (default: the folder's prior)")
    ap.add_argument("--train-head", action="append", type=Path, default=[], metavar="VOLUME",
                    help="a volume the prior trained on (repeat the option): its context gain too, and the gap")
    ap.add_argument("--sources", type=Path, default=None, metavar="DIR",
                    help="the normal volumes the toy set was made from (make-toy's --input): the oracle's readings too")
    ap.add_argument("--picture", type=Path, default=None, metavar="PNG",
                    help="(with --sources) histograms of the anomalous cells' readings against the normal body's, "
                         "for the last prior read")
    ap.add_argument("--bank", type=Path, default=None, metavar="DIR",
                    help="a folder of normal volumes: each cell's distance to their nearest body-cell encoding, "
                         "leaving out the volume a case was made from")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.picture and args.sources is None:
        ap.error("--picture draws the oracle's readings too: it needs --sources")
    if args.bank is not None and not any(args.bank.glob("*.nii*")):
        ap.error(f"--bank {args.bank}: no NIfTI volumes there")
    torch.set_num_threads(args.threads)
    det = Detector.load(args.region, args.weights, device="cpu")
    manifest = json.loads((args.toy / MANIFEST).read_text())["cases"]
    # every prior reads the same frozen VQ-VAE's codes: each volume is encoded once, here
    cases = [(coded(det, load_volume(args.toy / "toy" / name).data),
              load_volume(args.toy / "toy_label" / "pixel" / name).data > 0.5 if case["kind"] else None)
             for name, case in sorted(manifest.items())]
    shape = cases[0][0].slices.grid.shape
    heads = [coded(det, ensure_challenge_form(path, args.region, shape=shape)[0]) for path in args.train_head]
    clean: list[Coded | None] = []
    if args.sources is not None:
        normals: dict[str, Coded] = {}
        for name, case in sorted(manifest.items()):
            if case["kind"] and case["source"] not in normals:
                normals[case["source"]] = coded(det, ensure_challenge_form(args.sources / case["source"], args.region,
                                                                           shape=shape)[0])
            clean.append(normals[case["source"]] if case["kind"] else None)
    bank = {path.name: body_encodings(det, ensure_challenge_form(path, args.region, shape=shape)[0])
            for path in sorted(args.bank.glob("*.nii*"))} if args.bank is not None else None
    if clean or bank:
        sources = [case["source"] if case["kind"] else None for _, case in sorted(manifest.items())]
        encoder, encoder_cells = read_encoder(det, cases, clean, bank, sources)
        print(json.dumps({"encoder": str(args.weights), **{k: round(v, 4) for k, v in encoder.items()}}), flush=True)
    for ckpt in args.checkpoints or [None]:
        if ckpt is not None:
            det.prior.load_state_dict({k: v.float() for k, v in load_file(str(ckpt)).items()})
        det.prior.eval()
        readings, cells = read(det, cases, heads, clean)
        print(json.dumps({"prior": str(ckpt or args.weights), **{k: round(v, 4) for k, v in readings.items()}}), flush=True)
    if args.picture:
        prior = f", prior {ckpt.name}" if ckpt is not None else ""
        draw(cells | encoder_cells, args.picture, f"{args.weights.name}{prior}, on {args.toy.name}")


if __name__ == "__main__":
    main()
