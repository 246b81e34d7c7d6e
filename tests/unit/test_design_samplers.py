"""Inference-time design samplers (SVDD, SMC / FK steering, best-of-N, reward guidance): identities with the
base sampler, the tilted law p exp(r/α)/Z on an enumerable toy (with negative controls), weights under
huge rewards, call accounting, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mocks import ConstantReward, CountingModel, ExactDenoiser, LinearReward, RandomDenoiser, TableReward

from dlm.errors import ConfigError, NonFiniteError
from dlm.samplers.ancestral import AncestralSampler
from dlm.samplers.best_of_n import BestOfNSampler
from dlm.samplers.reward_guidance import RewardGuidedSampler
from dlm.samplers.row_generators import RowGenerators
from dlm.samplers.smc import SMCSampler, log_ess, resample_indices
from dlm.samplers.svdd import SVDDSampler

V, MASK, L = 4, 3, 3  # letters "abc" = ids 0..2, mask 3: the enumerable toy (27 sequences)
ALPHA = 0.5


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def toy_joint() -> torch.Tensor:
    """A joint over {0,1,2}^3 with strong dependence between positions (as in test_samplers_law)."""
    p = torch.rand(3, 3, 3, generator=gen(0)).pow(4) + 0.01
    p[0, 0, 0] += 2.0
    p[2, 1, 2] += 1.5
    return p / p.sum()


def toy_table() -> torch.Tensor:
    return torch.rand(3, 3, 3, generator=gen(1)) * 2


def tilted(joint: torch.Tensor, table: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """The target p exp(r/α) / Z, (27,) float64."""
    w = joint.double() * torch.exp(table.double() / alpha)
    return (w / w.sum()).reshape(-1)


def law(tokens: torch.Tensor) -> torch.Tensor:
    idx = tokens[:, 0] * 9 + tokens[:, 1] * 3 + tokens[:, 2]
    return torch.bincount(idx, minlength=27).double() / tokens.shape[0]


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p - q).abs().sum().item()


# ------------------------------------------------------------------------------------------ identities
@pytest.mark.parametrize("row_generators", [False, True])
def test_svdd_with_one_candidate_is_the_ancestral_sampler_bit_for_bit(row_generators):
    model = RandomDenoiser(8, 6, 5, seed=1)
    reward = LinearReward(torch.randn(8, 5, generator=gen(2)), alphabet="abcde")
    g = (lambda: RowGenerators.seeded(range(6))) if row_generators else (lambda: gen(4))
    kw = dict(batch_size=6, length=8, prompt=torch.tensor([1, 2]))
    base = AncestralSampler(num_steps=12)(model, **kw, generator=g())
    svdd = SVDDSampler(reward=reward, num_candidates=1, num_steps=12)(model, **kw, generator=g())
    assert torch.equal(base.tokens, svdd.tokens) and base.nfe == svdd.nfe
    assert svdd.aux_calls["reward"] == 0
    more = SVDDSampler(reward=reward, num_candidates=4, num_steps=12)(model, **kw, generator=g())
    assert not torch.equal(base.tokens, more.tokens), "control: M = 4 must change the samples"


def test_smc_with_constant_reward_is_the_base_sampler_on_all_particles():
    model, k, b = RandomDenoiser(8, 6, 5, seed=1), 4, 5
    kw = dict(length=8, prompt=torch.tensor([1, 2]))
    base = AncestralSampler(num_steps=12)(model, batch_size=b * k, **kw, generator=gen(7))
    smc = SMCSampler(reward=ConstantReward(1e4, alphabet="abcde"), num_particles=k, alpha=1e-3,
                     ess_threshold=1.0, num_steps=12)(model, batch_size=b, **kw, generator=gen(7))
    assert torch.equal(smc.info["particles"].reshape(b * k, 8), base.tokens), "particles = the base sampler bitwise"
    assert smc.info["resampled"] == 0 and torch.allclose(smc.info["ess"], torch.full((b,), float(k), dtype=torch.float64))
    idx = smc.info["particle_index"]
    assert torch.equal(smc.tokens, base.tokens.view(b, k, 8)[torch.arange(b), idx])
    one = SMCSampler(reward=TableReward(toy_table()), num_particles=1)(ExactDenoiser(toy_joint()), batch_size=b,
                                                                         length=3, generator=gen(3))
    ref = AncestralSampler(num_steps=128)(ExactDenoiser(toy_joint()), batch_size=b, length=3, generator=gen(3))
    assert torch.equal(one.tokens, ref.tokens) and one.nfe == ref.nfe and one.aux_calls["reward"] == 0


def test_best_of_n_keeps_the_best_candidate_and_n1_is_the_base():
    model, table = ExactDenoiser(toy_joint()), toy_table()
    base = AncestralSampler(num_steps=8)
    out = BestOfNSampler(base=base, reward=TableReward(table), num_candidates=5)(model, batch_size=7, length=3,
                                                                                 generator=gen(1))
    all_ = base(model, batch_size=35, length=3, generator=gen(1))
    assert torch.equal(out.info["candidates"].reshape(35, 3), all_.tokens)
    r = table[all_.tokens[:, 0], all_.tokens[:, 1], all_.tokens[:, 2]].view(7, 5)
    assert torch.allclose(out.info["rewards"].float(), r)
    kept = table[out.tokens[:, 0], out.tokens[:, 1], out.tokens[:, 2]]
    assert torch.equal(kept, r.max(-1).values), "each output row must be its group's best"
    assert out.aux_calls["reward"] == 1 and out.nfe == all_.nfe
    one = BestOfNSampler(base=base, reward=TableReward(table), num_candidates=1)(model, batch_size=7, length=3,
                                                                                 generator=gen(1))
    assert torch.equal(one.tokens, base(model, batch_size=7, length=3, generator=gen(1)).tokens)


# --------------------------------------------------------------------------- the tilted law (exact toy)
def run_law(make, n: int = 10000) -> torch.Tensor:
    return law(make()(ExactDenoiser(toy_joint()), batch_size=n, length=3, generator=gen(0)).tokens)


def test_svdd_moves_toward_the_tilted_law_as_candidates_grow():
    """With value="sample", exp(r(x̂0)/α) is unbiased for exp(v/α): SVDD's step converges to the tilted step."""
    target, table = tilted(toy_joint(), toy_table()), toy_table()
    make = lambda m, reward: lambda: SVDDSampler(reward=reward, num_candidates=m, alpha=ALPHA, value="sample",  # noqa: E731
                                                 num_steps=32)
    d = {m: tv(run_law(make(m, TableReward(table))), target) for m in (1, 4, 16)}
    # the base law is 0.36 from the target; sampling noise alone gives TV ~ 0.02 at n = 10^4
    assert d[1] > 0.3 and d[4] < 0.6 * d[1] and d[16] < 0.6 * d[4] and d[16] < 0.06, d
    away = tv(run_law(make(16, TableReward(-table))), target)  # negative control: the sign-flipped reward
    assert away > d[1] + 0.1, (away, d)


