"""Checkpoints and the run folder: model + optimiser + run state on disk, and the loss log.

Layout (read by every version of ``mood train``; ``--resume`` continues from it)::

    OUT/train/<kind>/model.safetensors       the model's state
    OUT/train/<kind>/optimizer.safetensors   the optimiser's tensors, flattened
    OUT/train/<kind>/state.json              step, elapsed_s, cpu_s, config, settings, best, and
                                             "optimizer": param_groups, shapes, scalars
    OUT/train/<kind>/log.jsonl               one JSON line per logged step and per checkpoint

Safetensors for tensors, JSON for the rest, no pickle; every file is replaced atomically.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..volumes.volume_io import atomic_write, write_json


def _optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, shapes, scalars = {}, {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            key = f"{pid}.{k}"
            if torch.is_tensor(v):
                shapes[key] = list(v.shape)
                tensors[key] = v.detach().cpu().reshape(-1).contiguous()
            else:
                scalars[key] = v
    return tensors, {"param_groups": sd["param_groups"], "shapes": shapes, "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = t.reshape(meta["shapes"][key])
    for key, v in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(ckpt_dir: Path, model: nn.Module, opt: torch.optim.Optimizer,
                    state: dict[str, Any]) -> None:
    """Atomically write model, optimiser and run state (step, settings, config, timing)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors, meta = _optimizer_to_files(opt)
    model_sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for name, obj in (("model.safetensors", model_sd), ("optimizer.safetensors", tensors)):
        atomic_write(ckpt_dir / name, lambda tmp, obj=obj: save_file(obj, str(tmp)))
    write_json(ckpt_dir / "state.json", {**state, "optimizer": meta}, indent=1)


def load_checkpoint(ckpt_dir: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Load model and optimiser from ``ckpt_dir`` in place; returns the run state without the optimiser."""
    state = json.loads((ckpt_dir / "state.json").read_text())
    model.load_state_dict(load_file(str(ckpt_dir / "model.safetensors")))
    opt_sd = _optimizer_from_files(load_file(str(ckpt_dir / "optimizer.safetensors")), state.pop("optimizer"))
    opt.load_state_dict(opt_sd)
    return state


def checkpoint_dir(out: Path, kind: str) -> Path:
    """``out/train/<kind>``: where a run of ``kind`` (vqvae, prior) keeps its checkpoint and log."""
    return Path(out) / "train" / kind


def prepare_run_folder(out: Path, kind: str, resume: bool) -> Path:
    """Create the checkpoint folder; refuse to start over a run of the same kind unless ``resume``."""
    ckpt = checkpoint_dir(out, kind)
    if (ckpt / "state.json").is_file() and not resume:
        raise ValueError(f"{ckpt} already holds a {kind} training; pass resume=True (--resume) to "
                         f"continue it or choose another --out")
    ckpt.mkdir(parents=True, exist_ok=True)
    return ckpt


def append_log(path: Path, record: dict[str, Any], digits: int = 5) -> None:
    """One line of ``log.jsonl``: ``record`` with its floats rounded to ``digits``."""
    with open(path, "a") as f:
        f.write(json.dumps(rounded(record, digits)) + "\n")


def rounded(record: dict[str, Any], digits: int = 5) -> dict[str, Any]:
    """``record`` with its float values rounded to ``digits`` (log lines and cards)."""
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in record.items()}


__all__ = ["append_log", "checkpoint_dir", "load_checkpoint", "prepare_run_folder", "rounded", "save_checkpoint"]
