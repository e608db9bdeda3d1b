"""The detector: a volume in [0, 1] -> a sample score or a voxel score map, for one region.

Pipeline (one way): volume -> slices (slicing) -> codes (VQ-VAE) -> NLL / restorations (prior)
-> scores (scoring) -> volume grid (slicing) -> calibrated [0, 1) (scoring.ScoreMap).
:meth:`Detector.score` is the one entry point for a task and a method (LSR or the reconstruction
baseline); calibration uses the raw stages :meth:`Detector.nll` and :meth:`Detector.pixel_raw`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import scoring
from ..config import METHODS, TASKS
from .device import resolve_device
from .networks import VQVAE, PixelSNAIL, code_nll
from .restoration import draw_uniforms, restore, unique_states
from .slicing import SliceGrid, extract_slices, normalise, slice_grid, slices_to_volume
from .weights import Card, WeightsError, default_weights_dir, load_prior, load_vqvae, read_card

DEFAULT_RESTORATIONS = 15


@dataclass(frozen=True)
class Slices:
    """Normalised model inputs of one volume."""

    x: torch.Tensor  # (S, size, size)
    coord: torch.Tensor  # (S, 1)
    grid: SliceGrid


def resolve_weights(region: str, weights: str | Path | None = None) -> Path:
    """``weights`` may be a region folder (holding card.json) or a root with one folder per region."""
    if weights is None:
        return default_weights_dir(region)
    root = Path(weights)
    if (root / "card.json").is_file():
        return root
    if (root / region / "card.json").is_file():
        return root / region
    raise WeightsError(f"no weights card in {root} or {root / region}; pass the folder that holds "
                       f"card.json (or its parent with one folder per region)")


class Detector:
    """Scores volumes of one region with a VQ-VAE and a PixelSNAIL prior (both in eval mode)."""

    def __init__(self, vqvae: VQVAE, prior: PixelSNAIL, card: Card,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.vqvae = vqvae.to(self.device).eval()
        # channels-last convolutions: the same codes, the encoder about 25 % faster on CPU
        self.vqvae.to(memory_format=torch.channels_last)
        self.prior = prior.to(self.device).eval()
        self.card = card
        self.config = card.config

    @classmethod
    def load(cls, region: str, weights: str | Path | None = None, device: str = "auto") -> "Detector":
        directory = resolve_weights(region, weights)
        if not (directory / "card.json").is_file():
            raise WeightsError(f"no weights installed for region {region!r} (looked in {directory}). "
                               f"Train them (`mood train ...`), or pass --weights DIR / set MOOD_WEIGHTS.")
        card = read_card(directory)
        if card.config.region != region:
            raise WeightsError(f"weights in {directory} are for region {card.config.region!r}, "
                               f"not {region!r}")
        return cls(load_vqvae(directory, card), load_prior(directory, card), card,
                   resolve_device(device))

    def with_card(self, card: Card) -> "Detector":
        """The same models with another card of the same architecture (new thresholds or maps)."""
        if card.config != self.config:
            raise ValueError("the card describes another architecture than this detector's models")
        return Detector(self.vqvae, self.prior, card, self.device)

    # -- stages ---------------------------------------------------------------------------
    def slices(self, volume: np.ndarray | torch.Tensor, n_slices: int | None = None) -> Slices:
        """Volume (a0, a1, a2) in [0, 1] -> normalised slices, positions and the slice grid."""
        vol = torch.as_tensor(volume).to(self.device, torch.float32)
        grid = slice_grid(tuple(vol.shape), n_slices or self.config.n_slices)
        x = extract_slices(vol, grid, self.config.vqvae.image_size)
        x = normalise(x, vol, self.config)
        return Slices(x=x, coord=grid.positions.to(self.device), grid=grid)

    @torch.no_grad()
    def encode(self, s: Slices) -> torch.Tensor:
        """Slices -> codes (S, L, L)."""
        return self.vqvae.encode(s.x, s.coord).codes

    @torch.no_grad()
    def code_nll(self, codes: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        """Per-code NLL (S, L, L) under the prior, one pass."""
        return code_nll(self.prior(codes, coord), codes)

    @torch.no_grad()
    def restored_codes(self, s: Slices, codes: torch.Tensor, n: int, seed: int) -> torch.Tensor:
        """``n`` restorations of each slice's codes (S, n, L, L), resampled above lambda_p."""
        lat = self.config.prior.latent_size
        uniforms = draw_uniforms(len(codes), n, lat * lat, seed)
        return restore(self.prior, codes, s.coord, uniforms, self.card.threshold_pixel)

    @torch.no_grad()
    def decode_restorations(self, restored: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        """Restored codes (S, n, L, L) -> images (S, n, size, size), each distinct code map decoded once."""
        n_slices, n = restored.shape[:2]
        flat = restored.flatten(0, 1)  # (S*n, L, L)
        coord = coord.repeat_interleave(n, 0)
        slice_of_row = torch.arange(n_slices, device=flat.device).repeat_interleave(n)
        first, inverse = unique_states(slice_of_row, flat, torch.arange(len(flat), device=flat.device))
        images = self.decode(flat[first], coord[first])
        return images[inverse].view(n_slices, n, *images.shape[1:])

    def restorations(self, s: Slices, codes: torch.Tensor, n: int, seed: int) -> torch.Tensor:
        """Restored images (S, n, size, size)."""
        return self.decode_restorations(self.restored_codes(s, codes, n, seed), s.coord)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, coord: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """Code maps (N, L, L) -> images (N, size, size), ``chunk`` at a time to bound memory."""
        return torch.cat([self.vqvae.decode_codes(codes[i:i + chunk], coord[i:i + chunk])
                          for i in range(0, len(codes), chunk)])

    @torch.no_grad()
    def reconstruction_error(self, s: Slices) -> torch.Tensor:
        """``|x - decode(encode(x))|`` (S, size, size): the plain VQ-VAE baseline, no prior."""
        return (s.x - self.decode(self.encode(s), s.coord)).abs()

    # -- scores ---------------------------------------------------------------------------
    def score(self, volume: np.ndarray | torch.Tensor, task: str, method: str = "lsr",
              n_slices: int | None = None, restorations: int = DEFAULT_RESTORATIONS,
              seed: int = 0) -> float | np.ndarray:
        """The challenge's output for ``task``: one float in [0, 1) ("sample") or voxel scores in
        [0, 1) on the input's grid (a0, a1, a2) ("pixel"), by latent spatial restoration ("lsr")
        or the VQ-VAE's reconstruction error ("reconstruction", which needs no restorations)."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {task!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        if task == "sample":
            return (self.score_sample(volume, n_slices) if method == "lsr"
                    else self.baseline_sample(volume, n_slices))
        return (self.score_pixel(volume, n_slices, restorations, seed) if method == "lsr"
                else self.baseline_pixel(volume, n_slices))

    def nll(self, volume: np.ndarray | torch.Tensor, n_slices: int | None = None) -> torch.Tensor:
        """Per-code NLL (S, L, L) of the volume's scored slices under the prior."""
        s = self.slices(volume, n_slices)
        return self.code_nll(self.encode(s), s.coord)

    def sample_raw(self, volume: np.ndarray | torch.Tensor, n_slices: int | None = None) -> float:
        return scoring.sample_raw_score(self.nll(volume, n_slices), self.card.threshold_sample)

    def pixel_raw(self, volume: np.ndarray | torch.Tensor, n_slices: int | None = None,
                  restorations: int = DEFAULT_RESTORATIONS, seed: int = 0) -> tuple[torch.Tensor, Slices]:
        """Smoothed slice scores (S, size, size) before calibration, and the slices they score."""
        s = self.slices(volume, n_slices)
        rec = self.restorations(s, self.encode(s), restorations, seed)
        return scoring.smooth(scoring.restoration_distance(s.x, rec)), s

    def score_sample(self, volume: np.ndarray | torch.Tensor, n_slices: int | None = None) -> float:
        """One score in [0, 1) for the whole volume."""
        return float(self.card.sample_map(torch.tensor(self.sample_raw(volume, n_slices), dtype=torch.float64)))

    def score_pixel(self, volume: np.ndarray | torch.Tensor, n_slices: int | None = None,
                    restorations: int = DEFAULT_RESTORATIONS, seed: int = 0) -> np.ndarray:
        """Voxel scores in [0, 1) on the input's grid (a0, a1, a2), float32, Fortran order."""
        raw, s = self.pixel_raw(volume, n_slices, restorations, seed)
        return slices_to_volume(self.card.pixel_map(raw), s.grid)

    def baseline_sample(self, volume: np.ndarray | torch.Tensor, n_slices: int | None = None) -> float:
        """Reconstruction-error baseline: the mean error over the scored slices, mapped into [0, 1)."""
        err = self.reconstruction_error(self.slices(volume, n_slices))
        return float(scoring.BASELINE_MAP(err.double().mean()))

    def baseline_pixel(self, volume: np.ndarray | torch.Tensor, n_slices: int | None = None) -> np.ndarray:
        """Reconstruction-error baseline: the voxel error on the input's grid, mapped into [0, 1)."""
        s = self.slices(volume, n_slices)
        return slices_to_volume(scoring.BASELINE_MAP(self.reconstruction_error(s)), s.grid)
