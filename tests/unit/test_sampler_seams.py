"""The sampler seams: time grids, per-step scalars, per-step records, whole-x0 proposals, gradients,
and the decodable-model checks. ``ProposalSampler`` below is a new sampler written on the shared step
(a test-only example of what EDLM / SVDD-style samplers look like on it)."""

from __future__ import annotations

import math

import pytest
import torch
from mocks import BigramAR, ExactDenoiser, OracleDenoiser, RandomDenoiser
from test_samplers_law import N, correlated_joint, empirical_tv
from torch import Tensor

from dlm.diffusion.posterior import unmask_probability
from dlm.diffusion.schedule import LogLinearSchedule
from dlm.errors import ConfigError
from dlm.models.transformer import Transformer
from dlm.samplers.ancestral import AncestralSampler
from dlm.samplers.autoregressive import AutoregressiveSampler
from dlm.samplers.canvas import init_canvas
from dlm.samplers.categorical import TokenSampling, gumbel_argmax
from dlm.samplers.confidence import ConfidenceSampler
from dlm.samplers.first_hitting import FirstHittingSampler
from dlm.samplers.step import DenoiseStep, Trajectory
from dlm.samplers.tau_leaping import TauLeapingSampler
from dlm.samplers.timesteps import check_timesteps, uniform_timesteps
from dlm.types import SampleOutput

V, MASK, L, B = 5, 4, 8, 4


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class ProposalSampler:
    """Example sampler on the shared step: a given time grid, k whole-x0 proposals per row drawn from
    p_theta(x0 | x_t) at every masked position, the best under ``score`` kept, then the absorbing
    posterior step toward it (reveal w.p. psi); a per-step record of committed log-probabilities."""

    decodes = frozenset({"bidirectional"})

    def __init__(self, *, timesteps, num_candidates: int = 1, score=None) -> None:
        self.grid, self.k, self.score = check_timesteps(timesteps), num_candidates, score
        self.step, self.schedule = DenoiseStep(TokenSampling()), LogLinearSchedule()

    @torch.no_grad()
    def __call__(self, model, *, batch_size: int, length: int, prompt: Tensor | None = None,
                 generator: torch.Generator | None = None) -> SampleOutput:
        x = init_canvas(model, batch_size=batch_size, length=length, prompt=prompt)
        record, nfe, n = Trajectory(), 0, self.grid.numel() - 1
        for i in range(n):
            masked = x == model.mask_id
            t = self.grid[i].expand(batch_size)
            log_p = self.step.x0_log_probs(model, x, t)  # (B, L, V): one call, every position
            nfe += 1
            draws = gumbel_argmax(log_p[:, None].expand(-1, self.k, -1, -1), generator=generator)  # (B, k, L)
            cand = torch.where(masked[:, None], draws, x[:, None])
            best = self.score(cand).argmax(-1) if self.score is not None else torch.zeros_like(t, dtype=torch.long)
            x0 = cand[torch.arange(batch_size), best]  # (B, L)
            psi = 1.0 if i == n - 1 else unmask_probability(self.schedule.alpha(self.grid[i]),
                                                            self.schedule.alpha(self.grid[i + 1]))
            revealed = masked & (torch.rand(x.shape, dtype=torch.float64, generator=generator) < psi)
            x = torch.where(revealed, x0, x)
            chosen = log_p.gather(-1, x0[..., None])[..., 0]
            record.add(x, torch.where(revealed, chosen, torch.zeros_like(chosen)))
        return SampleOutput(tokens=x, nfe=nfe, seconds=0.0, trajectory=record.canvases,
                            info={"step_log_probs": record.log_probs})


def test_example_sampler_on_the_step_is_exact_in_law_and_records_its_rollout():
    joint = correlated_joint()
    grid = [1.0, 0.7, 0.45, 0.2, 0.0]  # a non-uniform grid, as LSD+ would learn
    out = ProposalSampler(timesteps=grid)(ExactDenoiser(joint), batch_size=N, length=3, generator=gen(0))
    assert out.nfe == 4 and len(out.trajectory) == 4 and torch.equal(out.trajectory[-1], out.tokens)
    committed = torch.stack([lp != 0 for lp in out.info["step_log_probs"]])  # (S, N, 3)
    assert (committed.sum(0) <= 1).all()
    # with k = 1 on a fine (non-uniform) grid it is the ancestral sampler: exact in law
    fine = 1 - torch.linspace(0, 1, 201) ** 2
    fine_out = ProposalSampler(timesteps=fine)(ExactDenoiser(joint), batch_size=N, length=3, generator=gen(5))
    assert empirical_tv(fine_out.tokens, joint) < 0.03
    # negative control: a coarse grid draws correlated positions together and misses the law
    assert empirical_tv(out.tokens, joint) > 0.03
    # proposals scored toward token 0 shift the law (best-of-k), k = 1 does not
    count0 = lambda c: (c == 0).sum(-1).float()  # noqa: E731
    tilted = ProposalSampler(timesteps=grid, num_candidates=4, score=count0)(
        ExactDenoiser(joint), batch_size=N, length=3, generator=gen(1))
    assert (tilted.tokens == 0).float().mean() > (out.tokens == 0).float().mean() + 0.05


def test_first_hitting_record_sums_to_the_exact_log_likelihood():
    """One token per call from exact conditionals: the recorded log-probs sum to log p(x) per row."""
    joint = correlated_joint()
    out = FirstHittingSampler(record_trajectory=True)(ExactDenoiser(joint), batch_size=64, length=3,
                                                      generator=gen(2))
    total = torch.stack(out.info["step_log_probs"]).sum(0).sum(-1).double()  # (B,)
    exact = joint.log()[out.tokens[:, 0], out.tokens[:, 1], out.tokens[:, 2]].double()
    torch.testing.assert_close(total, exact, atol=1e-4, rtol=0)
    assert len(out.trajectory) == out.nfe == 3 and torch.equal(out.trajectory[-1], out.tokens)


