"""Training volumes -> random normalised slices with their relative positions.

In: a folder of volume files (NIfTI, NRRD, MHA) on any grid. Each is brought into challenge form once
(:func:`mood.volumes.convert.ensure_challenge_form`: a volume already in that form is used exactly as
inference reads it, any other is converted to [0, 1], 256^3 brain or 512^3 abdomen), then every plane
along the slice axis is passed through exactly the inference pipeline -- :class:`SliceGrid`,
:func:`extract_slices`, :func:`normalise` -- and kept as a :class:`SliceBank` (one normalised
``size`` x ``size`` slice and one relative position per plane). Training then draws planes at
random over the whole extent (empty planes included, because inference scores the whole extent;
or only planes with tissue, :func:`tissue_planes`), so geometry, conditioning and intensities match
inference by construction; the VQ-VAE may train on random windows of them (:func:`random_crops`).

Out: batches ``x`` (B, S, S) float32 and ``coord`` (B, 1) float32: random ones for training
(:func:`draw_batch`, augmented, a pure function of (seed, rank, step) so that a resumed run draws
the same batches) and fixed ones for the holdout loss (:func:`fixed_batch`).

Banks are cached as safetensors files (one per volume) keyed by the source file's size, mtime and
the preprocessing settings, so a resumed or second training does not convert again.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .augment import AugmentConfig, augment
from ..common.slicing import SliceGrid, extract_slices, normalise, slice_grid
from ..config import RegionConfig
from ..volumes.volume_io import READABLE_SUFFIXES, atomic_write, list_inputs

#: Bump when the bank contents change meaning (invalidates caches). 2: volumes already in
#: challenge form are no longer converted.
BANK_VERSION = 2


@dataclass(frozen=True)
class SliceBank:
    """Every plane of one volume, ready for the networks."""

    name: str  # source file name
    slices: torch.Tensor  # (depth, S, S) float32, normalised
    positions: torch.Tensor  # (depth, 1) float32, relative slice positions

    @property
    def depth(self) -> int:
        return int(self.slices.shape[0])


def volume_to_bank(volume: np.ndarray | torch.Tensor, config: RegionConfig, name: str,
                   chunk: int = 32, size: int | None = None) -> SliceBank:
    """Challenge-form volume (a0, a1, a2) in [0, 1] -> a bank of all its a2 planes, ``size`` x
    ``size`` pixels (default: the VQ-VAE's)."""
    vol = torch.as_tensor(np.ascontiguousarray(volume) if isinstance(volume, np.ndarray) else volume)
    vol = vol.float()
    if vol.ndim != 3:
        raise ValueError(f"{name}: expected a 3-D volume, got shape {tuple(vol.shape)}")
    shape = tuple(int(s) for s in vol.shape)
    size = size or config.vqvae.image_size
    parts = []
    for z0 in range(0, shape[2], chunk):
        grid = SliceGrid(shape, tuple(range(z0, min(z0 + chunk, shape[2]))))
        parts.append(extract_slices(vol, grid, size))  # (c, S, S)
    slices = torch.cat(parts)  # (depth, S, S)
    full = SliceGrid(shape, tuple(range(shape[2])))
    # One call over all planes: the volume statistics are the same as at inference.
    slices = normalise(slices, vol, config).contiguous()
    return SliceBank(name=name, slices=slices, positions=full.positions.contiguous())


def _cache_key(path: Path, config: RegionConfig, shape: tuple[int, int, int] | None, size: int) -> str:
    st = path.stat()
    key = {"v": BANK_VERSION, "name": path.name, "size": st.st_size,
           "mtime": int(st.st_mtime), "region": config.region,
           "norm": config.normalisation, "thr": config.foreground_threshold, "bg": config.background,
           "image_size": size}
    if shape is not None:
        key["shape"] = list(shape)
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def load_bank(path: Path, config: RegionConfig, cache_dir: Path | None = None,
              shape: tuple[int, int, int] | None = None, size: int | None = None) -> SliceBank:
    """Bring ``path`` into challenge form (cached in ``cache_dir`` when given) and return its bank
    of ``size``-pixel slices (default: the VQ-VAE's).

    ``shape`` overrides the region's challenge shape (tests and quick runs only).
    """
    path = Path(path)
    size = size or config.vqvae.image_size
    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir) / f"{path.name.split('.')[0]}-{_cache_key(path, config, shape, size)}.safetensors"
        if cached.is_file():
            t = load_file(str(cached))
            return SliceBank(name=path.name, slices=t["slices"], positions=t["positions"])
    from ..volumes.convert import ensure_challenge_form  # imported late: conversion pulls in scipy

    volume, _ = ensure_challenge_form(path, config.region, shape=shape)
    bank = volume_to_bank(volume, config, path.name, size=size)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)  # processes may race: each its own temporary
        atomic_write(cached, lambda tmp: save_file({"slices": bank.slices, "positions": bank.positions}, str(tmp)))
    return bank


def _matches(path: Path, names: list[str]) -> bool:
    stem = path.name.split(".")[0]
    return path.name in names or stem in names