def test_svdd_argmax_value_improves_on_the_base_but_is_biased():
    target, table = tilted(toy_joint(), toy_table()), toy_table()
    d = {m: tv(run_law(lambda m=m: SVDDSampler(reward=TableReward(table), num_candidates=m, alpha=ALPHA,
                                                num_steps=32), n=6000), target) for m in (1, 4)}
    assert d[4] < 0.5 * d[1], d  # SVDD-PM: the argmax x̂0 is a biased value, so no convergence is claimed


def test_smc_moves_toward_the_tilted_law_as_particles_grow():
    target, table = tilted(toy_joint(), toy_table()), toy_table()
    make = lambda k, reward, thr=0.5: lambda: SMCSampler(reward=reward, num_particles=k, alpha=ALPHA,  # noqa: E731
                                                         ess_threshold=thr, num_steps=32)
    d = {k: tv(run_law(make(k, TableReward(table)), n=8000), target) for k in (1, 4, 16)}
    assert d[1] > 0.3 and d[4] < 0.5 * d[1] and d[16] < 0.6 * d[4] and d[16] < 0.07, d
    away = tv(run_law(make(16, TableReward(-table)), n=8000), target)  # negative control
    assert away > d[1] + 0.1, (away, d)


def test_smc_weights_stay_finite_with_huge_rewards_and_ess_is_bounded():
    k = 6
    table = (torch.rand(3, 3, 3, generator=gen(5)) - 0.5) * 2e4  # rewards in ±1e4
    out = SMCSampler(reward=TableReward(table), num_particles=k, alpha=0.01, ess_threshold=0.3,
                     resampling="multinomial", num_steps=16)(ExactDenoiser(toy_joint()), batch_size=50, length=3,
                                                              generator=gen(2))
    log_w, ess = out.info["log_weights"], out.info["ess"]
    assert torch.isfinite(log_w).all() and torch.isfinite(ess).all()
    assert (ess >= 1 - 1e-9).all() and (ess <= k + 1e-9).all()
    assert out.info["resampled"] > 0, "huge rewards must trigger resampling"
    assert not (out.tokens == MASK).any()


