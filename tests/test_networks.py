"""Network structure: the reference's parameter counts, shapes, and causality of every prior layer."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from mood.config import PriorConfig, region_preset, tiny_preset
from mood.lsr.networks import VQVAE, PixelSNAIL
from mood.lsr.networks.pixelsnail import CausalAttention, GatedResBlock, MaskedConv2d, PixelBlock, down_shift


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize("region, vq, prior", [("brain", 7_677_185, 12_396_800),
                                               ("abdom", 10_951_169, 11_872_512)])
def test_parameter_counts_equal_the_reference(region, vq, prior):
    cfg = region_preset(region)
    assert n_params(VQVAE(cfg.vqvae)) == vq
    assert n_params(PixelSNAIL(cfg.prior)) == prior


@pytest.mark.parametrize("region", ["brain", "abdom"])
def test_shapes(region):
    cfg = tiny_preset(region)
    vq, prior = VQVAE(cfg.vqvae).eval(), PixelSNAIL(cfg.prior).eval()
    x, coord = torch.rand(3, 64, 64), torch.zeros(3, 1)
    recon, q = vq(x, coord)
    lat = cfg.vqvae.latent_size
    assert recon.shape == x.shape
    assert q.codes.shape == (3, lat, lat) and q.latents.shape == (3, cfg.vqvae.code_dim, lat, lat)
    assert prior(q.codes, coord).shape == (3, cfg.prior.n_codes, lat, lat)
    assert torch.allclose(vq.decode_codes(q.codes, coord), vq.decode(q.latents, coord), atol=1e-5)


def _probe(f, shape, r, c, generator):
    """Outputs of f for a random input and for the same input changed at (r, c) only."""
    x = torch.randn(shape, dtype=torch.float64, generator=generator)
    y = x.clone()
    y[:, :, r, c] += torch.randn(shape[1], dtype=torch.float64, generator=generator) * 5
    return f(x), f(y)


def _raster_before(h, w, r, c, inclusive):
    idx = torch.arange(h * w).view(h, w)
    return idx <= r * w + c if inclusive else idx < r * w + c


def _enlarge(module: torch.nn.Module, factor: float = 4.0) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(factor)
    return module.double().eval()


# Each layer's rule: which outputs must not change when the input changes at (r, c).
# "before": positions strictly before (r, c) in raster order; "upto": up to and including it;
# "rows_above": whole rows above r.
LAYERS = {
    "masked_conv_A": (lambda: MaskedConv2d(3, 3, 5, "A"), "upto"),
    "masked_conv_B": (lambda: MaskedConv2d(3, 3, 5, "B"), "before"),
    "v_stack_res": (lambda: GatedResBlock(3, (2, 3)), "rows_above"),
    "h_stack_res": (lambda: GatedResBlock(3, (2, 2)), "before"),
    "down_shift": (lambda: down_shift, "rows_above_inclusive"),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_each_prior_layer_is_causal(name):
    make, rule = LAYERS[name]
    g = torch.Generator().manual_seed(1)
    layer = make()
    f = _enlarge(layer) if isinstance(layer, torch.nn.Module) else layer
    h = w = 8
    for r, c in [(0, 0), (3, 4), (6, 6), (5, 0)]:
        a, b = _probe(f, (2, 3, h, w), r, c, g)
        same = (a - b).abs().amax(dim=(0, 1)) == 0  # (h, w)
        if rule == "upto":
            must = _raster_before(h, w, r, c, inclusive=True)
        elif rule == "before":
            must = _raster_before(h, w, r, c, inclusive=False)
        elif rule == "rows_above":
            must = torch.arange(h).view(h, 1).expand(h, w) < r
        else:
            must = torch.arange(h).view(h, 1).expand(h, w) <= r
        assert same[must].all(), f"{name} leaks from {(r, c)}"
        assert not same.all(), f"{name} ignores its input at {(r, c)}"


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_masked_conv_of_codes_is_its_convolution_of_one_hot_codes(mask_type):
    g = torch.Generator().manual_seed(4)
    conv = MaskedConv2d(6, 5, 5, mask_type).double()
    with torch.no_grad():
        conv.weight.normal_(generator=g)
        conv.bias.normal_(generator=g)
    codes = torch.randint(0, 6, (3, 7, 8), generator=g)
    codes[:, 0, :3] = 6  # reads as zeros (padding)
    one_hot = F.one_hot(codes, 7)[..., :6].permute(0, 3, 1, 2).double()
    want = conv(one_hot)
    got = conv.of_codes(codes, 6)
    assert got.shape == want.shape == (3, 5, 7, 8)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    grads = [torch.autograd.grad((out * want.detach()).sum(), (conv.weight, conv.bias)) for out in (got, want)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)
    for r in (0, 1, 4, 6):  # a window of the rows it reads (fewer at the top) gives row r alone
        row = conv.of_codes(codes[:, max(0, r - 2): r + 1], 6, last_row=True)
        assert torch.allclose(row, want[:, :, r: r + 1], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="stride 1"):
        MaskedConv2d(6, 5, 5, mask_type, stride=2).of_codes(codes, 6)


@pytest.mark.parametrize("downsample", [1, 2])
def test_attention_and_pixel_block_are_causal(downsample):
    cfg = PriorConfig(n_codes=8, latent_size=8, channels=6, n_blocks=1, n_res_blocks=1,
                      attention_downsample=downsample, key_size=4, dropout=0.0)
    block = _enlarge(PixelBlock(cfg))
    attn = _enlarge(CausalAttention(6, 4))
    g = torch.Generator().manual_seed(2)
    cond = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    background = torch.zeros(2, 2, 8, 8, dtype=torch.float64)
    for r, c in [(0, 1), (2, 5), (6, 3)]:
        # Attention: output position i sees only keys/values at earlier positions, and the query of i.
        q = torch.randn(2, 6, 8, 8, dtype=torch.float64, generator=g)
        a, b = _probe(lambda k: attn(q, k), (2, 6, 8, 8), r, c, g)
        same = (a - b).abs().amax(dim=(0, 1)) == 0
        assert same[_raster_before(8, 8, r, c, inclusive=True)].all()
        a, b = _probe(lambda x: block(x, cond, background), (2, 6, 8, 8), r, c, g)
        same = (a - b).abs().amax(dim=(0, 1)) == 0
        # The block input at (r, c) is the output of a strictly causal layer, so the block may use it
        # at (r, c) itself: only strictly earlier outputs must be unaffected.
        assert same[_raster_before(8, 8, r, c, inclusive=False)].all()
        assert not same.all()


@pytest.mark.parametrize("region", ["brain", "abdom"])
def test_prior_is_causal_and_accepts_leading_rows(region):
    cfg = replace(tiny_preset(region).prior, latent_size=8, dropout=0.0)
    prior = _enlarge(PixelSNAIL(cfg), 3.0)
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, cfg.n_codes, (2, 8, 8), generator=g)
    coord = torch.tensor([[-0.3], [0.2]])
    full = prior(codes, coord)
    for p in [0, 13, 37, 63]:
        r, c = divmod(p, 8)
        other = codes.clone()
        other[:, r, c] = (other[:, r, c] + 1) % cfg.n_codes
        changed = (prior(other, coord) - full).abs().amax(dim=(0, 1)) > 0
        assert not changed.view(-1)[: p + 1].any(), f"logits up to position {p} depend on it"
        if p < 63:
            assert changed.view(-1)[p + 1:].any()
    for h in (1, 3, 5, 8):  # odd heights exercise the stride-2 attention path's cropping
        assert torch.allclose(prior(codes[:, :h], coord), full[:, :, :h], rtol=0, atol=1e-12)
