"""Model and region configuration: frozen dataclasses stored in every weights card.

One function, :func:`region_preset`, names every fact about a challenge region: the original
method's architectures, the challenge's volume shape, the modality, the normalisation and the value
it leaves outside the body, and the augmentation's intensity range. Tests build the same classes
with tiny channel counts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

REGIONS = ("brain", "abdom")
#: The challenge's tasks: one score per volume, or one per voxel.
TASKS = ("sample", "pixel")
#: Scoring methods: the self-supervised localiser, latent spatial restoration (the reference method
#: this package reproduces), the two fused, and the VQ-VAE reconstruction-error baseline.
METHODS = ("localiser", "lsr", "fusion", "reconstruction")
#: The command line's default method (the environment variable MOOD_METHOD overrides it): the one
#: the weights card names for its region -- the method that measured best on held-out heads and on
#: kinds no training task makes (the README's table) -- else the first of :data:`METHODS` that its
#: networks can score with.
DEFAULT_METHOD = "auto"
#: The localiser's training task families (:mod:`mood.training.tasks`): the anomalies that teach.
TRAINING_TASKS = ("interpolation", "poisson", "deformation", "intensity")
#: Each validation kind (:mod:`mood.validation.anomalies`, the anomalies that judge) and the task
#: families that make anomalies of its kind: a localiser's number on a kind counts only when none
#: of these trained it. Noise and shuffling are made by no task.
KIND_TEACHERS = {"blob_bright": ("intensity",), "blob_dark": ("intensity",),
                 "sink": ("deformation",), "source": ("deformation",),
                 "foreign": ("interpolation", "poisson"), "noise": (), "shuffle": ()}
#: Volumes a scoring run holds at once by default: one read ahead, one scored, one written behind.
DEFAULT_IN_FLIGHT = 3

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
class LocaliserConfig:
    """The self-supervised localiser: a 2-D U-Net over whole ``image_size`` x ``image_size`` slices.

    ``channels`` lists the widths from the full-resolution level down; each further entry halves
    the grid, so the bottleneck sees ``image_size / 2**(len-1)`` cells. Its inputs are the
    normalised slice and a constant plane holding the slice's relative position; its output is one
    logit per pixel: how likely that pixel was changed by an anomaly.
    """

    channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    image_size: int = 160
    #: Gaussian smoothing of the probabilities across slices at inference
    #: (:func:`mood.localiser.smooth_across_slices`), its standard deviation in planes of a volume of
    #: the challenge's depth, so a share of the field of view (a 128-plane brain: half as many
    #: planes). 0, what cards without it were calibrated with: none. The presets choose it.
    slice_sigma: float = 0.0

    @property
    def network(self) -> "LocaliserConfig":
        """This config less what acts only on the network's outputs (the smoothing): what the
        network's weights follow."""
        return replace(self, slice_sigma=0.0)

    @property
    def levels(self) -> int:
        return len(self.channels) - 1


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation of normalised slices (:func:`mood.training.augment.augment`).

    Built by :attr:`RegionConfig.augmentation`; the shared ranges are defaults here, the regional
    ones (intensity range, background) come from the region's config.
    """

    p: float = 0.5
    scale: tuple[float, float] = (0.85, 1.10)
    rotate_deg: float = 5.0
    flip: bool = True
    #: elastic displacement: peak amplitude in pixels and control-grid spacing in pixels
    elastic_px: float = 3.0
    elastic_spacing: int = 16
    brightness: float = 0.15
    contrast: float = 0.15
    blur_kernels: tuple[int, ...] = (3, 5, 7)
    noise_var: float = 0.001
    #: gamma in [1/gamma, gamma] (log-uniform), on the image mapped to [0, 1]
    gamma: float = 1.4
    #: multiplicative bias field exp(+-bias_field), smooth over a bias_grid x bias_grid control grid
    bias_field: float = 0.0
    bias_grid: int = 4
    #: random monotone intensity curve: the slopes of ``remap_knots`` equal segments of [0, 1] are
    #: exp(remap * N(0, 1)), rescaled so that 0 and 1 stay fixed; tissues' contrasts change one
    #: against another, as between sequences and scanners (0: off)
    remap: float = 0.0
    remap_knots: int = 6
    #: lower resolution: the slice resampled down by a factor in [1, resolution] (antialiased) and
    #: back up (bilinear), as a scan acquired coarser than the grid it is scored on, or a smooth
    #: average template, looks (1: off)
    resolution: float = 1.0
    #: intensity range mapped to [0, 1] for the colour transforms
    value_range: tuple[float, float] = (-3.0, 3.0)
    #: value outside the body / beyond the image border
    background: float = 0.0
    #: keep background voxels (== background after the shape step) exactly at ``background``
    keep_background: bool = True


@dataclass(frozen=True)
class RegionConfig:
    """How a region's volumes become model inputs: every regional fact, stored in the card.

    Cards written before a field existed load with the value of :func:`region_preset`.
    """

    region: str
    vqvae: VQVAEConfig
    prior: PriorConfig
    #: "zscore": z-score of foreground voxels (> ``foreground_threshold``); "affine": 2x - 1.
    normalisation: str
    #: (a0, a1, a2) of the challenge's volumes: ``--region auto`` and "already in challenge form".
    challenge_shape: tuple[int, int, int]
    #: "mri" (percentile scaling) or "ct" (Hounsfield window) when converting other volumes.
    modality: str
    #: The value :func:`mood.common.slicing.normalise` gives the background (air, outside the body).
    background: float
    #: Normalised intensities mapped to [0, 1] by augmentation's colour transforms.
    augment_range: tuple[float, float]
    foreground_threshold: float = 0.05
    n_slices: int = 32
    localiser: LocaliserConfig = LocaliserConfig()

    @property
    def augmentation(self) -> AugmentConfig:
        """This region's augmentation. "zscore" leaves the background exactly at ``background``,
        so it is kept exact; after "affine" air and dark tissue share values, so it is not. A bias
        field (coil shading) for MRI only: CT intensities are calibrated."""
        return AugmentConfig(value_range=self.augment_range, background=self.background,
                             keep_background=self.normalisation == "zscore",
                             bias_field=0.3 if self.modality == "mri" else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RegionConfig":
        vq = dict(d["vqvae"])
        vq["channels"] = tuple(vq["channels"])
        preset = region_preset(d["region"])  # regional facts that older cards do not record
        return cls(
            region=d["region"],
            vqvae=VQVAEConfig(**vq),
            prior=PriorConfig(**d["prior"]),
            normalisation=d["normalisation"],
            challenge_shape=tuple(d.get("challenge_shape", preset.challenge_shape)),
            modality=d.get("modality", preset.modality),
            background=float(d.get("background", preset.background)),
            augment_range=tuple(d.get("augment_range", preset.augment_range)),
            foreground_threshold=d.get("foreground_threshold", 0.05),
            n_slices=d.get("n_slices", 32),
            localiser=(LocaliserConfig(**{**d["localiser"], "channels": tuple(d["localiser"]["channels"])})
                       if "localiser" in d else preset.localiser),
        )


def region_preset(region: str) -> RegionConfig:
    """The original method's architecture for ``region`` ("brain" or "abdom")."""
    if region == "brain":
        return RegionConfig(
            region="brain",
            vqvae=VQVAEConfig(channels=(16, 32, 64, 256)),
            prior=PriorConfig(latent_size=20, first_kernel=7, attention_downsample=2),
            normalisation="zscore",
            challenge_shape=(256, 256, 256),
            modality="mri",
            background=0.0,
            augment_range=(-3.0, 3.0),  # +-3 standard deviations of the foreground
            localiser=LocaliserConfig(slice_sigma=4.0),  # 1/64 of the field of view (docs/localiser.md)
        )
    if region == "abdom":
        return RegionConfig(
            region="abdom",
            vqvae=VQVAEConfig(channels=(16, 32, 64, 128, 256)),
            prior=PriorConfig(latent_size=10, first_kernel=3, attention_downsample=1),
            normalisation="affine",
            challenge_shape=(512, 512, 512),
            modality="ct",
            background=-1.0,
            augment_range=(-1.0, 1.0),
            localiser=LocaliserConfig(slice_sigma=8.0),  # 1/64 of the field of view, as the brain's
        )
    raise ValueError(f"unknown region {region!r}; expected one of {', '.join(REGIONS)}")