def test_resampling_and_ess_maths():
    log_w = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1e4, -1e4, 0.0, -5.0]], dtype=torch.float64)
    assert torch.allclose(log_ess(log_w).exp(), torch.tensor([4.0, 1.0], dtype=torch.float64))
    idx = resample_indices(log_w, torch.tensor([[0.3], [0.9]], dtype=torch.float64), "systematic")
    assert idx[0].tolist() == [0, 1, 2, 3] and idx[1].tolist() == [0, 0, 0, 0]
    # systematic resampling keeps floor(k w_i) or ceil(k w_i) copies of particle i
    w = torch.tensor([[0.55, 0.3, 0.1, 0.05]], dtype=torch.float64)
    for u in torch.linspace(0, 0.999, 7):
        counts = torch.bincount(resample_indices(w.log(), u.view(1, 1).double(), "systematic")[0], minlength=4)
        assert ((counts - 4 * w[0]).abs() < 1).all(), counts


def test_nan_reward_stops_the_job():
    table = toy_table().clone()
    table[0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="non-finite"):
        SMCSampler(reward=TableReward(table), num_particles=4, num_steps=8)(ExactDenoiser(toy_joint()),
                                                                            batch_size=20, length=3, generator=gen())


# -------------------------------------------------------------------------------------- reward guidance
def test_exact_guidance_equals_the_enumerated_tilted_step_law():
    """(R1) at positions 1 and 2 of the canvas [b, ?, ?]: p(v) ∝ p(x^ℓ = v | x_t) exp(r(z^{ℓ←v}) / α), z = x̂0."""
    joint, table, alpha = toy_joint(), toy_table(), 0.25
    model = ExactDenoiser(joint)
    x = torch.tensor([[1, MASK, MASK]])
    sampler = RewardGuidedSampler(reward=TableReward(table), alpha=alpha, mode="exact")
    at, valid = torch.tensor([[1, 2]]), torch.tensor([[True, True]])
    counts = {"reward": 0}
    got = sampler.guided_logits(model, x, torch.ones(1), torch.tensor([True]), at, valid, counts)[0, :, :3]
    cond = joint[1] / joint[1].sum()  # p(x1, x2 | x0 = 1)
    p1, p2 = cond.sum(1), cond.sum(0)
    z = (1, int(p1.argmax()), int(p2.argmax()))
    want1 = p1.double().log() + table[1, :, z[2]].double() / alpha
    want2 = p2.double().log() + table[1, z[1], :].double() / alpha
    for g, w in ((got[0], want1), (got[1], want2)):
        torch.testing.assert_close(g.double().log_softmax(-1), w.log_softmax(-1), atol=1e-5, rtol=0)
    assert counts["reward"] >= 1
    # the sampler draws from it: one step from the canvas reveals both positions independently
    n = 20000
    out = RewardGuidedSampler(reward=TableReward(table), alpha=alpha, num_steps=1)(
        model, batch_size=n, length=3, prompt=x[0], generator=gen(3))
    pair = torch.bincount(out.tokens[:, 1] * 3 + out.tokens[:, 2], minlength=9).double() / n
    expected = (want1.softmax(-1)[:, None] * want2.softmax(-1)[None]).reshape(-1)
    assert tv(pair, expected) < 0.02
    base = AncestralSampler(num_steps=1)(model, batch_size=n, length=3, prompt=x[0], generator=gen(3))
    base_pair = torch.bincount(base.tokens[:, 1] * 3 + base.tokens[:, 2], minlength=9).double() / n
    assert tv(base_pair, expected) > 0.1, "control: the unguided step is far from the tilted one"


