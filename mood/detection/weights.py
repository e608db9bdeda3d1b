"""Weights on disk: safetensors shards plus a JSON card, never pickle.

Layout of a weights directory (one per region)::

    card.json                     format version, architecture, thresholds, score maps, provenance
    vqvae-00001-of-0000N.safetensors
    prior-00001-of-0000N.safetensors
    localiser-00001-of-0000N.safetensors

The card is the single source of the architecture: the loaders rebuild each network from it and
refuse files whose tensors do not match, with a message that says what to do. A folder may hold
LSR's two networks, the localiser, or all three; each method loads only what it needs.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..common.maps import ScoreMap
from ..config import RegionConfig
from ..localiser.unet import UNet
from ..lsr.networks import VQVAE, PixelSNAIL
from ..volumes.volume_io import write_json

FORMAT_VERSION = 1
#: Shards stay below this size so that every file fits hosting and transfer limits.
MAX_SHARD_BYTES = 16 * 1024 * 1024
#: Thresholds used only when a card carries none (the original's values).
DEFAULT_LAMBDA_S = 7.0
DEFAULT_LAMBDA_P = 5.0


class WeightsError(RuntimeError):
    """Weights are missing, unreadable or do not match the architecture in their card."""


@dataclass
class Card:
    config: RegionConfig
    lambda_s: float | None = None
    lambda_p: float | None = None
    sample_map: ScoreMap = field(default_factory=ScoreMap)
    pixel_map: ScoreMap = field(default_factory=ScoreMap)
    #: The localiser's own maps of its sample statistic and voxel probabilities into [0, 1).
    localiser_sample_map: ScoreMap = field(default_factory=ScoreMap)
    localiser_pixel_map: ScoreMap = field(default_factory=ScoreMap)
    #: The method ``--method auto`` scores with (the one that measured best for this region);
    #: None: the first of :data:`mood.config.METHODS` that the folder's networks can do.
    method: str | None = None
    #: Free-form provenance: training files and licences, steps, losses, validation metrics.
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold_sample(self) -> float:
        return DEFAULT_LAMBDA_S if self.lambda_s is None else self.lambda_s

    @property
    def threshold_pixel(self) -> float:
        return DEFAULT_LAMBDA_P if self.lambda_p is None else self.lambda_p

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "method": self.method,
            "calibration": {
                "lambda_s": self.lambda_s,
                "lambda_p": self.lambda_p,
                "sample_map": {"kind": "ratio", "scale": self.sample_map.scale},
                "pixel_map": {"kind": "ratio", "scale": self.pixel_map.scale},
                "localiser_sample_map": {"kind": "ratio", "scale": self.localiser_sample_map.scale},
                "localiser_pixel_map": {"kind": "ratio", "scale": self.localiser_pixel_map.scale},
            },
            "info": self.info,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Card":
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise WeightsError(f"weights card has format_version {version!r}; this mood reads "
                               f"version {FORMAT_VERSION}. Re-export the weights with this version.")
        cal = d.get("calibration", {})
        return cls(
            config=RegionConfig.from_dict(d["config"]),
            method=d.get("method"),
            lambda_s=cal.get("lambda_s"),
            lambda_p=cal.get("lambda_p"),
            sample_map=ScoreMap(float(cal.get("sample_map", {}).get("scale", 1.0))),
            pixel_map=ScoreMap(float(cal.get("pixel_map", {}).get("scale", 1.0))),
            localiser_sample_map=ScoreMap(float(cal.get("localiser_sample_map", {}).get("scale", 1.0))),
            localiser_pixel_map=ScoreMap(float(cal.get("localiser_pixel_map", {}).get("scale", 1.0))),
            info=d.get("info", {}),
        )


def read_card(directory: str | Path) -> Card:
    path = Path(directory) / "card.json"
    if not path.is_file():
        raise WeightsError(f"no weights card at {path}. Train and calibrate weights "
                           f"(`mood train ...`, `mood calibrate ...`) or pass --weights DIR.")
    try:
        return Card.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise WeightsError(f"weights card {path} is unreadable ({exc}); restore it from the "
                           f"repository or re-export the weights.") from exc


def write_card(directory: str | Path, card: Card) -> None:
    write_json(Path(directory) / "card.json", card.to_json())


def _save_sharded(state: dict[str, torch.Tensor], directory: Path, stem: str, dtype: torch.dtype) -> None:
    for old in directory.glob(f"{stem}-*.safetensors"):
        old.unlink()
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        t = tensor.detach().cpu()
        t = t.to(dtype) if t.is_floating_point() else t
        t = t.contiguous()
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    for i, shard in enumerate(shards, 1):
        path = directory / f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        path.chmod(0o644)  # safetensors creates 0600; a non-root container user must read them


def _load_sharded(directory: Path, stem: str) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob(f"{stem}-*-of-*.safetensors"))
    if not files:
        raise WeightsError(f"no {stem} weights in {directory} (expected {stem}-00001-of-0000N."
                           f"safetensors). Train them or pass --weights DIR.")
    expected = int(files[0].stem.rsplit("-of-", 1)[1])
    if len(files) != expected:
        raise WeightsError(f"{directory}: found {len(files)} of {expected} {stem} shards; "
                           f"the copy is incomplete.")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise WeightsError(f"cannot read {f}: {exc}") from exc
    return state


def _check_and_load(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str,
                    directory: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}" if missing else "",
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}" if unexpected else "",
            f"shape mismatch {wrong[:3]}" if wrong else "",
        ]))
        raise WeightsError(f"{what} weights in {directory} do not match the architecture in its "
                           f"card ({detail}). The card and the tensors come from different "
                           f"trainings: copy both from the same run.")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def save_models(directory: str | Path, card: Card, vqvae: VQVAE | None, prior: PixelSNAIL | None,
                dtype: torch.dtype = torch.float32, localiser: UNet | None = None) -> None:
    """Write the card and the models given (a folder may hold LSR's two, the localiser, or all)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stem, model in (("vqvae", vqvae), ("prior", prior), ("localiser", localiser)):
        if model is not None:
            _save_sharded(model.state_dict(), directory, stem, dtype)
    write_card(directory, card)


def has_model(directory: str | Path, stem: str) -> bool:
    """Whether ``directory`` holds shards of model ``stem`` ("vqvae", "prior" or "localiser")."""
    return any(Path(directory).glob(f"{stem}-*-of-*.safetensors"))


def _load(directory: str | Path, card: Card | None, stem: str) -> torch.nn.Module:
    directory = Path(directory)
    card = card or read_card(directory)
    model, what = {"vqvae": (VQVAE, "VQ-VAE"), "prior": (PixelSNAIL, "prior"),
                   "localiser": (UNet, "localiser")}[stem]
    model = model(getattr(card.config, stem))
    _check_and_load(model, _load_sharded(directory, stem), what, directory)
    return model.eval()


def load_vqvae(directory: str | Path, card: Card | None = None) -> VQVAE:
    """The VQ-VAE of a weights directory, in eval mode."""
    return _load(directory, card, "vqvae")


def load_prior(directory: str | Path, card: Card | None = None) -> PixelSNAIL:
    """The prior of a weights directory, in eval mode."""
    return _load(directory, card, "prior")


def load_localiser(directory: str | Path, card: Card | None = None) -> UNet:
    """The localiser of a weights directory, in eval mode."""
    return _load(directory, card, "localiser")


def default_weights_dir(region: str) -> Path:
    """Where weights for ``region`` live: ``$MOOD_WEIGHTS/<region>``, else the packaged ``weights/``."""
    root = os.environ.get("MOOD_WEIGHTS")
    if root:
        return Path(root) / region
    return Path(__file__).resolve().parents[2] / "weights" / region
