"""Shared fixtures: tiny randomly initialised models saved in the real weights format."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mood.config import tiny_preset
from mood.localiser import UNet
from mood.lsr.networks import VQVAE, PixelSNAIL
from mood.detection.weights import Card, save_models


def make_weights(directory: Path, region: str, seed: int = 0, localiser: bool = True, **card_kwargs) -> Path:
    """Tiny random weights of ``region`` in ``directory/region``: LSR's two networks and (unless
    ``localiser=False``) the localiser's U-Net."""
    torch.manual_seed(seed)
    cfg = tiny_preset(region)
    out = directory / region
    vq, prior = VQVAE(cfg.vqvae), PixelSNAIL(cfg.prior)  # first: their weights are those of the seed alone
    unet = None
    if localiser:
        unet = UNet(cfg.localiser)
        # an untrained U-Net starts near p = 1 %, where its map, read as float16, is nearly flat: centre it
        # at p = 0.5 so that the tests see maps that vary
        torch.nn.init.zeros_(unet.head.bias)
    save_models(out, Card(cfg, info={"note": "random tiny test weights"}, **card_kwargs), vq, prior, localiser=unet)
    return out


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A weights root with tiny brain and abdom models; the pixel threshold is low enough that
    random models resample many codes, so restoration is exercised."""
    root = tmp_path_factory.mktemp("weights")
    for region in ("brain", "abdom"):
        make_weights(root, region, lambda_s=4.0, lambda_p=2.0)
    return root


def head_phantom(shape=(48, 40, 24), seed: int = 0) -> np.ndarray:
    """An ellipsoid of textured 'tissue' in [0, 1] on a zero background."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = sum(g**2 for g in grids) < 0.7
    vol = np.where(inside, 0.5 + 0.2 * rng.random(shape), 0.0)
    return vol.astype(np.float32)


def make_head(seed: int, shape: tuple[int, int, int]) -> np.ndarray:
    """An ellipsoid 'head' in [0, 1]: bright shell, textured inside, background 0."""
    rng = np.random.default_rng(seed)
    a0, a1, a2 = (np.arange(n, dtype=np.float32) for n in shape)
    z0, z1, z2 = np.meshgrid(a0, a1, a2, indexing="ij")
    r = np.sqrt(((z0 - shape[0] / 2) / (0.42 * shape[0])) ** 2 + ((z1 - shape[1] / 2) / (0.38 * shape[1])) ** 2
                + ((z2 - shape[2] / 2) / (0.45 * shape[2])) ** 2)
    vol = np.where(r < 1, 0.45 + 0.1 * np.sin(z0 / 3 + seed) * np.cos(z1 / 4), 0.0)
    vol = np.where((r > 0.85) & (r < 1), 0.9, vol)
    vol = vol + (r < 1) * rng.normal(0, 0.02, shape)
    return np.clip(vol, 0, 1).astype(np.float32)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    """``scripts/<name>`` run with this Python, its output captured."""
    script = Path(__file__).resolve().parents[1] / "scripts" / name
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)


def phantom_sources(folder: Path, shape: tuple[int, int, int], n: int = 2) -> list[Path]:
    """``n`` phantom heads of ``shape`` written into ``folder``: normal sources of a toy set."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_nifti(folder / f"head{i}.nii.gz", head_phantom(shape, seed=i)) for i in range(n)]