def region_of_shape(shape: tuple[int, ...]) -> str | None:
    """The region whose challenge volumes have ``shape`` (brain 256^3, abdomen 512^3), else None."""
    return next((r for r in REGIONS if region_preset(r).challenge_shape == tuple(shape)), None)


def networks_of(config: RegionConfig) -> RegionConfig:
    """``config`` less what acts only on the networks' outputs (the localiser's smoothing across
    slices): what a checkpoint, a card and the networks loaded under it must agree on."""
    return replace(config, localiser=config.localiser.network)


def narrow(config: RegionConfig, width: float) -> RegionConfig:
    """``config`` with every VQ-VAE channel count scaled by ``width`` (at least 4); prior unchanged.

    The narrower variants exist to measure, at equal CPU time, whether capacity or training length
    limits a CPU-trained model; the card stores the result, so the loader needs no variant name.
    """
    if width == 1.0:
        return config
    channels = tuple(max(4, round(c * width)) for c in config.vqvae.channels)
    return replace(config, vqvae=replace(config.vqvae, channels=channels))


def relatent(config: RegionConfig, cell: int | None = None, codes: int | None = None) -> RegionConfig:
    """``config`` with latent cells of ``cell`` x ``cell`` pixels and/or a codebook of ``codes``
    vectors (None: kept); the prior follows (its grid of ``image_size / cell`` codes, its classes).

    A finer cell adds a code per smaller patch (brain 8 px -> 4 px: 20 x 20 -> 40 x 40 codes) by
    dropping the encoder's last downsampling widths; a coarser one doubles the last width for each
    level added. The latent dimension stays. Like :func:`narrow`, a variant for measuring what a
    CPU-trained representation should be; the card stores the result.
    """
    vq = config.vqvae
    if cell is not None:
        levels = cell.bit_length() - 1
        if cell < 2 or cell != 2**levels or vq.image_size % cell:
            raise ValueError(f"cell {cell} must be a power of two >= 2 that divides {vq.image_size}")
        widths = list(vq.channels[:-1])
        while len(widths) < levels:
            widths.append(2 * widths[-1])
        vq = replace(vq, channels=tuple(widths[:levels]) + (vq.channels[-1],))
    if codes is not None:
        if codes < 2:
            raise ValueError(f"a codebook needs at least 2 codes, not {codes}")
        vq = replace(vq, n_codes=codes)
    return replace(config, vqvae=vq, prior=replace(config.prior, n_codes=vq.n_codes, latent_size=vq.latent_size))


