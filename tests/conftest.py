"""Shared fixtures: tiny randomly initialised models saved in the real weights format."""
from __future__ import annotations

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
    unet = None
    if localiser:
        unet = UNet(cfg.localiser)
        # an untrained U-Net starts near p = 1 %, where its map, read as float16, is nearly flat: centre it
        # at p = 0.5 so that the tests see maps that vary
        torch.nn.init.zeros_(unet.head.bias)
    save_models(out, Card(cfg, info={"note": "random tiny test weights"}, **card_kwargs),
                VQVAE(cfg.vqvae), PixelSNAIL(cfg.prior), localiser=unet)
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


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path