@pytest.mark.parametrize("context", ["x0", "canvas"])
def test_first_order_guidance_is_exact_for_a_linear_reward(context):
    model = RandomDenoiser(6, 5, 4, seed=3)
    reward = LinearReward(torch.randn(6, 4, generator=gen(6)), alphabet="abcd")
    x = torch.tensor([[0, 4, 4, 2, 4, 1], [4, 4, 4, 4, 4, 4]])
    at = torch.tensor([[1, 2, 4], [0, 3, 5]])
    valid = torch.ones(2, 3, dtype=torch.bool)
    rows = torch.ones(2, dtype=torch.bool)
    out = {}
    for mode in ("exact", "first_order"):
        s = RewardGuidedSampler(reward=reward, alpha=0.3, mode=mode, context=context)
        out[mode] = s.guided_logits(model, x, torch.ones(2), rows, at, valid, {"reward": 0}).log_softmax(-1)
    torch.testing.assert_close(out["exact"], out["first_order"], atol=1e-4, rtol=0)
    plain = AncestralSampler().step.logits(model, x, None).gather(1, at[..., None].expand(-1, -1, 5))
    assert not torch.allclose(out["exact"][..., :4], plain[..., :4].log_softmax(-1)[..., :4], atol=1e-2)


def test_guidance_moves_samples_toward_high_reward():
    model, table = ExactDenoiser(toy_joint()), toy_table()
    mean_r = {}
    for name, sampler in (("base", AncestralSampler(num_steps=16)),
                          ("cg", RewardGuidedSampler(reward=TableReward(table), alpha=0.2, num_steps=16))):
        tok = sampler(model, batch_size=4000, length=3, generator=gen(2)).tokens
        mean_r[name] = table[tok[:, 0], tok[:, 1], tok[:, 2]].mean().item()
    assert mean_r["cg"] > mean_r["base"] + 0.2, mean_r


def test_first_order_guidance_refuses_a_non_differentiable_reward():
    with pytest.raises(ConfigError, match=r"method=cg needs a differentiable reward.*svdd\|smc.*sampler.mode=exact"):
        RewardGuidedSampler(reward=ConstantReward(), mode="first_order")
    RewardGuidedSampler(reward=ConstantReward(), mode="exact")  # enumeration needs no gradient


# --------------------------------------------------------------------------------- accounting, refusals
@pytest.mark.parametrize("make", [
    lambda r: SVDDSampler(reward=r, num_candidates=3, num_steps=8),
    lambda r: SVDDSampler(reward=r, num_candidates=3, num_steps=8, value="sample", row_cache="none"),
    lambda r: SMCSampler(reward=r, num_particles=3, num_steps=8, every=3),
    lambda r: RewardGuidedSampler(reward=r, num_steps=8, chunk_size=5),
    lambda r: BestOfNSampler(base=AncestralSampler(num_steps=8), reward=r, num_candidates=3),
], ids=["svdd", "svdd_sample", "smc_every3", "cg_exact", "best_of_n"])
def test_network_and_reward_calls_are_counted_honestly(make):
    model, reward = CountingModel(ExactDenoiser(toy_joint())), TableReward(toy_table())
    out = make(reward)(model, batch_size=9, length=3, generator=gen(1))
    assert out.nfe == model.calls, "nfe counts every denoiser call, value calls included"
    assert out.aux_calls["reward"] == reward.calls and reward.calls > 0
    assert not (out.tokens == MASK).any()


def test_svdd_rows_follow_their_own_streams():
    """With RowGenerators a row's design does not depend on its batch mates (value draws included)."""
    model, reward = ExactDenoiser(toy_joint()), TableReward(toy_table())
    s = SVDDSampler(reward=reward, num_candidates=4, alpha=ALPHA, value="sample", num_steps=8)
    batch = s(model, batch_size=3, length=3, generator=RowGenerators.seeded([5, 6, 7])).tokens
    alone = s(model, batch_size=1, length=3, generator=RowGenerators.seeded([6])).tokens
    assert torch.equal(batch[1], alone[0])


