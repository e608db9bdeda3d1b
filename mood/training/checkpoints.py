"""Checkpoints and the run folder: model + optimiser + run state on disk, and the loss log.

Layout (``--resume`` continues from it)::

    OUT/train/<kind>/model-<step>.safetensors      the model's state
    OUT/train/<kind>/optimizer-<step>.safetensors  the optimiser's tensors, flattened
    OUT/train/<kind>/carried-<step>.safetensors    what the step carries (e.g. codebook statistics)
    OUT/train/<kind>/state.json                    step, elapsed_s, cpu_s, config, settings, best,
                                                   "files" (the three above) and "optimizer":
                                                   param_groups, shapes, scalars
    OUT/train/<kind>/log.jsonl                     one JSON line per logged step and per checkpoint

Safetensors for tensors, JSON for the rest, no pickle. The tensor files of a checkpoint are
written first, each atomically, under names of their step; ``state.json``, replaced atomically,
then names them, and only after that are the previous step's files removed. So a process killed
at any moment (SIGKILL, power) leaves a whole checkpoint: the new one or the one before. Checkpoints
of earlier versions (``model.safetensors``, ``optimizer.safetensors``, no "files") still load. A
checkpoint without an optimiser file (a campaign snapshot) loads with a fresh optimiser.
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


#: files of checkpoints written before "files" was recorded
LEGACY_FILES = {"model": "model.safetensors", "optimizer": "optimizer.safetensors"}


def save_checkpoint(ckpt_dir: Path, model: nn.Module, opt: torch.optim.Optimizer,
                    state: dict[str, Any], carried: dict[str, torch.Tensor] | None = None) -> None:
    """Write model, optimiser, ``carried`` tensors and run state (step, settings, config, timing):
    tensor files first, then ``state.json`` as the one commit point (see the module's notes)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors, meta = _optimizer_to_files(opt)
    model_sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    step = int(state["step"])
    parts = {"model": model_sd, "optimizer": tensors, **({"carried": carried} if carried else {})}
    files = {}
    for name, obj in parts.items():
        files[name] = f"{name}-{step}.safetensors"
        atomic_write(ckpt_dir / files[name], lambda tmp, obj=obj: save_file(obj, str(tmp)))
    write_json(ckpt_dir / "state.json", {**state, "files": files, "optimizer": meta}, indent=1)
    keep = set(files.values())
    for old in ckpt_dir.glob("*.safetensors"):
        if old.name not in keep and old.name.split("-")[0].split(".")[0] in ("model", "optimizer", "carried"):
            old.unlink(missing_ok=True)


def load_checkpoint(ckpt_dir: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Load model and optimiser from ``ckpt_dir`` in place; returns the run state without the
    optimiser's metadata, with ``carried`` (the carried tensors, {} if none) and
    ``optimizer_restored`` (False when the checkpoint has no optimiser: it starts afresh)."""
    state = json.loads((ckpt_dir / "state.json").read_text())
    files = state.pop("files", LEGACY_FILES)
    model.load_state_dict(load_file(str(ckpt_dir / files["model"])))
    meta = state.pop("optimizer", None)
    restored = "optimizer" in files and meta is not None and (ckpt_dir / files["optimizer"]).is_file()
    if restored:
        opt.load_state_dict(_optimizer_from_files(load_file(str(ckpt_dir / files["optimizer"])), meta))
    state["carried"] = load_file(str(ckpt_dir / files["carried"])) if "carried" in files else {}
    state["optimizer_restored"] = restored
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


def append_log(path: Path, record: dict[str, Any], digits: int = 6) -> None:
    """One line of ``log.jsonl``: ``record`` with its floats rounded to ``digits`` significant digits."""
    with open(path, "a") as f:
        f.write(json.dumps(rounded(record, digits)) + "\n")


def truncate_log(path: Path, step: int) -> None:
    """Drop from ``log.jsonl`` the rows of steps after ``step`` and a torn last line: what a run
    killed after its last checkpoint logged and a resumed run will log again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(row.get("step", 0)) <= step:
            kept.append(line)
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(f"{line}\n" for line in kept)))


def rounded(record: dict[str, Any], digits: int = 6) -> dict[str, Any]:
    """``record`` with its float values rounded to ``digits`` significant digits (log lines and
    cards): a warm-up's learning rate of 1e-6 keeps its value, a CPU time of hours its seconds."""
    return {k: (float(f"{v:.{digits}g}") if isinstance(v, float) else v) for k, v in record.items()}


__all__ = ["LEGACY_FILES", "append_log", "checkpoint_dir", "load_checkpoint", "prepare_run_folder", "rounded", "save_checkpoint",
           "truncate_log"]
