"""Samplers against exact distributions on enumerable problems (fixed seeds, stated tolerances)."""

import math

import pytest
import torch
from mocks import ExactDenoiser, RandomDenoiser
from scipy import stats

from dlm.diffusion.schedule import CosineSchedule, LogLinearSchedule
from dlm.samplers.ancestral import AncestralSampler
from dlm.samplers.confidence import ConfidenceSampler
from dlm.samplers.first_hitting import FirstHittingSampler, next_hitting_time
from dlm.samplers.tau_leaping import TauLeapingSampler

N = 20000


def correlated_joint(seed=0):
    """A joint over {0,1,2}^3 with strong dependence between positions (so order matters)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(3, 3, 3, generator=g).pow(4) + 0.01
    p[0, 0, 0] += 2.0
    p[2, 1, 2] += 1.5
    return p / p.sum()


def empirical_tv(tokens, joint):
    idx = tokens[:, 0] * 9 + tokens[:, 1] * 3 + tokens[:, 2]
    freq = torch.bincount(idx, minlength=27).double() / tokens.shape[0]
    return 0.5 * (freq - joint.reshape(-1).double()).abs().sum().item()


@pytest.mark.parametrize("sampler", [
    FirstHittingSampler(),
    FirstHittingSampler(schedule=CosineSchedule()),
    AncestralSampler(num_steps=400, row_cache="row"),
    ConfidenceSampler(num_steps=3, order="random", temperature=1.0),
], ids=["first_hitting", "first_hitting_cosine", "ancestral_400", "random_order"])
def test_sampler_matches_the_exact_joint(sampler):
    joint = correlated_joint()
    out = sampler(ExactDenoiser(joint), batch_size=N, length=3, generator=torch.Generator().manual_seed(0))
    # sampling noise alone gives TV ~ 0.5 * sum_x sqrt(2 p(x) / (pi N)) ~ 0.012 here
    assert empirical_tv(out.tokens, joint) < 0.03


def test_factorised_one_step_sampler_does_not_match_the_joint():
    """Negative control: the law test can fail (one step draws every position independently)."""
    joint = correlated_joint()
    out = AncestralSampler(num_steps=1)(ExactDenoiser(joint), batch_size=N, length=3,
                                        generator=torch.Generator().manual_seed(0))
    assert empirical_tv(out.tokens, joint) > 0.1


def order_statistics(reveal_times):
    """(B, L) reveal times -> (B, L) sorted descending: column k = the (k+1)-th unmasking time."""
    return reveal_times.sort(dim=-1, descending=True).values


def test_first_hitting_timing_law_matches_theory_and_ancestral():
    length, rows = 8, 4000
    model = RandomDenoiser(length, 4, 3, seed=0)
    fhs = FirstHittingSampler()(model, batch_size=rows, length=length, generator=torch.Generator().manual_seed(1))
    anc = AncestralSampler(num_steps=1000, row_cache="row")(model, batch_size=rows, length=length,
                                                        generator=torch.Generator().manual_seed(2))
    f, a = order_statistics(fhs.info["reveal_times"]), order_statistics(anc.info["reveal_times"])
    for k in range(length):
        expected = (length - k) / (length + 1)  # k-th (0-based) largest of L uniforms
        se = math.sqrt(expected * (1 - expected) / (length + 2) / rows)
        assert abs(f[:, k].mean().item() - expected) < 4 * se + 1e-3, k
        assert abs(a[:, k].mean().item() - expected) < 4 * se + 2e-3, k  # grid of 1/1000
    for k in (0, length // 2, length - 1):
        assert stats.ks_2samp(f[:, k].numpy(), a[:, k].numpy()).pvalue > 1e-3
    assert fhs.nfe == length and (fhs.info["row_nfe"] == length).all()


def test_next_hitting_time_is_the_max_of_n_uniform_hitting_times():
    tau = torch.full((100000,), 0.7, dtype=torch.float64)
    n = torch.full((100000,), 5)
    u = torch.rand(100000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = next_hitting_time(LogLinearSchedule(), tau, n, u)
    # each of n masked tokens hits at 0.7 * U; the next hit is 0.7 * max of n uniforms, mean 0.7 n/(n+1)
    assert abs(t.mean().item() - 0.7 * 5 / 6) < 3e-3


def test_per_row_and_batch_caching_give_identical_samples_and_the_nfe_formula():
    length, n_steps, rows = 16, 64, 400
    model = RandomDenoiser(length, 6, 5, seed=3)
    outs = {c: AncestralSampler(num_steps=n_steps, row_cache=c)(model, batch_size=rows, length=length,
                                                             generator=torch.Generator().manual_seed(7))
            for c in ("none", "row", "batch")}
    assert torch.equal(outs["none"].tokens, outs["row"].tokens)
    assert torch.equal(outs["none"].tokens, outs["batch"].tokens)
    expected_row = n_steps * (1 - (1 - 1 / n_steps) ** length)
    mean_row = outs["row"].info["row_nfe"].double().mean().item()
    assert abs(mean_row - expected_row) / expected_row < 0.03, (mean_row, expected_row)
    assert outs["none"].nfe == n_steps
    small = AncestralSampler(num_steps=n_steps, row_cache="batch")(model, batch_size=2, length=length,
                                                               generator=torch.Generator().manual_seed(1))
    assert small.nfe <= n_steps and outs["batch"].nfe <= n_steps


def test_tweedie_equals_ancestral_and_euler_equals_tweedie_on_loglinear_only():
    model = RandomDenoiser(8, 6, 5, seed=4)
    kw = dict(batch_size=50, length=8)
    a = AncestralSampler(num_steps=32)(model, **kw, generator=torch.Generator().manual_seed(0)).tokens
    tw = TauLeapingSampler(num_steps=32)(model, **kw, generator=torch.Generator().manual_seed(0)).tokens
    eu = TauLeapingSampler(num_steps=32, method="euler")(model, **kw, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, tw) and torch.equal(a, eu.tokens)
    cos = dict(num_steps=32, schedule=CosineSchedule())
    s = TauLeapingSampler(method="tweedie", **cos)
    e = TauLeapingSampler(method="euler", **cos)
    t, s_ = torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.5 - 1 / 32, dtype=torch.float64)
    assert not torch.isclose(s.reveal_probability(t, s_), e.reveal_probability(t, s_))
