"""Training augmentation of normalised slices: the original method's family, in torch.

In: slices ``x`` (B, S, S) on the networks' intensity scale and a seeded ``torch.Generator``.
Out: augmented slices (B, S, S), same dtype and device.

Each slice independently (as albumentations did in the original), each transform with
probability ``p``:

- shape (one resampling, bilinear): elastic deformation (smooth random displacement field),
  scale in [0.85, 1.10] about the centre, rotation within +-5 degrees, flip of the a0 axis
  (left-right in the challenge layout); outside the image the background value is filled in;
- intensity, on the image mapped to [0, 1] by the region's range
  (:attr:`mood.config.RegionConfig.augment_range`: [-3, 3] std for brain, [-1, 1] for abdomen):
  brightness and contrast +-0.15, Gaussian blur (kernel 3, 5 or 7 with OpenCV's sigma rule),
  Gaussian noise with variance up to 0.001; then mapped back.
- added to the original's family, so that scanners and sequences it never saw count as normal:
  gamma (contrast curve, log-uniform in [1/1.4, 1.4]) and, for MRI, a smooth multiplicative
  bias field (up to +-30 %, bicubic over a 4 x 4 control grid), as on coil-shaded scans; and,
  when ``remap`` is set, a random monotone piecewise-linear intensity curve, which changes the
  contrast between tissues (grey against white matter, CSF against both) where gamma only bends
  the whole range one way; when ``resolution`` is above 1, a lower resolution (the slice resampled
  down by a random factor up to ``resolution`` and back up), as on scans acquired coarser than
  the grid they are scored on, and on smooth average templates.
- brain: voxels that are background (exactly 0) after the shape step stay exactly 0.

Deviations from the original: no clipping at +-3 std (inference never clips, so training does not);
gamma, bias field and intensity curve (above).

Every random number comes from the CPU generator, in one fixed order, whatever the slices' device;
the arithmetic (grids, resampling, fields, blur) runs on the slices' device. So slices held on a
GPU are augmented there with the random numbers a CPU run draws: on the CPU the batches are those
of a CPU run, bit for bit, and on a GPU they differ only by floating-point rounding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import AugmentConfig


def _coin(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def shape_grid(n: int, size: int, cfg: AugmentConfig, g: torch.Generator,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Sampling grids (n, S, S, 2) for ``grid_sample`` on ``device``: flip, scale, rotation and elastic."""
    angle = torch.where(_coin(n, cfg.p, g), _uniform(n, -cfg.rotate_deg, cfg.rotate_deg, g),
                        torch.zeros(n)) * math.pi / 180
    scale = torch.where(_coin(n, cfg.p, g), _uniform(n, *cfg.scale, g), torch.ones(n))
    flip = torch.where(_coin(n, cfg.p, g) & cfg.flip, -torch.ones(n), torch.ones(n))
    # Output pixel -> input pixel: inverse of (scale * rotation); grid x is columns (a1), y rows (a0).
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos * flip
    grid = F.affine_grid(theta.to(device), (n, 1, size, size), align_corners=False)  # (n, S, S, 2)
    elastic = _coin(n, cfg.p, g)
    if cfg.elastic_px > 0 and bool(elastic.any()):
        m = max(2, size // cfg.elastic_spacing + 1)
        ctrl = torch.randn(n, 2, m, m, generator=g) * elastic.view(n, 1, 1, 1)
        amp = _uniform(n, 0.0, cfg.elastic_px, g).view(n, 1, 1, 1) * 2 / size  # px -> grid units
        field = F.interpolate(ctrl.to(device), size=(size, size), mode="bicubic", align_corners=True)
        field = field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6) * amp.to(device)
        grid = grid + field.permute(0, 2, 3, 1)
    return grid


def _gaussian_kernel(k: int) -> torch.Tensor:
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8  # OpenCV's rule for sigma = 0
    t = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
    w = torch.exp(-t**2 / (2 * sigma**2))
    return w / w.sum()


