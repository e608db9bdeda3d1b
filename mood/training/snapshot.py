"""Campaign snapshots: a training run, made small enough to commit, and made a run again.

A long training (the CPU weights campaign) outlives the machines it runs on, and only what is
committed survives a machine. :func:`save_snapshot` turns a run folder's resumable checkpoints
(``OUT/train/<kind>/``, :mod:`mood.training.checkpoints`) into a compact snapshot: the latest model
in 16-bit floats, what the step carries (codebook statistics, float32: small; the localiser's weight
average, 16-bit like the model), the run state (step,
CPU time, settings, config; no machine paths) and the holdout rows of the log. The optimiser's
moments (bfloat16) go in too, model by model in the order given, as long as the whole snapshot
stays within ``budget_mb``. A prior's snapshot also holds the frozen VQ-VAE whose codes it learns
(a weights folder, float16), since the VQ-VAE's own run may have moved on.

:func:`restore_snapshot` writes the snapshot back as run folders that ``mood train --resume``
continues: step, schedule and CPU time go on where they were; a model whose moments did not fit
starts a fresh optimiser whose learning rate re-warms (:func:`mood.training.settings.learning_rate`).
The first checkpoint after a restore exports its weights (the best-so-far weights are not part of a
snapshot).

Layout (one folder per region, overwritten each time)::

    SNAP/<kind>/model.safetensors       float16 (floating tensors), others as they are
    SNAP/<kind>/optimizer.safetensors   bfloat16 moments, when they fit the budget
    SNAP/<kind>/carried.safetensors     what the step carries, when the run has it
    SNAP/<kind>/state.json              the checkpoint's state (+ "optimizer" metadata with the moments)
    SNAP/<kind>/log.jsonl               the log's holdout rows (the learning curve)
    SNAP/prior/vqvae/                   the prior's frozen VQ-VAE (card + float16 weights)
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..volumes.volume_io import atomic_write, write_json
from .checkpoints import LEGACY_FILES, checkpoint_dir
from ..detection.weights import load_vqvae, read_card, save_models

KINDS = ("vqvae", "prior", "localiser")
#: what the step carries, stored as: the VQ-VAE's codebook statistics exactly, the localiser's
#: weight average (a whole model) in 16 bits like the model
CARRIED_DTYPE = {"localiser": torch.float16}
#: snapshot files in the order they are written
TENSOR_FILES = ("model", "carried", "optimizer")


def _cast(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors of more than one element as ``dtype`` (scalars such as Adam's step stay exact)."""
    return {k: (v.to(dtype) if v.is_floating_point() and v.numel() > 1 else v).contiguous()
            for k, v in tensors.items()}


