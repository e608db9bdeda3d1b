"""Training: volumes -> VQ-VAE weights, then frozen VQ-VAE codes -> PixelSNAIL prior weights.

In: a folder of NIfTI volumes (any grid; converted to challenge form once and cached), a region.
Out: a weights directory (``card.json`` + safetensors shards, loadable with
:func:`mood.weights.load_vqvae` / :func:`mood.weights.load_prior`) and, beside the weights,
``train/<model>/`` with the resumable checkpoint (``model.safetensors``, ``optimizer.safetensors``,
``state.json``; no pickle) and the JSON-lines loss log ``log.jsonl``.

The loops read top to bottom in the nanoGPT manner. DDP is detected from the environment that
``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``): gloo on CPU, NCCL on CUDA; the batch
size is global and split over the processes; only rank 0 logs, evaluates and writes.

Codebook health (the original collapses within minutes, DESIGN.md section 2): the codebook is
initialised from data (k-means on encoder outputs of the first batches), codes unused during the
last ``reseed_every`` steps (counted over all processes) are re-seeded from current encoder
outputs (their Adam moments reset), and the commitment weight is 0.25 instead of 1. The codebook
stays a plain ``nn.Embedding`` parameter trained by the codebook loss, so the architecture and
parameter count are the original's.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from .augment import AugmentConfig, augment
from .config import RegionConfig, narrow, region_preset, tiny_preset
from .networks import VQVAE, PixelSNAIL, vq_losses
from .training_data import SliceBank, fixed_batch, load_banks, provenance, sample_batch, split_files
from .volume_io import atomic_write, write_json
from .weights import Card, load_prior, load_vqvae, read_card, save_models

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# settings
@dataclass(frozen=True)
class TrainSettings:
    """Everything that defines a training run besides the data and the architecture."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    warmup: int = 0
    #: "constant" (the original's) or "cosine": decay from ``lr`` to ``lr / 10`` over ``steps``
    schedule: str = "constant"
    grad_clip: float = 1.0  # clip by value, as the original
    commitment: float = 0.25
    kmeans_batches: int = 4
    kmeans_iters: int = 20
    reseed_every: int = 25
    augment: bool = True
    eval_slices: int = 16  # per holdout volume
    ckpt_every: int = 100
    log_every: int = 10
    seed: int = 0
    channels_last: bool = True
    #: torch.compile the training forward pass: on this 2-core CPU the VQ-VAE step took 1.7 s instead
    #: of 2.1 s after a 60 s compile, the prior 1.6 s instead of 1.7 s after 160 s (batch 8)
    compile: bool = False
    #: stop (with a checkpoint) after this many seconds of this invocation, whatever ``steps`` says
    time_limit: float | None = None


def learning_rate(step: int, base: float, warmup: int, schedule: str = "constant", steps: int = 0) -> float:
    """Learning rate at ``step``: an optional linear warm-up, then constant (the original's) or a
    cosine decay to a tenth of ``base`` at ``steps``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    if schedule == "cosine":
        t = min(1.0, (step - warmup) / max(1, steps - warmup))
        return base * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected constant or cosine")


# --------------------------------------------------------------------------------------------
# distributed
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Initialise DDP from torchrun's environment (if present) and pick this process's device."""
    from .device import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=dev)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=dev)


def _all_reduce(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t)
    return t


# --------------------------------------------------------------------------------------------
# checkpoints (safetensors for tensors, JSON for the rest)
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
    state = json.loads((ckpt_dir / "state.json").read_text())
    model.load_state_dict(load_file(str(ckpt_dir / "model.safetensors")))
    opt_sd = _optimizer_from_files(load_file(str(ckpt_dir / "optimizer.safetensors")), state.pop("optimizer"))
    opt.load_state_dict(opt_sd)
    return state


# --------------------------------------------------------------------------------------------
# codebook health
def code_stats(counts: torch.Tensor) -> tuple[int, float]:
    """Codes in use and perplexity exp(H) of a code histogram (K,)."""
    total = counts.sum().clamp_min(1)
    p = counts.double() / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return int((counts > 0).sum()), float(entropy.exp())


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Centroids (k, D) of points ``x`` (N, D): k-means++ seeding then Lloyd iterations."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    d2 = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / n)
        i = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        centres.append(x[i])
        d2 = torch.minimum(d2, (x - x[i]).pow(2).sum(1))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        cnt = torch.bincount(assign, minlength=k).to(x.dtype).unsqueeze(1)
        c = torch.where(cnt > 0, sums / cnt.clamp_min(1), c)
    return c


