"""The detector: a volume in [0, 1] -> a sample score or a voxel score map, for one region.

Pipelines (one way each):

- localiser: volume -> every plane (slicing) -> per-pixel probabilities (U-Net), smoothed across
  slices -> volume grid (slicing) -> calibrated [0, 1); the sample score is a statistic of the
  probabilities;
- LSR: volume -> scored slices (slicing) -> codes (VQ-VAE) -> NLL / restorations (prior) -> scores
  (scoring) -> volume grid (slicing) -> calibrated [0, 1) (maps.ScoreMap);
- fusion: the mean of the two calibrated outputs.

:meth:`Detector.score` is the one entry point for a task and a method (:data:`mood.config.METHODS`);
calibration uses the raw stages (:meth:`Detector.nll`, :meth:`Detector.pixel_raw`,
:meth:`Detector.localiser_raw`). A weights folder may hold LSR's networks, the localiser or all
three; a method whose networks are missing says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..common import maps
from ..common.device import resolve_device
from ..common.slicing import SliceGrid, extract_slices, normalise, slice_grid, slices_to_volume
from ..config import METHODS, TASKS, networks_of
from ..localiser import UNet, probabilities, sample_statistic, smooth_across_slices
from ..lsr import scoring
from ..lsr.networks import VQVAE, PixelSNAIL, code_nll
from ..lsr.restoration import draw_uniforms, restore, unique_states
from .weights import (Card, WeightsError, default_weights_dir, has_model, load_localiser, load_prior, load_vqvae,
                      read_card)

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


#: The networks each method needs.
NEEDS = {"localiser": ("localiser",), "lsr": ("vqvae", "prior"), "reconstruction": ("vqvae",),
         "fusion": ("localiser", "vqvae", "prior")}


def fuse(localiser: float | np.ndarray, lsr: float | np.ndarray) -> float | np.ndarray:
    """The fusion of the two methods' calibrated outputs (a sample score or a voxel map): their mean."""
    if isinstance(localiser, np.ndarray):
        return ((localiser + lsr) / 2).astype(np.float32)
    return (localiser + lsr) / 2


