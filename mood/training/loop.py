"""The training loop both models share: data, DDP, optimiser, resume, log, checkpoints, signals.

In: a :class:`Recipe` (what differs between the VQ-VAE and the prior: the model, how it starts,
one step, the holdout evaluation, the export) and the run's settings. Out: the weights folder,
exported whenever the holdout metric improves, and ``OUT/train/<kind>/`` with the resumable
checkpoint and the log (:mod:`mood.training.checkpoints`).

Read top to bottom in the nanoGPT manner: set up, resume or initialise, then per step the learning
rate, a batch drawn as a pure function of (seed, rank, step) on the training device
(:mod:`mood.training.batches`), the model's step, the log line and
every ``ckpt_every`` steps a checkpoint. SIGTERM, Ctrl-C and ``time_limit`` finish the step and
write a final checkpoint. Under torchrun the batch size is global and split over the processes;
only rank 0 logs, evaluates and writes.
"""
from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..common.device import cpu_has_bfloat16
from ..config import RegionConfig, is_tiny, networks_of
from .batches import BatchStream
from .checkpoints import (append_log, checkpoint_dir, load_checkpoint, prepare_run_folder, rounded, save_checkpoint,
                          truncate_log)
from .data import SliceBank, fixed_batch, load_banks, provenance, split_files, tissue_planes
from .distributed import Dist, all_reduce, barrier, setup_distributed, teardown
from .settings import TrainSettings, learning_rate
from .steps import Batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """What one model's training brings to the loop."""

    kind: str  # "vqvae", "prior" or "localiser": the folder OUT/train/<kind>
    config: RegionConfig  # the architecture (checked against a checkpoint on resume)
    model: nn.Module
    #: the holdout metric (lower is better) that decides which checkpoint's weights are exported
    select: str
    init: Callable[[list[SliceBank], Dist], None]  # a fresh start (not called on resume)
    step: Callable[..., dict[str, float]]  # step(batch, ddp=, model=, opt=, d=) -> metrics
    evaluate: Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor], Dist], dict[str, float]]
    export: Callable[[dict[str, Any]], None]  # writes the weights folder with this training record
    #: what the step carries between steps besides model and optimiser (state_dict/load_state_dict),
    #: saved with every checkpoint
    carried: Any = None
    #: the side of the training slices in pixels (default: the VQ-VAE's)
    image_size: int | None = None


@dataclass
class Progress:
    """Where a run stands: what a checkpoint stores besides the tensors."""

    step: int = 0
    elapsed: float = 0.0  # seconds in steps
    cpu: float = 0.0  # this process's CPU seconds in steps, over all threads
    best: dict[str, Any] = field(default_factory=dict)  # {"step": ..., select: ...} of the exported checkpoint
    last: dict[str, Any] = field(default_factory=dict)  # latest step metrics and holdout metrics
    #: the step from which a fresh optimiser (a resumed snapshot) re-warms its learning rate, if any
    rewarm_from: int | None = None


class StopFlag:
    """SIGTERM -> finish the current step, checkpoint, exit cleanly."""

    def __init__(self) -> None:
        self.stop = False
        self._old: Any = None

    def __enter__(self) -> StopFlag:
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.stop = True

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _checkpoint(p: Progress, final: bool, *, recipe: Recipe, settings: TrainSettings, run: dict[str, Any],
                ckpt: Path, opt: torch.optim.Optimizer, eval_x: tuple[torch.Tensor, torch.Tensor] | None,
                d: Dist) -> None:
    """Evaluate, log, write the resumable checkpoint, and export the weights if the holdout improved."""
    if not d.master:
        return
    select = recipe.select
    metrics = recipe.evaluate(recipe.model, eval_x, d) if eval_x is not None else {}
    p.last = {**p.last, **{f"holdout_{k}": v for k, v in metrics.items()}}
    improved = select not in metrics or not p.best or metrics[select] < p.best[select]
    if improved:
        p.best = {"step": p.step, **({select: metrics[select]} if select in metrics else {})}
    append_log(ckpt / "log.jsonl", {"step": p.step, "event": "final" if final else "checkpoint",
                                    "elapsed_s": p.elapsed, "cpu_s": p.cpu,
                                    **{f"holdout_{k}": v for k, v in metrics.items()}, "exported": improved})
    save_checkpoint(ckpt, recipe.model, opt, {"step": p.step, "elapsed_s": p.elapsed, "cpu_s": p.cpu,
                                              "config": recipe.config.to_dict(),
                                              "settings": {**asdict(settings), "tiny": run["tiny"]},
                                              "best": p.best, "rewarm_from": p.rewarm_from},
                    recipe.carried.state_dict() if recipe.carried is not None else None)
    if improved:
        recipe.export({**run, "steps": p.step, "elapsed_s": round(p.elapsed, 1), "cpu_s": round(p.cpu, 1),
                       "last": rounded(p.last),
                       "selected_by": f"lowest holdout {select}" if select in metrics else "last step"})