def _flat_encodings(z: torch.Tensor) -> torch.Tensor:
    return z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()  # (B*L*L, D)


@torch.no_grad()
def reseed_dead_codes(model: VQVAE, opt: torch.optim.Optimizer, dead: torch.Tensor,
                      encodings: torch.Tensor, generator: torch.Generator, d: Dist) -> int:
    """Replace codes flagged ``dead`` (K,) by random recent encoder outputs (B, D, L, L)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return 0
    w = model.codebook.weight
    if d.master:
        pool = _flat_encodings(encodings)
        pick = torch.randint(pool.shape[0], (n_dead,), generator=generator).to(pool.device)
        noise = torch.randn(n_dead, pool.shape[1], generator=generator).to(pool) * 1e-3 * pool.std()
        w[dead] = (pool[pick] + noise).to(w)
    if d.enabled:
        dist.broadcast(w.data, 0)
    st = opt.state.get(w, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in st:
            st[key][dead] = 0
    return n_dead


# --------------------------------------------------------------------------------------------
# shared plumbing
def _config_for(region: str, tiny: bool) -> RegionConfig:
    return tiny_preset(region) if tiny else region_preset(region)


def _step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """Data and augmentation randomness as a pure function of (seed, rank, step): resumes exactly."""
    return torch.Generator().manual_seed((seed * 1_000_003 + rank * 7919 + step) % (2**63))


def _batch(banks: list[SliceBank], n: int, gen: torch.Generator, aug: AugmentConfig | None,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, coord = sample_batch(banks, n, gen)
    if aug is not None:
        x = augment(x, gen, aug)
    return x.to(device, non_blocking=True), coord.to(device, non_blocking=True)


def _chunks(x: torch.Tensor, coord: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, x.shape[0], size):
        yield x[i : i + size], coord[i : i + size]


class _StopFlag:
    """SIGTERM -> finish the current step, checkpoint, exit cleanly."""

    def __init__(self) -> None:
        self.stop = False
        self._old: Any = None

    def __enter__(self) -> _StopFlag:
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


def _prepare_out(out: Path, kind: str, resume: bool) -> Path:
    ckpt = out / "train" / kind
    if (ckpt / "state.json").is_file() and not resume:
        raise ValueError(f"{ckpt} already holds a {kind} training; pass resume=True (--resume) to "
                         f"continue it or choose another --out")
    ckpt.mkdir(parents=True, exist_ok=True)
    return ckpt


def _log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _round(d: dict[str, Any], nd: int = 5) -> dict[str, Any]:
    return {k: (round(v, nd) if isinstance(v, float) else v) for k, v in d.items()}


def _loop(*, kind: str, region: str, data: Path, out: Path, settings: TrainSettings,
          holdout: list[str] | None, resume: bool, threads: int | None, device: str,
          config: RegionConfig, model: nn.Module,
          init: Callable[[list[SliceBank], Dist], None],
          step_fn: Callable[..., dict[str, float]], evaluate: Callable[..., dict[str, float]],
          export: Callable[[dict[str, Any]], None], cache_dir: Path | None,
          volume_shape: tuple[int, int, int] | None, select: str) -> Path:
    """The loop both models share: data, DDP, optimiser, resume, log, checkpoints, signals.

    Every checkpoint is resumable (latest state); the weights in ``out`` are exported only when the
    holdout metric ``select`` (lower is better) improves, so ``out`` holds the best checkpoint by
    holdout loss. Without a holdout every checkpoint is exported.
    """
    if threads:
        torch.set_num_threads(threads)
    d = setup_distributed(device)
    if settings.batch_size % d.world:
        raise ValueError(f"batch size {settings.batch_size} is not divisible by {d.world} processes")
    out = Path(out)
    train_files, hold_files = split_files(Path(data), holdout)  # a bad data folder fails before out is touched
    ckpt = _prepare_out(out, kind, resume) if d.master else out / "train" / kind
    if d.enabled:
        dist.barrier()
    torch.manual_seed(settings.seed + d.rank)
    train_banks, hold_banks = load_banks(Path(data), config, holdout, cache_dir,
                                           tuple(volume_shape) if volume_shape else None)
    aug = config.augmentation if settings.augment else None

    model.to(d.device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    step, elapsed, cpu = 0, 0.0, 0.0  # cpu: this process's CPU seconds in steps, over all threads
    best: dict[str, Any] = {}  # {"step": ..., select: ...} of the exported checkpoint
    resumed = resume and (ckpt / "state.json").is_file()
    if resumed:
        state = load_checkpoint(ckpt, model, opt)
        if RegionConfig.from_dict(state["config"]) != config:
            raise ValueError(f"{ckpt}: checkpoint was trained with another architecture "
                             f"(tiny={state['settings'].get('tiny')}); use the same settings")
        step, elapsed, cpu = int(state["step"]), float(state["elapsed_s"]), float(state.get("cpu_s", 0.0))
        best = state.get("best", {})
        model.to(d.device)
    else:
        init(train_banks, d)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None) \
        if d.enabled else model
    if settings.compile:
        ddp = torch.compile(ddp)  # same parameters: checkpoints and evaluation use the plain module

    run = {"kind": kind, "region": region,
           "data": {"folder": Path(data).resolve().name,
                    "sha256": provenance(train_files + hold_files, Path(data)) if d.master else {}},
           "settings": asdict(settings),
           "tiny": config.vqvae.channels != region_preset(region).vqvae.channels,
           "train_files": [f.name for f in train_files], "holdout_files": [f.name for f in hold_files],
           "world_size": d.world}
    log_path = ckpt / "log.jsonl"
    eval_x = fixed_batch(hold_banks, settings.eval_slices) if hold_banks else None
    last: dict[str, Any] = {}

    def checkpoint(final: bool = False) -> None:
        nonlocal last, best
        if not d.master:
            return
        metrics = evaluate(model, eval_x, d) if eval_x is not None else {}
        last = {**last, **{f"holdout_{k}": v for k, v in metrics.items()}}
        improved = select not in metrics or not best or metrics[select] < best[select]
        if improved:
            best = {"step": step, **({select: metrics[select]} if select in metrics else {})}
        _log(log_path, _round({"step": step, "event": "final" if final else "checkpoint",
                               "elapsed_s": elapsed, "cpu_s": cpu, **{f"holdout_{k}": v for k, v in metrics.items()},
                               "exported": improved}))
        save_checkpoint(ckpt, model, opt, {"step": step, "elapsed_s": elapsed, "cpu_s": cpu, "config": config.to_dict(),
                                           "settings": {**asdict(settings), "tiny": run["tiny"]},
                                           "best": best})
        if improved:
            export({**run, "steps": step, "elapsed_s": round(elapsed, 1), "cpu_s": round(cpu, 1), "last": _round(last),
                    "selected_by": f"lowest holdout {select}" if select in metrics else "last step"})

    bar = tqdm(total=settings.steps, initial=step, desc=f"{region} {kind}", disable=not d.master,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
    per_rank = settings.batch_size // d.world
    started = time.perf_counter()
    try:
        with _StopFlag() as flag:
            while step < settings.steps and not flag.stop:
                t0, c0 = time.perf_counter(), time.process_time()
                lr = learning_rate(step, settings.lr, settings.warmup, settings.schedule, settings.steps)
                for group in opt.param_groups:
                    group["lr"] = lr
                gen = _step_generator(settings.seed, d.rank, step)
                x, coord = _batch(train_banks, per_rank, gen, aug, d.device)
                model.train()
                metrics = step_fn(ddp=ddp, model=model, opt=opt, x=x, coord=coord, step=step, d=d, gen=gen)
                step += 1
                dt = time.perf_counter() - t0
                elapsed += dt
                cpu += time.process_time() - c0
                last = {**last, **metrics}
                if d.master and (step % settings.log_every == 0 or step == 1):
                    _log(log_path, _round({"step": step, "lr": lr, **metrics, "step_s": dt,
                                           "elapsed_s": elapsed, "cpu_s": cpu}))
                    bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "codes_used", "perplexity")})
                bar.update(1)
                if step % settings.ckpt_every == 0 and step < settings.steps:
                    checkpoint()
                if settings.time_limit is not None and time.perf_counter() - started > settings.time_limit:
                    flag.stop = True
                # a stop request on any rank stops every rank at the same step
                if d.enabled:
                    stop = torch.tensor([float(flag.stop)], device=d.device)
                    flag.stop = bool(_all_reduce(stop, d).item() > 0)
    except KeyboardInterrupt:
        if d.master:
            log.warning("interrupted at step %d: writing a checkpoint", step)
    finally:
        bar.close()
        checkpoint(final=True)
        if d.enabled:
            dist.barrier()
            dist.destroy_process_group()
    return out


# --------------------------------------------------------------------------------------------
# VQ-VAE
def train_vqvae(region: str, data: Path, out: Path, *, steps: int, batch_size: int, lr: float = 1e-4,
                holdout: list[str] | None = None, resume: bool = False, tiny: bool = False,
                device: str = "auto", seed: int = 0, ckpt_every: int = 100, log_every: int = 10,
                threads: int | None = None, cache_dir: Path | None = None,
                volume_shape: tuple[int, int, int] | None = None, time_limit: float | None = None,
                settings: TrainSettings | None = None, init_from: Path | None = None,
                compile: bool = False, width: float = 1.0, schedule: str = "constant",
                warmup: int = 0) -> Path:
    """Train the slice VQ-VAE of ``region`` on the volumes in ``data``; returns the weights dir ``out``.

    ``out`` receives ``card.json`` + ``vqvae-*.safetensors`` whenever the holdout loss improves,
    and ``train/vqvae/`` with the resumable checkpoint and ``log.jsonl``. ``init_from``: a weights
    folder to start from (fine-tuning; fresh optimiser) instead of a k-means-initialised codebook.
    ``width`` scales the VQ-VAE's channels (:func:`mood.config.narrow`).
    """
    config = narrow(_config_for(region, tiny), width)
    settings = replace(settings or TrainSettings(), steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                       ckpt_every=ckpt_every, log_every=log_every, time_limit=time_limit, compile=compile,
                       schedule=schedule, warmup=warmup)
    torch.manual_seed(seed)  # identical initial weights on every process
    model = VQVAE(config.vqvae)
    out = Path(out)
    cache_dir = cache_dir or _default_cache(out)
    counts_window = torch.zeros(config.vqvae.n_codes, dtype=torch.float64)
    state = {"reseeded": 0}

    def init(banks: list[SliceBank], d: Dist) -> None:
        """Data-based codebook: k-means on encoder outputs of a few training batches."""
        if init_from is not None:
            model.load_state_dict(load_vqvae(init_from, _init_card(init_from, config)).state_dict())
            return
        gen = torch.Generator().manual_seed(seed + 12345)
        feats = []
        model.train()
        with torch.no_grad():
            for _ in range(settings.kmeans_batches):
                x, coord = _batch(banks, settings.batch_size, gen, None, d.device)
                feats.append(_flat_encodings(model.encode(x, coord).encodings))
        pool = torch.cat(feats)
        centres = kmeans(pool, config.vqvae.n_codes, settings.kmeans_iters, gen)
        model.codebook.weight.data.copy_(centres.to(model.codebook.weight))

    def step_fn(*, ddp: nn.Module, model: VQVAE, opt: torch.optim.Optimizer, x: torch.Tensor,
                coord: torch.Tensor, step: int, d: Dist, gen: torch.Generator) -> dict[str, float]:
        nonlocal counts_window
        recon, q = ddp(x, coord)
        losses = vq_losses(x, recon.contiguous(), q, model.codebook.weight, settings.commitment)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            nn.utils.clip_grad_value_(model.parameters(), settings.grad_clip)
        opt.step()
        counts = torch.bincount(q.codes.flatten(), minlength=config.vqvae.n_codes).double()
        counts = _all_reduce(counts, d).cpu()
        counts_window = counts_window.to(counts) + counts
        used, ppl = code_stats(counts)
        reseeded = 0
        if settings.reseed_every and (step + 1) % settings.reseed_every == 0:
            reseeded = reseed_dead_codes(model, opt, (counts_window == 0).to(d.device), q.encodings, gen, d)
            state["reseeded"] += reseeded
            counts_window = torch.zeros_like(counts_window)
        out_m = {k: float(v.detach()) for k, v in losses.items()}
        return {"loss": float(loss.detach()), **out_m, "codes_used": used, "perplexity": ppl,
                "reseeded": reseeded, "reseeded_total": state["reseeded"]}

    def export(info: dict[str, Any]) -> None:
        if init_from is not None:
            info = {**info, "init_from": _init_note(init_from, "vqvae")}
        card = Card(config=config, info={"training": {"vqvae": {**info, "codebook": CODEBOOK_REMEDY}}})
        save_models(out, card, model, None)

    return _loop(kind="vqvae", region=region, data=data, out=out, settings=settings, holdout=holdout,
                 resume=resume, threads=threads, device=device, config=config, model=model, init=init,
                 step_fn=step_fn, evaluate=lambda m, ev, d: evaluate_vqvae(m, ev, d, settings),
                 export=export, cache_dir=cache_dir, volume_shape=volume_shape, select="recon")


CODEBOOK_REMEDY = ("data-based initialisation (k-means++ then Lloyd on encoder outputs of the first "
                   "batches) + re-seeding codes unused over the last N steps from current encoder "
                   "outputs (Adam moments reset) + commitment weight 0.25 (original: 1)")


@torch.no_grad()
def evaluate_vqvae(model: VQVAE, ev: tuple[torch.Tensor, torch.Tensor], d: Dist,
                   settings: TrainSettings) -> dict[str, float]:
    """Holdout L1 reconstruction, VQ terms, codes in use and perplexity on fixed slices (eval mode)."""
    was = model.training
    model.eval()
    total: dict[str, float] = {}
    counts = torch.zeros(model.config.n_codes, dtype=torch.float64)
    n = 0
    for x, coord in _chunks(*ev, settings.batch_size):
        x, coord = x.to(d.device), coord.to(d.device)
        recon, q = model(x, coord)
        losses = vq_losses(x, recon, q, model.codebook.weight, settings.commitment)
        for k, v in losses.items():
            total[k] = total.get(k, 0.0) + float(v) * x.shape[0]
        counts += torch.bincount(q.codes.flatten().cpu(), minlength=model.config.n_codes).double()
        n += x.shape[0]
    model.train(was)
    used, ppl = code_stats(counts)
    return {**{k: v / n for k, v in total.items()}, "codes_used": used, "perplexity": ppl}


# --------------------------------------------------------------------------------------------
# prior
def train_prior(region: str, data: Path, out: Path, *, vqvae: Path, steps: int, batch_size: int,
                lr: float = 1e-4, holdout: list[str] | None = None, resume: bool = False,
                tiny: bool = False, device: str = "auto", seed: int = 0, ckpt_every: int = 100,
                log_every: int = 10, threads: int | None = None, cache_dir: Path | None = None,
                volume_shape: tuple[int, int, int] | None = None, time_limit: float | None = None,
                settings: TrainSettings | None = None, init_from: Path | None = None,
                compile: bool = False, schedule: str = "constant", warmup: int = 0) -> Path:
    """Train the PixelSNAIL prior on the codes of the frozen VQ-VAE in weights dir ``vqvae``.

    The architecture comes from ``vqvae``'s card (``tiny`` must agree with it). ``out`` becomes a
    complete weights directory (both models; calibration reset) plus ``train/prior/``, exported
    whenever the holdout NLL improves. ``init_from``: a weights folder whose prior to start from
    (it must have been trained on this VQ-VAE's codes to be of use).
    """
    vq_card = read_card(vqvae)
    config = vq_card.config
    if config.region != region:
        raise ValueError(f"{vqvae} holds a {config.region} VQ-VAE, not {region}")
    if tiny != (config.prior == tiny_preset(region, config.vqvae.image_size).prior):
        raise ValueError(f"tiny={tiny} disagrees with the VQ-VAE in {vqvae}")
    settings = replace(settings or TrainSettings(), steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                       ckpt_every=ckpt_every, log_every=log_every, time_limit=time_limit, compile=compile,
                       schedule=schedule, warmup=warmup)
    torch.manual_seed(seed)
    vq = load_vqvae(vqvae, vq_card)
    for p in vq.parameters():
        p.requires_grad_(False)
    model = PixelSNAIL(config.prior)
    out = Path(out)
    cache_dir = cache_dir or _default_cache(out)
    vq_info = vq_card.info.get("training", {}).get("vqvae", {})

    def init(banks: list[SliceBank], d: Dist) -> None:
        if init_from is not None:
            model.load_state_dict(load_prior(init_from, _init_card(init_from, config)).state_dict())

    def codes_of(x: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        vq.eval()
        with torch.no_grad():
            return vq.encode(x, coord).codes

    def step_fn(*, ddp: nn.Module, model: PixelSNAIL, opt: torch.optim.Optimizer, x: torch.Tensor,
                coord: torch.Tensor, step: int, d: Dist, gen: torch.Generator) -> dict[str, float]:
        vq.to(d.device)
        codes = codes_of(x, coord)
        logits = ddp(codes, coord)
        loss = F.cross_entropy(logits, codes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            nn.utils.clip_grad_value_(model.parameters(), settings.grad_clip)
        opt.step()
        counts = _all_reduce(torch.bincount(codes.flatten(), minlength=config.prior.n_codes).double(), d)
        used, ppl = code_stats(counts.cpu())
        return {"loss": float(loss.detach()), "codes_used": used, "perplexity": ppl}

    @torch.no_grad()
    def evaluate(m: PixelSNAIL, ev: tuple[torch.Tensor, torch.Tensor], d: Dist) -> dict[str, float]:
        was = m.training
        m.eval()
        vq.to(d.device)
        nll, n = 0.0, 0
        for x, coord in _chunks(*ev, settings.batch_size):
            x, coord = x.to(d.device), coord.to(d.device)
            codes = codes_of(x, coord)
            nll += float(F.cross_entropy(m(codes, coord), codes, reduction="sum"))
            n += codes.numel()
        m.train(was)
        return {"nll": nll / max(n, 1)}

    def export(info: dict[str, Any]) -> None:
        if init_from is not None:
            info = {**info, "init_from": _init_note(init_from, "prior")}
        card = Card(config=config, info={**vq_card.info,
                                         "training": {"vqvae": vq_info, "prior": {**info, "vqvae_from": _weights_note(vqvae, "vqvae")}}})
        save_models(out, card, vq, model)

    return _loop(kind="prior", region=region, data=data, out=out, settings=settings, holdout=holdout,
                 resume=resume, threads=threads, device=device, config=config, model=model, init=init,
                 step_fn=step_fn, evaluate=evaluate, export=export, cache_dir=cache_dir, volume_shape=volume_shape,
                 select="nll")


def _init_card(init_from: Path, config: RegionConfig) -> Card:
    card = read_card(init_from)
    if card.config != config:
        raise ValueError(f"--init-from {init_from}: its architecture differs from the one being trained")
    return card


def _weights_note(folder: Path, kind: str) -> dict[str, Any]:
    """A weights folder's ``kind`` model by name and checksums (no machine path)."""
    folder = Path(folder)
    return {"weights": folder.resolve().name,
            "sha256": provenance(sorted(folder.glob(f"{kind}-*.safetensors")), folder)}


def _init_note(init_from: Path, kind: str) -> dict[str, Any]:
    """Where a fine-tuned model started: its weights and that model's own training record."""
    earlier = read_card(init_from).info.get("training", {}).get(kind, {})
    return {**_weights_note(init_from, kind), "steps": earlier.get("steps"),
            "init_from": earlier.get("init_from")}


def _default_cache(out: Path) -> Path:
    env = os.environ.get("MOOD_CACHE")
    return Path(env) if env else Path(out) / "train" / "cache"


# --------------------------------------------------------------------------------------------
# random weights in the real format
def init_weights(region: str, out: Path, tiny: bool = False, seed: int = 0) -> Path:
    """Write randomly initialised models (real card and shard format) to ``out``; for tests and smoke runs."""
    config = _config_for(region, tiny)
    torch.manual_seed(seed)
    vq, prior = VQVAE(config.vqvae).eval(), PixelSNAIL(config.prior).eval()
    card = Card(config=config, info={"random_init": True, "seed": seed,
                                     "note": "random weights: for tests and smoke runs only"})
    save_models(out, card, vq, prior)
    return Path(out)


def export_weights(src: Path, dst: Path, dtype: torch.dtype = torch.float32,
                   info: dict[str, Any] | None = None) -> Path:
    """Copy a weights directory (card + both models) to ``dst``, stored as ``dtype``; ``info`` is merged
    into the card's ``info``. Shards stay below the size limit of :mod:`mood.weights`."""
    card = read_card(src)
    vq, prior = load_vqvae(src, card), load_prior(src, card)
    card.info = {**card.info, **(info or {}), "storage_dtype": str(dtype).replace("torch.", "")}
    save_models(dst, card, vq, prior, dtype=dtype)
    return Path(dst)


__all__ = [
    "CODEBOOK_REMEDY",
    "TrainSettings",
    "code_stats",
    "evaluate_vqvae",
    "export_weights",
    "init_weights",
    "kmeans",
    "learning_rate",
    "load_checkpoint",
    "reseed_dead_codes",
    "save_checkpoint",
    "setup_distributed",
    "train_prior",
    "train_vqvae",
]