def test_refusals_name_the_key():
    r = TableReward(toy_table())
    for make, key in ((lambda: SVDDSampler(reward=r, num_candidates=0), "sampler.num_candidates=0"),
                      (lambda: SVDDSampler(reward=r, alpha=-1.0), "sampler.alpha=-1.0"),
                      (lambda: SVDDSampler(reward=r, value="mode"), "sampler.value='mode'"),
                      (lambda: SMCSampler(reward=r, alpha=0.0), "sampler.alpha=0.0"),
                      (lambda: SMCSampler(reward=r, ess_threshold=2.0), "sampler.ess_threshold=2.0"),
                      (lambda: SMCSampler(reward=r, resampling="stratified"), "sampler.resampling='stratified'"),
                      (lambda: RewardGuidedSampler(reward=r, context="prefix"), "sampler.context='prefix'"),
                      (lambda: BestOfNSampler(base=AncestralSampler(), reward=r, num_candidates=0),
                       "sampler.num_candidates=0")):
        with pytest.raises(ConfigError, match=key.replace("(", r"\(")):
            make()
    with pytest.raises(ConfigError, match="length 3 but the sampler generates length 5; set length=3"):
        SVDDSampler(reward=r, num_candidates=2)(ExactDenoiser(toy_joint()), batch_size=1, length=5)
    with pytest.raises(ConfigError, match="pass one torch.Generator"):
        SMCSampler(reward=r)(ExactDenoiser(toy_joint()), batch_size=2, length=3, generator=RowGenerators.seeded([1, 2]))


def test_mean_value_feeds_soft_probabilities_to_the_reward():
    from dlm.samplers.reward_value import x0_estimate

    log_p = torch.log(torch.tensor([[[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.8, 0.0]]]))
    xs = torch.tensor([[MASK, 1]])
    mean = x0_estimate(log_p, xs, MASK, "mean")
    torch.testing.assert_close(mean[0, 0], torch.tensor([0.5, 0.3, 0.2, 0.0]))
    torch.testing.assert_close(mean[0, 1], F.one_hot(torch.tensor(1), 4).float())
    assert x0_estimate(log_p, xs, MASK, "argmax").argmax(-1).tolist() == [[0, 1]]


def test_best_of_n_base_sampler_gets_the_model_schedule_from_the_cli():
    from hydra import compose, initialize_config_dir

    from dlm.cli import CONF_DIR, instantiate_sampler
    from dlm.diffusion.schedule import CosineSchedule

    with initialize_config_dir(config_dir=CONF_DIR + "/eval", version_base="1.3"):
        cfg = compose(config_name="sample", overrides=["model=m", "sampler=best_of_n",
                                                       "sampler.reward={_target_:dlm.rewards.toy.GCContent}"])
    sampler = instantiate_sampler(cfg.sampler, CosineSchedule())
    assert isinstance(sampler, BestOfNSampler) and isinstance(sampler.base.schedule, CosineSchedule)


def test_selection_temperature_zero_is_the_argmax_and_positive_samples():
    s0 = SVDDSampler(reward=TableReward(toy_table()), alpha=0.0)
    v = torch.tensor([[0.1, 5.0], [0.3, -1.0], [0.2, 2.0]], dtype=torch.float64)  # (M = 3, R = 2)
    assert s0.select(v, gen()).tolist() == [1, 0]
    s = SVDDSampler(reward=TableReward(toy_table()), alpha=1.0)
    picks = torch.stack([s.select(v, gen(i)) for i in range(3000)])  # (n, R)
    freq = torch.stack([(picks[:, 0] == m).double().mean() for m in range(3)])
    torch.testing.assert_close(freq, (v[:, 0] / 1.0).softmax(0), atol=0.03, rtol=0)


@pytest.mark.parametrize("make", [
    lambda r: SVDDSampler(reward=r, num_candidates=2), lambda r: SMCSampler(reward=r, num_particles=2),
    lambda r: RewardGuidedSampler(reward=r), lambda r: BestOfNSampler(base=AncestralSampler(), reward=r),
], ids=["svdd", "smc", "cg", "best_of_n"])
def test_a_causal_model_is_refused_before_any_call(make):
    from mocks import BigramAR

    model = CountingModel(BigramAR(4, 3))
    with pytest.raises(ConfigError, match="cannot decode a model with attention='causal'"):
        make(TableReward(toy_table()))(model, batch_size=2, length=3, generator=gen())
    assert model.calls == 0
