"""Model and region configuration: frozen dataclasses stored in every weights card.

One function, :func:`region_preset`, names the architectures of the original method for each
challenge region; tests build the same classes with tiny channel counts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

REGIONS = ("brain", "abdom")
#: Scoring methods: latent spatial restoration (the product) and the VQ-VAE reconstruction-error baseline.
METHODS = ("lsr", "reconstruction")

#: Challenge volume shape per region; ``--region auto`` relies on it.
CHALLENGE_SHAPES = {"brain": (256, 256, 256), "abdom": (512, 512, 512)}


def region_of_shape(shape: tuple[int, ...]) -> str | None:
    """The region whose challenge volumes have ``shape`` (brain 256^3, abdomen 512^3), else None."""
    return next((region for region, s in CHALLENGE_SHAPES.items() if tuple(shape) == s), None)


@dataclass(frozen=True)
class VQVAEConfig:
    """VQ-VAE over single slices.

    ``channels`` lists the encoder widths from the first convolution to the latent; each step
    between two entries halves the spatial size, so the latent grid is ``image_size / 2**(len-1)``.
    """

    channels: tuple[int, ...] = (16, 32, 64, 256)
    n_codes: int = 128
    n_res_blocks: int = 2
    image_size: int = 160
    dropout: float = 0.1
    #: The original's first convolution had no padding (160 -> 154); we pad it (section "Deviations").
    first_conv_padding: int = 3

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.channels) - 1)

    @property
    def code_dim(self) -> int:
        return self.channels[-1]


@dataclass(frozen=True)
class PriorConfig:
    """PixelSNAIL prior over a ``latent_size`` x ``latent_size`` grid of codes."""

    n_codes: int = 128
    latent_size: int = 20
    channels: int = 128
    n_blocks: int = 4
    n_res_blocks: int = 4
    first_kernel: int = 7
    attention_downsample: int = 2
    key_size: int = 16
    dropout: float = 0.1


@dataclass(frozen=True)
class RegionConfig:
    """How a region's volumes become model inputs."""

    region: str
    vqvae: VQVAEConfig
    prior: PriorConfig
    #: "zscore": z-score of foreground voxels (> ``foreground_threshold``); "affine": 2x - 1.
    normalisation: str
    foreground_threshold: float = 0.05
    n_slices: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RegionConfig":
        vq = dict(d["vqvae"])
        vq["channels"] = tuple(vq["channels"])
        return cls(
            region=d["region"],
            vqvae=VQVAEConfig(**vq),
            prior=PriorConfig(**d["prior"]),
            normalisation=d["normalisation"],
            foreground_threshold=d.get("foreground_threshold", 0.05),
            n_slices=d.get("n_slices", 32),
        )


def region_preset(region: str) -> RegionConfig:
    """The original method's architecture for ``region`` ("brain" or "abdom")."""
    if region == "brain":
        return RegionConfig(
            region="brain",
            vqvae=VQVAEConfig(channels=(16, 32, 64, 256)),
            prior=PriorConfig(latent_size=20, first_kernel=7, attention_downsample=2),
            normalisation="zscore",
        )
    if region == "abdom":
        return RegionConfig(
            region="abdom",
            vqvae=VQVAEConfig(channels=(16, 32, 64, 128, 256)),
            prior=PriorConfig(latent_size=10, first_kernel=3, attention_downsample=1),
            normalisation="affine",
        )
    raise ValueError(f"unknown region {region!r}; expected one of {', '.join(REGIONS)}")


def narrow(config: RegionConfig, width: float) -> RegionConfig:
    """``config`` with every VQ-VAE channel count scaled by ``width`` (at least 4); prior unchanged.

    The narrower variants exist to measure, at equal CPU time, whether capacity or training length
    limits a CPU-trained model; the card stores the result, so the loader needs no variant name.
    """
    if width == 1.0:
        return config
    channels = tuple(max(4, round(c * width)) for c in config.vqvae.channels)
    return replace(config, vqvae=replace(config.vqvae, channels=channels))


def tiny_preset(region: str = "brain", image_size: int = 64) -> RegionConfig:
    """A small model of the same structure, for tests and smoke runs (seconds on a CPU)."""
    full = region_preset(region)
    depth = len(full.vqvae.channels) - 1
    vq = VQVAEConfig(channels=(4, 8, 8, 16, 16)[: depth] + (16,), n_codes=16, n_res_blocks=1,
                     image_size=image_size)
    prior = PriorConfig(n_codes=16, latent_size=vq.latent_size, channels=16, n_blocks=2,
                        n_res_blocks=1, first_kernel=full.prior.first_kernel,
                        attention_downsample=full.prior.attention_downsample, key_size=8)
    return RegionConfig(region=region, vqvae=vq, prior=prior, normalisation=full.normalisation,
                        n_slices=8)


__all__ = ["REGIONS", "CHALLENGE_SHAPES", "region_of_shape", "VQVAEConfig", "PriorConfig", "RegionConfig",
           "region_preset", "narrow", "tiny_preset"]