def resize_prior(config: RegionConfig, channels: int | None = None, n_blocks: int | None = None,
                 dropout: float | None = None) -> RegionConfig:
    """``config`` with the prior's channels, blocks and/or dropout replaced (None: kept); VQ-VAE unchanged.

    Like :func:`narrow`, for measuring at equal CPU time what a CPU-trained prior should be.
    Dropout acts only in training, so a weights folder's inference is the same whatever it is.
    """
    prior = replace(config.prior, channels=channels or config.prior.channels,
                    n_blocks=n_blocks or config.prior.n_blocks,
                    dropout=config.prior.dropout if dropout is None else dropout)
    return replace(config, prior=prior)


def tiny_preset(region: str = "brain", image_size: int = 64) -> RegionConfig:
    """A small model of the same structure, for tests and smoke runs (seconds on a CPU)."""
    full = region_preset(region)
    depth = len(full.vqvae.channels) - 1
    vq = VQVAEConfig(channels=(4, 8, 8, 16, 16)[: depth] + (16,), n_codes=16, n_res_blocks=1,
                     image_size=image_size)
    prior = PriorConfig(n_codes=16, latent_size=vq.latent_size, channels=16, n_blocks=2,
                        n_res_blocks=1, first_kernel=full.prior.first_kernel,
                        attention_downsample=full.prior.attention_downsample, key_size=8)
    return replace(full, vqvae=vq, prior=prior, n_slices=8,
                   localiser=LocaliserConfig(channels=(4, 8, 8), image_size=image_size))


def is_tiny(config: RegionConfig) -> bool:
    """Whether ``config`` is a tiny twin (its prior is the tiny preset's), whatever its VQ-VAE width,
    cell and codebook (:func:`narrow`, :func:`relatent`)."""
    tiny = tiny_preset(config.region, config.vqvae.image_size).prior
    return replace(config.prior, n_codes=tiny.n_codes, latent_size=tiny.latent_size) == tiny


__all__ = ["REGIONS", "TASKS", "METHODS", "DEFAULT_METHOD", "region_of_shape", "AugmentConfig", "LocaliserConfig", "TRAINING_TASKS", "KIND_TEACHERS", "VQVAEConfig", "PriorConfig", "RegionConfig",
           "region_preset", "networks_of", "narrow", "relatent", "resize_prior", "tiny_preset", "is_tiny"]