def run_loop(recipe: Recipe, *, region: str, data: Path, out: Path, settings: TrainSettings,
             holdout: list[str] | None, resume: bool, threads: int | None, device: str,
             cache_dir: Path, volume_shape: tuple[int, int, int] | None) -> Path:
    """Train ``recipe.model`` on the volumes in ``data``; returns ``out``.

    Every checkpoint is resumable (latest state); the weights in ``out`` are exported only when the
    holdout metric ``recipe.select`` (lower is better) improves, so ``out`` holds the best
    checkpoint by holdout loss. Without a holdout every checkpoint is exported.
    """
    if threads:
        torch.set_num_threads(threads)
    d = setup_distributed(device)
    if settings.bf16 and d.device.type == "cpu" and not cpu_has_bfloat16():
        log.warning("--bf16 on a CPU without bfloat16 units: autocast is emulated and steps take several "
                    "times as long as in float32 (7 to 10x measured on an AVX2 EPYC); leave --bf16 out here")
    if settings.batch_size % d.world:
        raise ValueError(f"batch size {settings.batch_size} is not divisible by {d.world} processes")
    out, data, config, model = Path(out), Path(data), recipe.config, recipe.model
    train_files, hold_files = split_files(data, holdout)  # a bad data folder fails before out is touched
    ckpt = prepare_run_folder(out, recipe.kind, resume) if d.master else checkpoint_dir(out, recipe.kind)
    barrier(d)
    torch.manual_seed(settings.seed + d.rank)
    train_banks, hold_banks = load_banks(data, config, holdout, cache_dir,
                                         tuple(volume_shape) if volume_shape else None, recipe.image_size)
    aug = (replace(config.augmentation, remap=settings.intensity_curve, resolution=settings.resolution)
           if settings.augment else None)
    planes = [tissue_planes(b, config.background) for b in train_banks] if settings.planes == "tissue" else None
    # the training planes in the device's memory; batches made there (the next while a step runs)
    batches = BatchStream(train_banks, settings.batch_size // d.world, aug, d.device, settings.seed, d.rank,
                          planes=planes, crop=settings.crop)
    train_banks = batches.banks

    model.to(d.device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    p = Progress()
    if resume and (ckpt / "state.json").is_file():
        state = load_checkpoint(ckpt, model, opt)
        if networks_of(RegionConfig.from_dict(state["config"])) != networks_of(config):
            raise ValueError(f"{ckpt}: checkpoint was trained with another architecture "
                             f"(tiny={state['settings'].get('tiny')}); use the same settings")
        p = Progress(step=int(state["step"]), elapsed=float(state["elapsed_s"]),
                     cpu=float(state.get("cpu_s", 0.0)), best=state.get("best", {}),
                     rewarm_from=state.get("rewarm_from") if state["optimizer_restored"] else int(state["step"]))
        if recipe.carried is not None and state["carried"]:
            recipe.carried.load_state_dict(state["carried"])
        if d.master:
            truncate_log(ckpt / "log.jsonl", p.step)  # rows of steps after the checkpoint are replayed
        model.to(d.device)
    else:
        recipe.init(train_banks, d)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None) \
        if d.enabled else model
    if settings.compile:
        ddp = torch.compile(ddp)  # same parameters: checkpoints and evaluation use the plain module

    run = {"kind": recipe.kind, "region": region,
           "data": {"folder": data.resolve().name,
                    "sha256": provenance(train_files + hold_files, data) if d.master else {}},
           "settings": asdict(settings),
           "tiny": is_tiny(config),
           "train_files": [f.name for f in train_files], "holdout_files": [f.name for f in hold_files],
           "world_size": d.world}
    eval_x = fixed_batch(hold_banks, settings.eval_slices) if hold_banks else None
    checkpoint = dict(recipe=recipe, settings=settings, run=run, ckpt=ckpt, opt=opt, eval_x=eval_x, d=d)

    bar = tqdm(total=settings.steps, initial=p.step, desc=f"{region} {recipe.kind}", disable=not d.master,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
    started = time.perf_counter()
    try:
        with StopFlag() as flag:
            while p.step < settings.steps and not flag.stop:
                t0, c0 = time.perf_counter(), time.process_time()
                lr = learning_rate(p.step, settings.lr, settings.warmup, settings.schedule, settings.steps,
                                   p.rewarm_from)
                for group in opt.param_groups:
                    group["lr"] = lr
                gen, x, coord = batches(p.step)  # (B, S, S) or cropped, (B, 1): a pure function of (seed, rank, step)
                model.train()
                metrics = recipe.step(Batch(x, coord, p.step, gen), ddp=ddp, model=model, opt=opt, d=d)
                p.step += 1
                dt = time.perf_counter() - t0
                p.elapsed += dt
                p.cpu += time.process_time() - c0
                p.last = {**p.last, **metrics}
                if d.master and (p.step % settings.log_every == 0 or p.step == 1):
                    append_log(ckpt / "log.jsonl", {"step": p.step, "lr": lr, **metrics, "step_s": dt,
                                                    "elapsed_s": p.elapsed, "cpu_s": p.cpu})
                    bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "codes_used", "perplexity")})
                bar.update(1)
                if p.step % settings.ckpt_every == 0 and p.step < settings.steps:
                    _checkpoint(p, False, **checkpoint)
                if settings.time_limit is not None and time.perf_counter() - started > settings.time_limit:
                    flag.stop = True
                # a stop request on any rank stops every rank at the same step
                if d.enabled:
                    stop = torch.tensor([float(flag.stop)], device=d.device)
                    flag.stop = bool(all_reduce(stop, d).item() > 0)
    except KeyboardInterrupt:
        if d.master:
            log.warning("interrupted at step %d: writing a checkpoint", p.step)
    finally:
        batches.close()
        bar.close()
        _checkpoint(p, True, **checkpoint)
        teardown(d)
    return out


__all__ = ["Progress", "Recipe", "StopFlag", "run_loop"]