@pytest.mark.parametrize("make", [lambda **kw: AncestralSampler(num_steps=6, **kw),
                                  lambda **kw: ConfidenceSampler(num_steps=4, temperature=1.0, **kw)],
                         ids=["ancestral", "confidence"])
def test_record_marks_exactly_the_committed_tokens(make):
    model = RandomDenoiser(L, V, MASK, seed=4)
    plain = make()(model, batch_size=B, length=L, generator=gen(3))
    rec = make(record_trajectory=True)(model, batch_size=B, length=L, generator=gen(3))
    assert torch.equal(plain.tokens, rec.tokens) and plain.nfe == rec.nfe, "recording must not change samples"
    before = torch.full((B, L), MASK)
    for canvas, lp in zip(rec.trajectory, rec.info["step_log_probs"], strict=True):
        new = (before == MASK) & (canvas != MASK)
        assert torch.equal(lp != 0, new) and (lp[new] <= 0).all()
        before = canvas
    assert torch.equal(rec.trajectory[-1], rec.tokens)


def test_uniform_timesteps_and_identity_scales_are_the_default_sampler_bit_for_bit():
    model = RandomDenoiser(L, V, MASK, seed=5)
    kw = dict(batch_size=B, length=L, prompt=torch.tensor([1]))
    base = AncestralSampler(num_steps=7)(model, **kw, generator=gen(4))
    grid = uniform_timesteps(7).tolist()
    for s in (AncestralSampler(timesteps=grid), AncestralSampler(num_steps=7, logit_scales=[1.0] * 7,
                                                                 rate_scales=[1.0] * 7)):
        out = s(model, **kw, generator=gen(4))
        assert torch.equal(out.tokens, base.tokens) and out.nfe == base.nfe
    tau = TauLeapingSampler(timesteps=grid)(model, **kw, generator=gen(4))
    assert torch.equal(tau.tokens, base.tokens)


def test_per_step_scalars_change_the_step():
    model = RandomDenoiser(L, V, MASK, seed=6)
    # a rate scale that saturates psi reveals everything at the first step: one call
    out = AncestralSampler(num_steps=10, rate_scales=[1e6] * 10)(model, batch_size=B, length=L, generator=gen(0))
    assert out.nfe == 1 and not (out.tokens == MASK).any()
    # logit scale 0 makes every real token equally likely (whatever the network says)
    flat = AncestralSampler(num_steps=1, logit_scales=[0.0])(OracleDenoiser(torch.zeros(N, 2, dtype=torch.long), V, MASK),
                                                              batch_size=N, length=2, generator=gen(1))
    freq = torch.bincount(flat.tokens.reshape(-1), minlength=V).double() / flat.tokens.numel()
    assert (freq[:MASK] - 1 / MASK).abs().max() < 0.02 and freq[MASK] == 0


def test_bad_timesteps_and_scales_are_refused():
    for grid, msg in (([1.0, 0.5, 0.5, 0.0], "strictly decreasing"), ([1.2, 0.0], r"\[0, 1\]"), ([1.0], "two")):
        with pytest.raises(ConfigError, match=msg):
            AncestralSampler(timesteps=grid)
    with pytest.raises(ValueError, match="logit_scales has 2 entries for 3 steps"):
        AncestralSampler(num_steps=3, logit_scales=[1.0, 1.0])


def test_step_is_differentiable_outside_the_samplers_no_grad():
    torch.manual_seed(0)
    model = Transformer(vocab_size=V, mask_id=MASK, dim=16, n_layers=1, n_heads=2, max_seq_len=L)
    step = DenoiseStep(TokenSampling())
    x = init_canvas(model, batch_size=2, length=L, prompt=torch.tensor([1, 2]))
    scale = torch.tensor(1.5, requires_grad=True)
    log_p = step.x0_log_probs(model, x, None, logit_scale=scale)
    log_p[:, 2:, 0].sum().backward()
    assert scale.grad is not None and math.isfinite(scale.grad.item()) and scale.grad.item() != 0
    assert model.lm_head.weight.grad is not None


def test_samplers_refuse_models_they_cannot_decode():
    ar = BigramAR(V, MASK)
    for sampler in (AncestralSampler(num_steps=4), FirstHittingSampler(), ConfidenceSampler()):
        with pytest.raises(ConfigError, match="attention='causal'.*sampler=autoregressive"):
            sampler(ar, batch_size=1, length=4, prompt=torch.tensor([0]))
    with pytest.raises(ConfigError, match="attention='bidirectional'.*masked-diffusion sampler"):
        AutoregressiveSampler()(RandomDenoiser(L, V, MASK), batch_size=1, length=4, prompt=torch.tensor([0]))
    shifted = RandomDenoiser(L, V, MASK)
    shifted.shift_logits = True
    with pytest.raises(ConfigError, match="shift_logits.*block sampler"):
        FirstHittingSampler()(shifted, batch_size=1, length=4)
    from dlm.samplers.block import BlockSampler

    with pytest.raises(ConfigError, match="attention='bidirectional'.*masked-diffusion sampler.*dkv_decode"):
        BlockSampler(block_size=2)(RandomDenoiser(L, V, MASK), batch_size=1, length=4)
    undeclared = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="denoiser contract"):
        FirstHittingSampler()(undeclared, batch_size=1, length=4)