def _blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """Separable Gaussian blur of (n, S, S) with reflected borders."""
    w = _gaussian_kernel(k).to(x)
    h = F.pad(x.unsqueeze(1), (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    h = F.conv2d(h, w.view(1, 1, 1, k))
    h = F.conv2d(h, w.view(1, 1, k, 1))
    return h.squeeze(1)


def intensity_curve(u: torch.Tensor, log_slopes: torch.Tensor) -> torch.Tensor:
    """Map ``u`` (n, S, S) through per-slice monotone piecewise-linear curves of [0, 1] onto itself.

    ``log_slopes`` (n, K): the log slopes of K equal segments before rescaling (zeros: the identity).
    Values beyond [0, 1] keep their offset from the nearest end, as under gamma.
    """
    n, k = log_slopes.shape
    rise = log_slopes.exp()
    knots = torch.cat([torch.zeros(n, 1), rise.cumsum(1) / rise.sum(1, keepdim=True)], dim=1).to(u)  # (n, K+1)
    inside = u.clamp(0.0, 1.0)
    t = inside.flatten(1) * k
    seg = t.floor().clamp_max(k - 1).long()
    lo, hi = knots.gather(1, seg), knots.gather(1, seg + 1)
    return (lo + (t - seg) * (hi - lo)).view_as(u) + (u - inside)


def augment(x: torch.Tensor, generator: torch.Generator, cfg: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """Augment slices (B, S, S); every random number comes from ``generator`` (CPU)."""
    if x.ndim != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(f"expected slices (B, S, S), got {tuple(x.shape)}")
    n, size = x.shape[0], x.shape[-1]
    g = generator
    device, dtype = x.device, x.dtype
    bg = cfg.background

    grid = shape_grid(n, size, cfg, g, device).float()
    y = F.grid_sample((x.float() - bg).unsqueeze(1), grid, mode="bilinear", padding_mode="zeros",
                      align_corners=False).squeeze(1) + bg  # (n, S, S)
    background = y == bg
    # lower resolution (drawn only when on, so that runs without it keep their random numbers)
    if cfg.resolution > 1:
        coarse = _coin(n, cfg.p, g)
        factor = _uniform(n, 1.0, cfg.resolution, g)
        for i in coarse.nonzero().flatten().tolist():
            low = max(2, round(size / float(factor[i])))
            small = F.interpolate(y[i:i + 1, None], size=(low, low), mode="bilinear", align_corners=False,
                                  antialias=True)
            y[i] = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)[0, 0]

    lo, hi = cfg.value_range
    u = (y - lo) / (hi - lo)
    # brightness / contrast (albumentations: alpha * u + beta, beta relative to the max value 1)
    bc = _coin(n, cfg.p, g)
    alpha = torch.where(bc, _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, g), torch.ones(n))
    beta = torch.where(bc, _uniform(n, -cfg.brightness, cfg.brightness, g), torch.zeros(n))
    u = u * alpha.to(u).view(n, 1, 1) + beta.to(u).view(n, 1, 1)
    # blur
    blur = _coin(n, cfg.p, g)
    kernel = torch.randint(len(cfg.blur_kernels), (n,), generator=g)
    for ki, k in enumerate(cfg.blur_kernels):
        sel = (blur & (kernel == ki)).nonzero().flatten().to(device)
        if len(sel) and k > 1:
            u[sel] = _blur(u[sel], k)
    # noise
    noisy = _coin(n, cfg.p, g)
    std = torch.where(noisy, _uniform(n, 0.0, cfg.noise_var, g).sqrt(), torch.zeros(n))
    u = u + torch.randn(u.shape, generator=g).to(u) * std.to(u).view(n, 1, 1)
    # gamma, on [0, 1] only; what lies beyond the range keeps its offset
    curved = _coin(n, cfg.p, g)
    log_gamma = torch.where(curved, _uniform(n, -math.log(cfg.gamma), math.log(cfg.gamma), g), torch.zeros(n))
    inside = u.clamp(0.0, 1.0)
    u = inside ** log_gamma.exp().to(u).view(n, 1, 1) + (u - inside)
    # bias field
    if cfg.bias_field > 0:
        shaded = _coin(n, cfg.p, g)
        ctrl = torch.randn(n, 1, cfg.bias_grid, cfg.bias_grid, generator=g)
        amp = torch.where(shaded, _uniform(n, 0.0, cfg.bias_field, g), torch.zeros(n))
        field = F.interpolate(ctrl.to(device), size=(size, size), mode="bicubic", align_corners=True).squeeze(1)
        field = field / field.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)
        u = u * torch.exp(field * amp.to(device).view(n, 1, 1)).to(u)
    # intensity curve (drawn only when on, so that runs without it keep their random numbers)
    if cfg.remap > 0:
        curved = _coin(n, cfg.p, g)
        log_slopes = torch.randn(n, cfg.remap_knots, generator=g) * cfg.remap * curved.view(n, 1)
        u = intensity_curve(u, log_slopes)

    y = u * (hi - lo) + lo
    if cfg.keep_background:
        y = torch.where(background, torch.full_like(y, bg), y)
    return y.to(dtype)


__all__ = ["AugmentConfig", "augment", "intensity_curve", "shape_grid"]