class Detector:
    """Scores volumes of one region with the networks its weights folder holds (eval mode): LSR's
    VQ-VAE and PixelSNAIL prior, the localiser's U-Net, or all three."""

    def __init__(self, card: Card, device: torch.device | str = "cpu", *, vqvae: VQVAE | None = None,
                 prior: PixelSNAIL | None = None, localiser: UNet | None = None, source: str = "") -> None:
        self.device = torch.device(device)
        self.card = card
        self.config = card.config
        self.source = source  # where the weights came from, for messages
        self.vqvae = None if vqvae is None else vqvae.to(self.device).eval()
        if self.vqvae is not None:
            # channels-last convolutions: the same codes, the encoder about 25 % faster on CPU
            self.vqvae.to(memory_format=torch.channels_last)
        self.prior = None if prior is None else prior.to(self.device).eval()
        self.localiser = None if localiser is None else localiser.to(self.device).eval()

    @classmethod
    def load(cls, region: str, weights: str | Path | None = None, device: str = "auto") -> "Detector":
        """Every network the weights folder of ``region`` holds (refused if it holds none)."""
        directory = resolve_weights(region, weights)
        if not (directory / "card.json").is_file():
            raise WeightsError(f"no weights installed for region {region!r} (looked in {directory}). "
                               f"Train them (`mood train ...`), or pass --weights DIR / set MOOD_WEIGHTS.")
        card = read_card(directory)
        if card.config.region != region:
            raise WeightsError(f"weights in {directory} are for region {card.config.region!r}, "
                               f"not {region!r}")
        loaders = {"vqvae": load_vqvae, "prior": load_prior, "localiser": load_localiser}
        models = {name: load(directory, card) for name, load in loaders.items() if has_model(directory, name)}
        if not models:
            raise WeightsError(f"{directory} holds a card but no network (vqvae-*, prior-*, localiser-* "
                               f".safetensors); copy the whole weights folder")
        return cls(card, resolve_device(device), source=str(directory), **models)

    def with_card(self, card: Card) -> "Detector":
        """The same models with another card of the same architecture (new thresholds, maps or the
        localiser's smoothing across slices)."""
        if networks_of(card.config) != networks_of(self.config):
            raise ValueError("the card describes another architecture than this detector's models")
        return Detector(card, self.device, vqvae=self.vqvae, prior=self.prior, localiser=self.localiser,
                        source=self.source)

    def methods(self) -> tuple[str, ...]:
        """The methods this detector's networks can score with."""
        return tuple(m for m in METHODS if all(getattr(self, n) is not None for n in NEEDS[m]))

    def resolve(self, method: str) -> str:
        """``method``, with "auto" replaced by the card's method when these networks can score with
        it, else by the first method they can."""
        if method != "auto":
            return method
        available = self.methods()
        if self.card.method in available:
            return self.card.method
        if not available:
            raise WeightsError(f"the weights {self.source or 'given'} hold no network to score with")
        return available[0]

    def require(self, method: str) -> None:
        """Raise :class:`WeightsError` unless the networks of ``method`` are loaded."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        missing = [n for n in NEEDS[method] if getattr(self, n) is None]
        if missing:
            raise WeightsError(f"method {method!r} needs the {' and '.join(missing)} network(s), which the weights "
                               f"{self.source or 'given'} do not hold; choose --method among "
                               f"{', '.join(self.methods()) or 'none'} or train them (`mood train {missing[0]}`)")

    # -- stages ---------------------------------------------------------------------------
    def slices(self, volume: np.ndarray | torch.Tensor, n_slices: int | None = None,
               size: int | None = None) -> Slices:
        """Volume (a0, a1, a2) in [0, 1] -> normalised slices (``size`` pixels a side, default the
        VQ-VAE's), positions and the slice grid (``n_slices``, default the card's)."""
        vol = torch.as_tensor(volume).to(self.device, torch.float32)
        grid = slice_grid(tuple(vol.shape), n_slices or self.config.n_slices)
        x = extract_slices(vol, grid, size or self.config.vqvae.image_size)
        x = normalise(x, vol, self.config)
        return Slices(x=x, coord=grid.positions.to(self.device), grid=grid)

    def localiser_raw(self, volume: np.ndarray | torch.Tensor, n_slices: int | None = None) -> tuple[torch.Tensor, Slices]:
        """The localiser's probabilities (S, size, size) on every plane of the volume (or on
        ``n_slices`` evenly spread), and the slices they score."""
        self.require("localiser")
        s = self.slices(volume, n_slices or int(np.shape(volume)[2]), self.config.localiser.image_size)
        # sigma is a share of the field of view: in planes of a challenge-depth volume, scaled to these
        planes_per_unit = len(s.grid.indices) / self.config.challenge_shape[2]
        probs = probabilities(self.localiser, s.x, s.coord)
        return smooth_across_slices(probs, self.config.localiser.slice_sigma * planes_per_unit), s

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
        self.require("reconstruction")
        return (s.x - self.decode(self.encode(s), s.coord)).abs()

    # -- scores ---------------------------------------------------------------------------
    def score(self, volume: np.ndarray | torch.Tensor, task: str, method: str = "auto",
              n_slices: int | None = None, restorations: int = DEFAULT_RESTORATIONS,
              seed: int = 0) -> float | np.ndarray:
        """The challenge's output for ``task``: one float in [0, 1) ("sample") or voxel scores in
        [0, 1) on the input's grid (a0, a1, a2) ("pixel"), by the localiser ("localiser", every
        plane unless ``n_slices``), latent spatial restoration ("lsr"), the mean of the two
        ("fusion"), the VQ-VAE's reconstruction error ("reconstruction", no restorations), or the
        card's choice ("auto", :meth:`resolve`)."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {task!r}")
        method = self.resolve(method)
        self.require(method)
        if method == "fusion":
            return fuse(self.score(volume, task, "localiser"),
                        self.score(volume, task, "lsr", n_slices, restorations, seed))
        if task == "sample":
            return {"localiser": self.localiser_sample, "lsr": self.score_sample,
                    "reconstruction": self.baseline_sample}[method](volume, n_slices)
        if method == "localiser":
            return self.localiser_pixel(volume, n_slices)
        return (self.score_pixel(volume, n_slices, restorations, seed) if method == "lsr"
                else self.baseline_pixel(volume, n_slices))

    def localiser_sample(self, volume: np.ndarray | torch.Tensor, n_slices: int | None = None) -> float:
        """The localiser's sample score in [0, 1): its top probabilities' mean, calibrated."""
        return self._localiser_sample(self.localiser_raw(volume, n_slices)[0])

    def localiser_pixel(self, volume: np.ndarray | torch.Tensor, n_slices: int | None = None) -> np.ndarray:
        """The localiser's voxel scores in [0, 1) on the input's grid, float32, Fortran order."""
        return self._localiser_pixel(*self.localiser_raw(volume, n_slices))

    def localiser_outputs(self, volume: np.ndarray | torch.Tensor,
                          n_slices: int | None = None) -> tuple[float, np.ndarray]:
        """Both of the localiser's outputs from one pass over the volume: (sample, pixel)."""
        probs, s = self.localiser_raw(volume, n_slices)
        return self._localiser_sample(probs), self._localiser_pixel(probs, s)

    def _localiser_sample(self, probs: torch.Tensor) -> float:
        return float(self.card.localiser_sample_map(torch.tensor(sample_statistic(probs), dtype=torch.float64)))

    def _localiser_pixel(self, probs: torch.Tensor, s: Slices) -> np.ndarray:
        return slices_to_volume(self.card.localiser_pixel_map(probs), s.grid)

    def nll(self, volume: np.ndarray | torch.Tensor, n_slices: int | None = None) -> torch.Tensor:
        """Per-code NLL (S, L, L) of the volume's scored slices under the prior."""
        self.require("lsr")
        s = self.slices(volume, n_slices)
        return self.code_nll(self.encode(s), s.coord)

    def sample_raw(self, volume: np.ndarray | torch.Tensor, n_slices: int | None = None) -> float:
        return scoring.sample_raw_score(self.nll(volume, n_slices), self.card.threshold_sample)

    def pixel_raw(self, volume: np.ndarray | torch.Tensor, n_slices: int | None = None,
                  restorations: int = DEFAULT_RESTORATIONS, seed: int = 0) -> tuple[torch.Tensor, Slices]:
        """Smoothed slice scores (S, size, size) before calibration, and the slices they score."""
        self.require("lsr")
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
        return float(maps.BASELINE_MAP(err.double().mean()))

    def baseline_pixel(self, volume: np.ndarray | torch.Tensor, n_slices: int | None = None) -> np.ndarray:
        """Reconstruction-error baseline: the voxel error on the input's grid, mapped into [0, 1)."""
        s = self.slices(volume, n_slices)
        return slices_to_volume(maps.BASELINE_MAP(self.reconstruction_error(s)), s.grid)