def _size(tensors: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in tensors.values())


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def save_snapshot(runs: dict[str, Path], snap: Path, *, budget_mb: float = 15.0,
                  prior_vqvae: Path | None = None) -> dict[str, Any]:
    """Snapshot the latest checkpoints of ``runs`` (kind -> its ``mood train --out`` folder, kinds
    of :data:`KINDS`) into ``snap`` (replaced). ``prior_vqvae``: the frozen VQ-VAE's weights folder
    of the prior run (default: the prior's ``--out``, whose card holds it). Returns what was
    written: per kind, the step, the bytes and whether the moments fit."""
    snap = Path(snap)
    unknown = sorted(set(runs) - set(KINDS))
    if unknown or not runs:
        raise ValueError(f"snapshot kinds must be among {', '.join(KINDS)}, got {sorted(runs)}")
    missing = [f"{runs[k]} ({k})" for k in runs if not (checkpoint_dir(Path(runs[k]), k) / "state.json").is_file()]
    if missing:
        raise ValueError(f"no training checkpoint to snapshot in {', '.join(missing)}")
    staged = {}
    for kind, run in runs.items():
        ckpt = checkpoint_dir(Path(run), kind)
        state = json.loads((ckpt / "state.json").read_text())
        files = state.pop("files", LEGACY_FILES)
        meta = state.pop("optimizer", None)
        parts = {"model": _cast(load_file(str(ckpt / files["model"])), torch.float16)}
        if "carried" in files:
            carried = load_file(str(ckpt / files["carried"]))
            parts["carried"] = _cast(carried, CARRIED_DTYPE[kind]) if kind in CARRIED_DTYPE else carried
        moments = _cast(load_file(str(ckpt / files["optimizer"])), torch.bfloat16) \
            if "optimizer" in files and meta is not None and (ckpt / files["optimizer"]).is_file() else None
        log = [line for line in (ckpt / "log.jsonl").read_text().splitlines()
               if '"holdout_' in line] if (ckpt / "log.jsonl").is_file() else []
        staged[kind] = (state, meta, parts, moments, log)
    budget = budget_mb * 2**20 - sum(_size(t) for (_, _, parts, _, _) in staged.values() for t in parts.values())
    frozen = None  # the prior's frozen VQ-VAE: (card, model), stored in float16
    if "prior" in staged:
        vq_src = Path(prior_vqvae if prior_vqvae is not None else runs["prior"])
        vq_card = read_card(vq_src)
        frozen = (vq_card, load_vqvae(vq_src, vq_card))
        budget -= _size(_cast(frozen[1].state_dict(), torch.float16))
    if budget < 0:
        raise ValueError(f"the models alone exceed the snapshot budget of {budget_mb} MB; "
                         f"snapshot fewer kinds or raise --budget-mb")
    if snap.exists():
        shutil.rmtree(snap)
    summary: dict[str, Any] = {}
    for kind, (state, meta, parts, moments, log) in staged.items():
        folder = snap / kind
        folder.mkdir(parents=True)
        fits = moments is not None and _size(moments) <= budget
        if fits:
            budget -= _size(moments)
            parts = {**parts, "optimizer": moments}
            state["optimizer"] = meta
        for name, tensors in parts.items():
            _write_tensors(folder / f"{name}.safetensors", tensors)
        state["files"] = {name: f"{name}.safetensors" for name in parts}
        write_json(folder / "state.json", state, indent=1)
        (folder / "log.jsonl").write_text("".join(f"{line}\n" for line in log))
        summary[kind] = {"step": state["step"], "cpu_s": state.get("cpu_s"), "moments": fits,
                         "bytes": sum(f.stat().st_size for f in folder.iterdir())}
    if frozen is not None:
        save_models(snap / "prior" / "vqvae", *frozen, None, dtype=torch.float16)
        summary["prior"]["bytes"] += sum(f.stat().st_size for f in (snap / "prior" / "vqvae").iterdir())
    return summary


def restore_snapshot(snap: Path, out: Path, kind: str) -> Path:
    """Write ``snap``'s ``kind`` run into ``out/train/<kind>/`` (refusing to overwrite a run there)
    so that ``mood train <kind> --out out --resume`` continues it; returns the checkpoint folder. For
    the prior, its frozen VQ-VAE goes to ``out/frozen-vqvae`` (pass it as ``--vqvae``)."""
    src, ckpt = Path(snap) / kind, checkpoint_dir(Path(out), kind)
    if not (src / "state.json").is_file():
        raise ValueError(f"{snap} holds no {kind} snapshot")
    if (ckpt / "state.json").is_file():
        raise ValueError(f"{ckpt} already holds a {kind} run; restore into another folder")
    ckpt.mkdir(parents=True, exist_ok=True)
    state = json.loads((src / "state.json").read_text())
    step = int(state["step"])
    files = {}
    for name, rel in state.pop("files").items():
        tensors = load_file(str(src / rel))
        files[name] = f"{name}-{step}.safetensors"
        exact = name == "carried" and kind not in CARRIED_DTYPE
        _write_tensors(ckpt / files[name], tensors if exact else _cast(tensors, torch.float32))
    state["best"] = {}  # the best weights are not in the snapshot: the first checkpoint exports
    shutil.copyfile(src / "log.jsonl", ckpt / "log.jsonl")
    write_json(ckpt / "state.json", {**state, "files": files}, indent=1)
    if kind == "prior":
        shutil.copytree(src / "vqvae", Path(out) / "frozen-vqvae", dirs_exist_ok=True)
    return ckpt


__all__ = ["KINDS", "restore_snapshot", "save_snapshot"]
