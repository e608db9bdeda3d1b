"""Geometry: which slices are scored, and that scores land back where they were computed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mood.config import region_preset
from mood.common.slicing import (body_mask, extract_slices, foreground_stats, normalise, relative_position,
                          slice_grid, slices_to_volume)


def test_slices_are_chosen_by_their_centres():
    grid = slice_grid((256, 256, 256), 32)
    assert grid.indices == tuple(range(4, 256, 8))
    assert slice_grid((512, 512, 512), 32).indices == tuple(range(8, 512, 16))
    assert slice_grid((10, 10, 5), 32).indices == (0, 1, 2, 3, 4)  # thinner than n: every plane
    pos = grid.positions.squeeze(1)
    assert torch.allclose(pos, (torch.arange(4, 256, 8) + 0.5) / 256 - 0.5)
    assert pos.min() > -0.5 and pos.max() < 0.5
    assert abs(float(pos.mean())) <= 0.5 / 256 + 1e-6  # centred to within half a voxel


def test_relative_position_is_the_plane_centre():
    assert float(relative_position(torch.tensor(0.0), 4)) == pytest.approx(-0.375)
    assert float(relative_position(torch.tensor(3.0), 4)) == pytest.approx(0.375)


@pytest.mark.parametrize("shape", [(256, 256, 256), (512, 512, 512), (200, 150, 90), (97, 181, 40)])
def test_marker_lands_where_it_was(shape):
    """A marker at a scored plane comes back centred on its voxel, for both regions' grids."""
    grid = slice_grid(shape, 32)
    vol = torch.zeros(shape)
    m = (shape[0] // 3, (shape[1] * 2) // 3, grid.indices[len(grid.indices) // 3])
    rad = max(2, shape[0] // 40)
    vol[m[0] - rad:m[0] + rad + 1, m[1] - rad:m[1] + rad + 1, m[2]] = 1.0
    back = slices_to_volume(extract_slices(vol, grid, 160), grid)
    assert back.shape == shape and back.flags.f_contiguous
    assert back.dtype == np.float32
    # Peak plane is the marker's plane, and the in-plane centre of mass is the marker's centre.
    assert int(back.sum(axis=(0, 1)).argmax()) == m[2]
    plane = back[:, :, m[2]]
    com = [float((plane.sum(axis=1 - ax) * np.arange(shape[ax])).sum() / plane.sum()) for ax in (0, 1)]
    assert com == pytest.approx([m[0], m[1]], abs=0.6)
    # Between scored planes the map is interpolated, not shifted: symmetric around the marker.
    step = grid.indices[1] - grid.indices[0]
    assert back[m[0], m[1], m[2] - step // 2] == pytest.approx(back[m[0], m[1], m[2] + step // 2], abs=1e-3)


def test_constant_round_trip_and_ends():
    shape = (40, 30, 20)
    grid = slice_grid(shape, 4)
    scores = torch.arange(4, dtype=torch.float32).view(4, 1, 1).expand(4, 16, 16)
    back = slices_to_volume(scores, grid)
    assert np.allclose(back[:, :, : grid.indices[0] + 1], 0)  # constant before the first plane
    assert np.allclose(back[:, :, grid.indices[-1]:], 3)  # and after the last
    assert np.allclose(back[:, :, grid.indices[1]], 1)


def test_anti_aliasing_when_shrinking():
    checker = (torch.arange(256).view(-1, 1) + torch.arange(256).view(1, -1)) % 2
    vol = checker.float().unsqueeze(2).expand(256, 256, 8).contiguous()
    s = extract_slices(vol, slice_grid(vol.shape, 2), 160)
    assert s.shape == (2, 160, 160)
    assert float(s.std()) < 0.05  # a checkerboard averages out instead of aliasing


def test_normalisation():
    vol = torch.zeros(20, 20, 10)
    vol[5:15, 5:15] = torch.linspace(0.2, 0.8, 10)
    grid = slice_grid(vol.shape, 10)
    x = extract_slices(vol, grid, 20)
    brain = normalise(x, vol, region_preset("brain"))
    assert torch.all(brain[x <= 0.05] == 0)
    mu, sd = foreground_stats(vol, 0.05)
    assert float(brain[x > 0.05].mean()) == pytest.approx((float(x[x > 0.05].mean()) - mu) / sd, abs=1e-5)
    abdom = normalise(x, vol, region_preset("abdom"))
    assert torch.allclose(abdom, 2 * x - 1)


@pytest.mark.parametrize("region", ["brain", "abdom"])
def test_body_mask_is_what_normalise_leaves_outside_the_body(region):
    """The background value of the region's config is what ``normalise`` writes outside the body,
    and ``body_mask`` finds exactly the body again."""
    config = region_preset(region)
    vol = torch.zeros(32, 32, 8)
    vol[8:24, 6:26] = 0.3 + 0.4 * torch.rand(16, 20, 8, generator=torch.Generator().manual_seed(0))
    x = normalise(extract_slices(vol, slice_grid(tuple(vol.shape), 8), 32), vol, config)  # (8, 32, 32)
    body = vol.permute(2, 0, 1) > 0
    assert (x[~body] == config.background).all()
    assert torch.equal(body_mask(x, config), body)
