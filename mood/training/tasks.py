"""The localiser's teachers: synthetic anomalies drawn into normal training slices on the fly.

In: a batch of normalised slices ``x`` (B, S, S), their body mask, donor slices (other heads'
planes: the batch shifted by one), the step's generator and the task families to draw from
(:data:`mood.config.TRAINING_TASKS`). Out: the slices with anomalies and the per-pixel target
(B, S, S) in [0, 1] that the localiser learns.

These are the anomalies that *teach*; the ones that *judge* are made elsewhere
(:mod:`mood.validation.anomalies`), and a number counts only on kinds no task here makes
(:data:`mood.config.KIND_TEACHERS`). Each anomaly has a random shape -- an ellipse or a star-shaped
polygon with a wavy outline, soft-edged, 4 to 25 % of the slice across, centred on a random body
pixel -- and one of four families:

* ``interpolation`` (FPI, Tan et al. 2020): ``x + m a (y - x)`` with a donor ``y``, ``a`` in
  [0.05, 0.95], the donor taken at the same place or shifted;
* ``poisson`` (PII / NSA): the donor's patch blended in the gradient domain (an exact Poisson solve
  on the patch's box with the host's values on its border), so its edges are seamless;
* ``deformation``: a smooth displacement inside the shape, radial (sink or source) plus a random
  smooth field, the image resampled;
* ``intensity``: a smooth additive or multiplicative change of the tissue under the shape.

Anomalies change only pixels inside the body (outside stays exactly background, as at inference).
The target is change-based ("Many tasks make light work", Baugh et al. 2023):
``1 - exp(-d^2 / (2 sigma^2))`` of the absolute change ``d`` in normalised units, so that a pixel
that an anomaly left as it was is not called anomalous, and the smallest visible changes count
a little. About a fifth of the slices stay clean (target 0), so false alarms on normal anatomy
are penalised too.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import TRAINING_TASKS

#: Share of slices left without an anomaly.
CLEAN_SHARE = 0.2
#: Anomalies per anomalous slice: 1 to this many.
MAX_ANOMALIES = 3
#: Shape size: its larger radius as a fraction of the slice side.
RADIUS_RANGE = (0.02, 0.125)


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def random_shape(size: int, centre: tuple[float, float], gen: torch.Generator,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """A soft shape (size, size) in [0, 1] around ``centre`` (row, col): an ellipse or a star-shaped
    polygon (radius modulated by a few random harmonics of the angle), rotated, with an edge whose
    width is a random share of the radius."""
    r_max = _uniform(gen, *RADIUS_RANGE) * size
    ra, rb = r_max, r_max * _uniform(gen, 0.4, 1.0)
    theta = _uniform(gen, 0.0, math.pi)
    yy, xx = torch.meshgrid(torch.arange(size, device=device, dtype=torch.float32),
                            torch.arange(size, device=device, dtype=torch.float32), indexing="ij")
    dy, dx = yy - centre[0], xx - centre[1]
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    rho = torch.sqrt((u / ra) ** 2 + (v / rb) ** 2)
    if float(torch.rand((), generator=gen)) < 0.5:  # a deformed polygon: a wavy outline
        phi = torch.atan2(v / rb, u / ra)
        outline = torch.ones_like(phi)
        for k in range(2, 6):
            outline = outline + _uniform(gen, -0.15, 0.15) * torch.cos(k * phi + _uniform(gen, 0, 2 * math.pi))
        rho = rho / outline
    edge = _uniform(gen, 0.05, 0.5)
    t = ((1 - rho) / edge).clamp(0, 1)
    return t * t * (3 - 2 * t)  # smoothstep: no kink at the border


def _dst1(v: torch.Tensor, dim: int) -> torch.Tensor:
    """Unnormalised DST-I along ``dim`` through the FFT of the odd extension (its own inverse up
    to the factor ``2 / (n + 1)``)."""
    n = v.shape[dim]
    zero = torch.zeros_like(v.narrow(dim, 0, 1))
    odd = torch.cat([zero, v, zero, -v.flip(dim)], dim)
    return -torch.fft.fft(odd, dim=dim).imag.narrow(dim, 1, n) / 2


def poisson_blend(host: torch.Tensor, donor: torch.Tensor) -> torch.Tensor:
    """The patch (h, w) whose Laplacian is the donor's inside and whose border is the host's:
    ``donor + h`` with ``h`` the harmonic interpolation of ``host - donor`` from the border
    (Dirichlet problem solved exactly by the discrete sine transform)."""
    h, w = host.shape
    if h < 3 or w < 3:
        return host.clone()
    b = (host - donor).double()
    rhs = torch.zeros(h - 2, w - 2, dtype=torch.float64, device=host.device)
    rhs[0] -= b[0, 1:-1]
    rhs[-1] -= b[-1, 1:-1]
    rhs[:, 0] -= b[1:-1, 0]
    rhs[:, -1] -= b[1:-1, -1]
    n1, n2 = h - 2, w - 2
    k1 = torch.arange(1, n1 + 1, dtype=torch.float64, device=host.device)
    k2 = torch.arange(1, n2 + 1, dtype=torch.float64, device=host.device)
    eig = (2 * torch.cos(math.pi * k1 / (n1 + 1)) - 2)[:, None] + (2 * torch.cos(math.pi * k2 / (n2 + 1)) - 2)[None]
    coeff = _dst1(_dst1(rhs, 0), 1) / eig
    inner = _dst1(_dst1(coeff, 0), 1) * (4.0 / ((n1 + 1) * (n2 + 1)))
    harmonic = b.clone()
    harmonic[1:-1, 1:-1] = inner
    return (donor.double() + harmonic).to(host.dtype)


def _box(mask: torch.Tensor) -> tuple[slice, slice] | None:
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    if rows.numel() == 0:
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _shifted(donor: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The donor at the same place (half the time) or shifted by up to a quarter of the slice."""
    if float(torch.rand((), generator=gen)) < 0.5:
        return donor
    s = donor.shape[-1]
    dy, dx = (int(torch.randint(-s // 4, s // 4 + 1, (), generator=gen)) for _ in range(2))
    return donor.roll((dy, dx), (0, 1))


def _interpolation(x: torch.Tensor, m: torch.Tensor, donor: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    a = _uniform(gen, 0.05, 0.95)
    return x + m * a * (_shifted(donor, gen) - x)


def _poisson(x: torch.Tensor, m: torch.Tensor, donor: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    box = _box(m > 0)
    if box is None:
        return x
    # one pixel of margin so that the blend's border is the host's, outside the shape
    r, c = box
    r = slice(max(r.start - 1, 0), min(r.stop + 1, x.shape[0]))
    c = slice(max(c.start - 1, 0), min(c.stop + 1, x.shape[1]))
    patch = x.clone()
    patch[r, c] = poisson_blend(x[r, c], _shifted(donor, gen)[r, c])
    return x + m * _uniform(gen, 0.5, 1.0) * (patch - x)


def _deformation(x: torch.Tensor, m: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    s = x.shape[-1]
    box = _box(m > 0)
    if box is None:
        return x
    r, c = box
    radius = max(r.stop - r.start, c.stop - c.start) / 2
    cy, cx = (r.start + r.stop - 1) / 2, (c.start + c.stop - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(s, device=x.device, dtype=torch.float32),
                            torch.arange(s, device=x.device, dtype=torch.float32), indexing="ij")
    # radial: positive pulls tissue in from the rim (source: the centre swells), negative a sink
    radial = _uniform(gen, 0.15, 0.6) * (1 if float(torch.rand((), generator=gen)) < 0.5 else -1)
    dy, dx = (yy - cy) * radial * m, (xx - cx) * radial * m
    # plus a random smooth field, at most a third of the radius
    field = torch.randn(1, 2, 4, 4, generator=gen).to(x.device)
    field = F.interpolate(field, size=(s, s), mode="bicubic", align_corners=False)[0]
    amp = _uniform(gen, 0.0, 0.33) * radius / max(float(field.abs().max()), 1e-6)
    dy, dx = dy + amp * field[0] * m, dx + amp * field[1] * m
    grid = torch.stack([(xx - dx) * 2 / (s - 1) - 1, (yy - dy) * 2 / (s - 1) - 1], -1)  # sample from p - d
    out = F.grid_sample(x[None, None], grid[None], mode="bilinear", padding_mode="border", align_corners=True)
    return out[0, 0]


def _intensity(x: torch.Tensor, m: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if float(torch.rand((), generator=gen)) < 0.5:
        sign = 1 if float(torch.rand((), generator=gen)) < 0.5 else -1
        return x + m * sign * _uniform(gen, 0.2, 2.5)
    return x * (1 + m * (_uniform(gen, 0.2, 2.0) - 1))


def change_target(before: torch.Tensor, after: torch.Tensor, sigma: float) -> torch.Tensor:
    """``1 - exp(-d^2 / (2 sigma^2))`` of the change ``d = |after - before|``: 0 where unchanged."""
    d = (after - before).float()
    return 1 - torch.exp(-d * d / (2 * sigma * sigma))


def synthesise(x: torch.Tensor, body: torch.Tensor, donors: torch.Tensor, gen: torch.Generator,
               tasks: tuple[str, ...] = TRAINING_TASKS, sigma: float = 0.1,
               clean_share: float = CLEAN_SHARE) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomalies drawn into slices ``x`` (B, S, S) inside ``body`` (bool, B, S, S), patches taken
    from ``donors`` (B, S, S); returns the new slices and their targets (B, S, S) in [0, 1].

    A pure function of the generator's state: the same state gives the same anomalies."""
    unknown = sorted(set(tasks) - set(TRAINING_TASKS))
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {TRAINING_TASKS}, not {tasks}")
    out = x.clone()
    for b in range(x.shape[0]):
        inside = torch.nonzero(body[b])
        if float(torch.rand((), generator=gen)) < clean_share or inside.shape[0] < 16:
            continue
        for _ in range(int(torch.randint(1, MAX_ANOMALIES + 1, (), generator=gen))):
            cy, cx = inside[int(torch.randint(inside.shape[0], (), generator=gen))].tolist()
            m = random_shape(x.shape[-1], (cy, cx), gen, x.device) * body[b]
            task = tasks[int(torch.randint(len(tasks), (), generator=gen))]
            if task == "interpolation":
                new = _interpolation(out[b], m, donors[b], gen)
            elif task == "poisson":
                new = _poisson(out[b], m, donors[b], gen)
            elif task == "deformation":
                new = _deformation(out[b], m, gen)
            else:
                new = _intensity(out[b], m, gen)
            out[b] = torch.where(body[b], new, out[b])
    return out, change_target(x, out, sigma)


__all__ = ["CLEAN_SHARE", "change_target", "poisson_blend", "random_shape", "synthesise"]
