"""The localiser's teachers (mood.training.tasks): shapes, the Poisson blend, synthetic anomalies."""
from __future__ import annotations

import math

import pytest
import torch

from mood.config import TRAINING_TASKS
from mood.training.tasks import change_target, poisson_blend, random_shape, synthesise

S = 48


def _laplacian(v: torch.Tensor) -> torch.Tensor:
    """The 5-point discrete Laplacian at the interior pixels of ``v`` (h - 2, w - 2)."""
    return v[:-2, 1:-1] + v[2:, 1:-1] + v[1:-1, :-2] + v[1:-1, 2:] - 4 * v[1:-1, 1:-1]


def phantom_slices(batch: int = 4, size: int = S, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-looking slices: a textured disc (stripes, a bright rim, noise) on a zero
    background, each slice a little different; and the body mask (the disc)."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    r = torch.sqrt((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (0.42 * size)
    body = (r < 1).expand(batch, size, size).clone()
    slices = []
    for b in range(batch):
        tissue = (0.8 * torch.sin(yy / 2.5 + b) * torch.cos(xx / 3.5 - b) + 0.6 * (r > 0.8).float()
                  + 0.15 * torch.randn(size, size, generator=gen))
        slices.append(torch.where(r < 1, tissue, torch.zeros(())))
    return torch.stack(slices), body


# -- random_shape ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_random_shape_is_soft_one_at_its_centre_and_zero_far_away(seed):
    gen = torch.Generator().manual_seed(seed)
    centre = (S / 4, S / 3)
    m = random_shape(S, centre, gen)
    assert m.shape == (S, S) and m.dtype == torch.float32
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    assert float(m[round(centre[0]), round(centre[1])]) == pytest.approx(1.0, abs=0.02)  # pixel next to the centre
    # the larger radius is at most 12.5 % of the side and the wavy outline at most 1.6 times it
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    far = torch.sqrt((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) > 0.21 * S
    assert float(m[far].max()) == 0.0
    assert 0 < int((m > 0).sum()) < S * S / 4


def test_random_shape_is_a_function_of_the_generator():
    a = random_shape(S, (20.0, 20.0), torch.Generator().manual_seed(3))
    b = random_shape(S, (20.0, 20.0), torch.Generator().manual_seed(3))
    c = random_shape(S, (20.0, 20.0), torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- poisson_blend --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(9, 9), (7, 13), (16, 5), (3, 3)])
def test_poisson_blend_keeps_the_hosts_border_and_the_donors_laplacian(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    host = torch.randn(shape, generator=gen, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(shape[0], dtype=torch.float64),
                            torch.arange(shape[1], dtype=torch.float64), indexing="ij")
    donor = 3.0 + torch.sin(yy) * xx + torch.randn(shape, generator=gen, dtype=torch.float64)
    out = poisson_blend(host, donor)
    assert out.shape == host.shape and out.dtype == torch.float64
    border = torch.ones(shape, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    torch.testing.assert_close(out[border], host[border], rtol=0, atol=1e-12)
    torch.testing.assert_close(_laplacian(out), _laplacian(donor), rtol=0, atol=1e-9)
    # and it is not simply the donor: its level follows the host's border
    assert float((out - donor)[1:-1, 1:-1].abs().max()) > 0.1


def test_poisson_blend_of_a_donor_that_agrees_with_the_host_on_the_border_is_the_donor():
    gen = torch.Generator().manual_seed(0)
    donor = torch.randn(10, 12, generator=gen, dtype=torch.float64)
    host = torch.randn(10, 12, generator=gen, dtype=torch.float64)
    host[1:-1, 1:-1] = 0.0
    host[0], host[-1], host[:, 0], host[:, -1] = donor[0], donor[-1], donor[:, 0], donor[:, -1]
    torch.testing.assert_close(poisson_blend(host, donor), donor, rtol=0, atol=1e-10)


def test_poisson_blend_of_a_thin_patch_is_the_host():
    host, donor = torch.arange(10.0).view(2, 5), torch.full((2, 5), 7.0)
    out = poisson_blend(host, donor)
    assert torch.equal(out, host) and out is not host


def test_poisson_blend_keeps_float32():
    gen = torch.Generator().manual_seed(1)
    host, donor = torch.randn(8, 8, generator=gen), torch.randn(8, 8, generator=gen)
    out = poisson_blend(host, donor)
    assert out.dtype == torch.float32
    torch.testing.assert_close(_laplacian(out.double()), _laplacian(donor.double()), rtol=0, atol=1e-5)


# -- change_target --------------------------------------------------------------------------------
def test_change_target_is_zero_where_unchanged_and_grows_with_the_change():
    before = torch.zeros(5)
    after = torch.tensor([0.0, -0.05, 0.1, 0.3, 2.0])
    t = change_target(before, after, sigma=0.1)
    assert float(t[0]) == 0.0
    assert float(t[2]) == pytest.approx(1 - math.exp(-0.5), rel=1e-6)  # d = sigma
    assert float(t[1]) == pytest.approx(1 - math.exp(-0.125), rel=1e-6)  # the sign does not matter
    assert bool((t[1:].diff() > 0).all()) and float(t[-1]) == pytest.approx(1.0)


# -- synthesise -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_synthesise_changes_only_body_pixels_and_its_target_follows_the_change(seed):
    x, body = phantom_slices(batch=6, seed=seed)
    out, target = synthesise(x, body, x.roll(1, 0), torch.Generator().manual_seed(seed), clean_share=0.0)
    assert out.shape == target.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out[~body], x[~body])  # outside the body: exactly as it was
    changed = out != x
    assert int(changed.sum()) > 20  # every slice gets 1 to 3 anomalies
    assert float(target.min()) >= 0.0 and float(target.max()) <= 1.0
    assert float(target[~changed].abs().max()) == 0.0  # nothing changed: target 0
    visible = (out - x).abs() > 1e-3
    assert bool((target[visible] > 0).all()) and float(target.max()) > 0.5
    torch.testing.assert_close(target, change_target(x, out, 0.1))


def test_synthesise_is_a_pure_function_of_the_generator():
    x, body = phantom_slices(batch=6)
    donors = x.roll(1, 0)
    a = synthesise(x, body, donors, torch.Generator().manual_seed(11))
    b = synthesise(x, body, donors, torch.Generator().manual_seed(11))
    c = synthesise(x, body, donors, torch.Generator().manual_seed(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert torch.equal(x, phantom_slices(batch=6)[0])  # the input is not changed in place


def test_label_sigma_scales_the_target():
    x, body = phantom_slices(batch=4)
    out1, t1 = synthesise(x, body, x.roll(1, 0), torch.Generator().manual_seed(2), sigma=0.1, clean_share=0.0)
    out2, t2 = synthesise(x, body, x.roll(1, 0), torch.Generator().manual_seed(2), sigma=0.5, clean_share=0.0)
    assert torch.equal(out1, out2)  # the same anomalies
    changed = out1 != x
    assert bool((t2[changed] <= t1[changed]).all()) and float((t1 - t2)[changed].max()) > 0.1


@pytest.mark.parametrize("task", TRAINING_TASKS)
def test_each_task_family_alone_changes_the_tissue(task):
    x, body = phantom_slices(batch=4, seed=5)
    donors = phantom_slices(batch=4, seed=6)[0].roll(1, 0)  # other "heads"
    out, target = synthesise(x, body, donors, torch.Generator().manual_seed(7), tasks=(task,), clean_share=0.0)
    change = (out - x).abs()
    assert torch.equal(out[~body], x[~body])
    for b in range(4):  # each slice: a visible anomaly, small against the slice
        n = int((change[b] > 0.05).sum())
        assert 3 <= n < int(body[b].sum()) * 0.9, (task, b, n)
    assert float(target.max()) > 0.5


def test_clean_share_one_changes_nothing():
    x, body = phantom_slices(batch=5)
    out, target = synthesise(x, body, x.roll(1, 0), torch.Generator().manual_seed(0), clean_share=1.0)
    assert torch.equal(out, x) and float(target.abs().max()) == 0.0


def test_clean_share_leaves_about_that_share_of_slices_clean():
    x, body = phantom_slices(batch=40)
    out, _ = synthesise(x, body, x.roll(1, 0), torch.Generator().manual_seed(0), clean_share=0.5)
    clean = int(((out != x).flatten(1).sum(1) == 0).sum())
    assert 8 <= clean <= 32  # 20 expected; binomial(40, 0.5) stays in [8, 32] but for 1e-4 of the seeds


def test_a_slice_with_almost_no_body_is_left_alone():
    x, body = phantom_slices(batch=2)
    body[0] = False
    body[0, 10, 10:20] = True  # 10 body pixels: too few to place an anomaly
    out, target = synthesise(x, body, x.roll(1, 0), torch.Generator().manual_seed(0), clean_share=0.0)
    assert torch.equal(out[0], x[0]) and float(target[0].max()) == 0.0
    assert not torch.equal(out[1], x[1])


@pytest.mark.parametrize("tasks", [("interpolation", "blur"), (), ("Intensity",)])
def test_unknown_or_no_tasks_are_refused(tasks):
    x, body = phantom_slices(batch=2)
    with pytest.raises(ValueError, match="tasks"):
        synthesise(x, body, x.roll(1, 0), torch.Generator().manual_seed(0), tasks=tasks)
