"""Fast restoration returns exactly the reference's codes for the same uniforms."""
from __future__ import annotations

import pytest
import torch

from mood.config import PriorConfig
from mood.lsr.networks import PixelSNAIL, code_nll
from mood.lsr.restoration import draw_uniforms, inverse_cdf_sample, restore, restore_reference

CASES = {  # brain-like (attention down-sampled, 7x7 first kernel) and abdomen-like priors
    "brain": PriorConfig(n_codes=12, latent_size=8, channels=12, n_blocks=2, n_res_blocks=1,
                         first_kernel=7, attention_downsample=2, key_size=4, dropout=0.0),
    "abdom": PriorConfig(n_codes=12, latent_size=6, channels=12, n_blocks=2, n_res_blocks=1,
                         first_kernel=3, attention_downsample=1, key_size=4, dropout=0.0),
}


def random_prior(cfg: PriorConfig, dtype: torch.dtype, seed: int) -> PixelSNAIL:
    torch.manual_seed(seed)
    prior = PixelSNAIL(cfg)
    with torch.no_grad():  # spread the logits so that likelihoods vary between codes and positions
        for p in prior.parameters():
            p.mul_(3.0)
    return prior.to(dtype).eval().requires_grad_(False)


def inputs(cfg: PriorConfig, n_slices: int, n_restorations: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, cfg.n_codes, (n_slices, cfg.latent_size, cfg.latent_size), generator=g)
    coord = torch.rand(n_slices, 1, generator=g) - 0.5
    uniforms = draw_uniforms(n_slices, n_restorations, cfg.latent_size ** 2, seed)
    return codes, coord, uniforms


@pytest.mark.parametrize("region", sorted(CASES))
@pytest.mark.parametrize("quantile", [0.0, 0.3, 0.9, 1.0])
def test_fast_equals_reference_float64(region, quantile):
    cfg = CASES[region]
    prior = random_prior(cfg, torch.float64, seed=len(region) * 10 + int(quantile * 10))
    codes, coord, u = inputs(cfg, n_slices=3, n_restorations=4, seed=7)
    nll = code_nll(prior(codes, coord), codes)
    # quantile 0: nearly every code is resampled (rows that change many times);
    # quantile 1: the threshold is above every NLL at the start (rows that rarely or never change).
    threshold = float(nll.quantile(quantile)) + (1.0 if quantile == 1.0 else -1e-9)
    ref = restore_reference(prior, codes, coord, u, threshold)
    fast = restore(prior, codes, coord, u, threshold)
    assert torch.equal(ref, fast)
    changed = (ref != codes[:, None]).float().mean().item()
    if quantile == 0.0:
        assert changed > 0.5
    if quantile == 0.3:
        assert 0.05 < changed < 0.95


def test_no_resampling_returns_the_input_and_restorations_diverge():
    cfg = CASES["brain"]
    prior = random_prior(cfg, torch.float64, seed=3)
    codes, coord, u = inputs(cfg, 2, 5, seed=11)
    same = restore(prior, codes, coord, u, threshold=float("inf"))
    assert torch.equal(same, codes[:, None].expand_as(same))
    varied = restore(prior, codes, coord, u, threshold=0.0)
    assert not torch.equal(varied[:, 0], varied[:, 1])  # replicas diverge with their own uniforms


def test_float32_agreement():
    cfg = CASES["brain"]
    prior = random_prior(cfg, torch.float32, seed=5)
    codes, coord, u = inputs(cfg, 3, 4, seed=13)
    # halfway between two codes' NLLs: the median itself is one code's NLL, whose resampling decision
    # float32 rounding then flips (on an AVX2 CPU it did, for every restoration of that slice)
    nll = code_nll(prior(codes, coord), codes).flatten().sort().values
    threshold = float(nll[nll.numel() // 2 - 1: nll.numel() // 2 + 1].mean())
    ref = restore_reference(prior, codes, coord, u, threshold)
    fast = restore(prior, codes, coord, u, threshold)
    # Batches differ between the two, so float32 sums may differ in the last bit; a code can then
    # differ only when its draw sits on a CDF boundary. Report-level agreement is asserted.
    assert (ref == fast).float().mean() > 0.99


@pytest.mark.parametrize("region", sorted(CASES))
def test_restoration_runs_under_bfloat16_autocast(region):
    """The row-wise caches keep the model's dtype when autocast hands them bfloat16 rows; the
    result is close to float32 (how close on a GPU is what benchmarks/gpu_check.py reports)."""
    cfg = CASES[region]
    prior = random_prior(cfg, torch.float32, seed=7)
    codes, coord, u = inputs(cfg, 2, 3, seed=17)
    threshold = float(code_nll(prior(codes, coord), codes).quantile(0.7))
    fast = restore(prior, codes, coord, u, threshold)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = restore(prior, codes, coord, u, threshold)
    assert low.shape == fast.shape and low.dtype == fast.dtype
    assert 0 <= int(low.min()) and int(low.max()) < cfg.n_codes
    assert (low == fast).float().mean() > 0.5


def test_inverse_cdf_sampling_matches_the_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    probs = logits.softmax(-1)[0]
    u = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000
    draws = inverse_cdf_sample(logits.expand(len(u), -1), u)
    freq = torch.bincount(draws, minlength=4).double() / len(u)
    assert torch.allclose(freq, probs.double(), atol=1e-4)
    assert inverse_cdf_sample(logits, torch.tensor([0.0])).item() == 0
    assert inverse_cdf_sample(logits, torch.tensor([1.0 - 1e-16])).item() == 3


def test_uniforms_are_reproducible():
    assert torch.equal(draw_uniforms(2, 3, 4, seed=5), draw_uniforms(2, 3, 4, seed=5))
    assert not torch.equal(draw_uniforms(2, 3, 4, seed=5), draw_uniforms(2, 3, 4, seed=6))


@pytest.mark.parametrize("region", sorted(CASES))
def test_rowwise_logits_equal_the_full_pass(region):
    """Row by row from cached context gives the full network's logits (float64 rounding only)."""
    from mood.lsr.networks.rowwise import RowwisePrior

    cfg = CASES[region]
    prior = random_prior(cfg, torch.float64, seed=1)
    codes, coord, _ = inputs(cfg, 3, 1, seed=7)
    full = prior(codes, coord)
    net = RowwisePrior(prior, coord, n_states=3)
    idx = torch.arange(3)
    for r in range(cfg.latent_size):
        row = net.row_logits(r, codes, idx, idx, idx)
        net.finish_row(r, idx, idx, idx)
        assert torch.allclose(row, full[:, :, r], rtol=0, atol=1e-10)