def split_files(data: Path, holdout: list[str] | None) -> tuple[list[Path], list[Path]]:
    """Volume files under ``data`` split into (train, holdout) by file name or stem."""
    files = list_inputs(Path(data), READABLE_SUFFIXES)
    if not files:
        raise ValueError(f"no volume files ({', '.join(READABLE_SUFFIXES)}) in {data}")
    names = list(holdout or [])
    unknown = [n for n in names if not any(_matches(f, [n]) for f in files)]
    if unknown:
        raise ValueError(f"holdout names {unknown} match no file in {data} "
                         f"(have {[f.name for f in files]})")
    train = [f for f in files if not _matches(f, names)]
    held = [f for f in files if _matches(f, names)]
    if not train:
        raise ValueError(f"every volume in {data} is held out; nothing left to train on")
    return train, held


def provenance(files: list[Path], root: Path) -> dict[str, str]:
    """``{path relative to root: sha256}`` of ``files``: what trained a model, without machine paths."""
    out = {}
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[Path(f).relative_to(root).as_posix()] = h.hexdigest()
    return out


def load_banks(data: Path, config: RegionConfig, holdout: list[str] | None,
               cache_dir: Path | None = None, shape: tuple[int, int, int] | None = None,
               size: int | None = None) -> tuple[list[SliceBank], list[SliceBank]]:
    """Banks of the training and the holdout volumes in ``data`` (``size``: as :func:`load_bank`)."""
    train, held = split_files(data, holdout)
    return ([load_bank(p, config, cache_dir, shape, size) for p in train],
            [load_bank(p, config, cache_dir, shape, size) for p in held])


def tissue_planes(bank: SliceBank, background: float, min_fraction: float = 0.01) -> torch.Tensor:
    """Indices of ``bank``'s planes with at least ``min_fraction`` of their pixels other than
    ``background`` (inside the body); every plane if none has."""
    inside = (bank.slices != background).flatten(1).float().mean(1)  # (depth,)
    idx = torch.nonzero(inside >= min_fraction).flatten()
    return idx if idx.numel() else torch.arange(bank.depth)


def sample_batch(banks: list[SliceBank], batch_size: int, generator: torch.Generator,
                 planes: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random planes: a volume uniformly, then a plane uniformly over its whole extent, or over
    ``planes[v]`` (indices into bank ``v``, e.g. :func:`tissue_planes`) when given.

    Returns ``x`` (B, S, S) and ``coord`` (B, 1).
    """
    vols = torch.randint(len(banks), (batch_size,), generator=generator).tolist()
    xs, cs = [], []
    for v in vols:
        bank = banks[v]
        allowed = bank.depth if planes is None else len(planes[v])
        i = int(torch.randint(allowed, (1,), generator=generator))
        if planes is not None:
            i = int(planes[v][i])
        xs.append(bank.slices[i])
        cs.append(bank.positions[i])
    return torch.stack(xs), torch.stack(cs)


def random_crops(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``size`` x ``size`` window of each slice ``x`` (B, S, S) -> (B, size, size)."""
    n, s = x.shape[0], x.shape[-1]
    if size > s:
        raise ValueError(f"crop {size} is larger than the slices ({s} pixels)")
    corner = torch.randint(s - size + 1, (n, 2), generator=generator).tolist()
    return torch.stack([x[b, i:i + size, j:j + size] for b, (i, j) in enumerate(corner)])


def fixed_batch(banks: list[SliceBank], n_per_volume: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic evaluation slices: ``n_per_volume`` planes of each bank, spread like inference."""
    xs, cs = [], []
    for bank in banks:
        grid = slice_grid((1, 1, bank.depth), n_per_volume)
        idx = list(grid.indices)
        xs.append(bank.slices[idx])
        cs.append(bank.positions[idx])
    return torch.cat(xs), torch.cat(cs)


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """Data and augmentation randomness as a pure function of (seed, rank, step): resumes exactly."""
    return torch.Generator().manual_seed((seed * 1_000_003 + rank * 7919 + step) % (2**63))


def draw_batch(banks: list[SliceBank], n: int, gen: torch.Generator, aug: AugmentConfig | None,
               device: torch.device, planes: list[torch.Tensor] | None = None,
               crop: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample_batch` (over ``planes`` when given), augmented when ``aug`` is given, cut to
    random ``crop`` x ``crop`` windows when ``crop`` (after augmentation, so that windows see the
    whole slice's transforms), on ``device``: ``x`` (n, S, S) or (n, crop, crop), ``coord`` (n, 1)."""
    x, coord = sample_batch(banks, n, gen, planes)
    if aug is not None:
        x = augment(x, gen, aug)
    if crop:
        x = random_crops(x, crop, gen)
    return x.to(device, non_blocking=True), coord.to(device, non_blocking=True)


def chunks(x: torch.Tensor, coord: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, coord)`` in consecutive pieces of at most ``size`` slices (evaluation batches)."""
    for i in range(0, x.shape[0], size):
        yield x[i : i + size], coord[i : i + size]


def default_cache(out: Path) -> Path:
    """Where slice banks are cached: ``$MOOD_CACHE`` (read when called), else ``out/train/cache``."""
    env = os.environ.get("MOOD_CACHE")
    return Path(env) if env else Path(out) / "train" / "cache"


__all__ = [
    "SliceBank",
    "chunks",
    "default_cache",
    "draw_batch",
    "fixed_batch",
    "load_bank",
    "load_banks",
    "provenance",
    "random_crops",
    "sample_batch",
    "split_files",
    "step_generator",
    "tissue_planes",
    "volume_to_bank",
]
