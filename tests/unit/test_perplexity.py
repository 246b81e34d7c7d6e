import itertools
import math

import pytest
import torch
from mocks import BigramAR, RandomDenoiser, UniformDenoiser
from test_objectives import MASK, V, exact_nelbo

from dlm.diffusion.posterior import subs_log_probs
from dlm.errors import ConfigError
from dlm.eval.block_perplexity import BlockNELBO
from dlm.eval.perplexity import ExactNLL, MaskedNELBO, evaluate_perplexity, nelbo_per_sequence
from dlm.eval.scorers import SCORERS, scorer_for
from dlm.eval.strata import stratified_uniforms
from dlm.io.record import Family


def exact_nll_random_order(model, x0):
    """-log p(x) of the infinite-step sampler of a time-free denoiser = random-order AO-ARM mixture."""
    length = x0.shape[1]
    probs = []
    for order in itertools.permutations(range(length)):
        xt = torch.full_like(x0, MASK)
        logp = 0.0
        for pos in order:
            logp += subs_log_probs(model(xt).double(), MASK)[0, pos, x0[0, pos]].item()
            xt[0, pos] = x0[0, pos]
        probs.append(math.exp(logp))
    return -math.log(sum(probs) / len(probs))


def test_nelbo_bound_is_above_exact_nll_and_estimator_is_unbiased():
    x0 = torch.tensor([[2, 0, 4, 1]])
    model = RandomDenoiser(4, V, MASK, seed=2)
    exact_bound = exact_nelbo(model, x0)
    nll = exact_nll_random_order(model, x0)
    assert exact_bound > nll + 1e-3  # Jensen gap over orders: strictly positive here
    batch = {"input_ids": x0.repeat(256, 1)}
    for method in ("mc", "quadrature"):
        est, var, n = nelbo_per_sequence(model, batch, num_samples=4, method=method,
                                         generator=torch.Generator().manual_seed(0))
        assert n.tolist() == [4] * 256
        se = math.sqrt(var.sum().item()) / 256
        assert abs(est.mean().item() - exact_bound) < 4 * se + 1e-4, (method, est.mean().item(), exact_bound)


def test_quadrature_with_one_sample_per_k_is_exact_for_a_uniform_denoiser():
    batch = {"input_ids": torch.randint(0, 3, (5, 8), generator=torch.Generator().manual_seed(0))}
    out = evaluate_perplexity(UniformDenoiser(3, V, MASK), [batch],
                              MaskedNELBO(num_samples=8, method="quadrature", keep_first_token=False))
    assert out["ppl"] == pytest.approx(3.0, rel=1e-6)
    assert out["nll_stderr"] == pytest.approx(0.0, abs=1e-9)
    assert out["method"] == "nelbo_bound" and out["tokens"] == 40


@pytest.mark.parametrize("ar_softmax", ["without_mask", "full"])
def test_ar_perplexity_is_exp_of_hand_computed_mean_nll(ar_softmax):
    model = BigramAR(V, MASK, seed=4)
    batches = [{"input_ids": torch.randint(0, MASK, (3, 6), generator=torch.Generator().manual_seed(s))}
               for s in range(2)]
    total, count = 0.0, 0
    for b in batches:
        for row in b["input_ids"]:
            for i in range(5):
                logits = model.table[row[i]].detach().clone()
                if ar_softmax == "without_mask":
                    logits[MASK] = float("-inf")
                total -= torch.log_softmax(logits, -1)[row[i + 1]].item()
                count += 1
    out = evaluate_perplexity(model, batches, ExactNLL(ar_softmax=ar_softmax))
    assert out["tokens"] == count and out["method"] == "exact" and out["ar_softmax"] == ar_softmax
    assert out["ppl"] == pytest.approx(math.exp(total / count), rel=1e-6)


def test_time_conditioned_model_uses_t_form():
    model = RandomDenoiser(4, V, MASK, seed=1, time_conditioned=True)
    batch = {"input_ids": torch.randint(0, MASK, (64, 4), generator=torch.Generator().manual_seed(0))}
    out = evaluate_perplexity(model, [batch], MaskedNELBO(num_samples=16, keep_first_token=False))
    assert math.isfinite(out["nll"]) and out["nll"] > 0 and out["nll_stderr"] > 0


def test_the_record_picks_the_scorer_and_auxiliary_families_have_none():
    model = UniformDenoiser(3, V, MASK)
    assert set(SCORERS) == {Family.AR, Family.MASKED, Family.BLOCK}
    assert isinstance(scorer_for(Family.AR, model, num_samples=4, ar_softmax="full"), ExactNLL)
    masked = scorer_for(Family.MASKED, model, num_samples=4, method="quadrature", keep_first_token=False)
    assert isinstance(masked, MaskedNELBO) and masked.summary() == {"method": "nelbo_bound", "t_samples": 4,
                                                                     "estimator": "quadrature"}
    model.block_size, model.shift_logits = 2, True  # what a block model declares
    block = scorer_for(Family.BLOCK, model, num_samples=4)
    assert isinstance(block, BlockNELBO) and (block.block_size, block.shift_logits) == (2, True)
    assert block.summary()["diffusion_block_size"] == 2
    with pytest.raises(ConfigError, match="'classifier' model directory has no perplexity"):
        scorer_for(Family.CLASSIFIER, model)


def test_stratified_uniforms_cover_their_stratum():
    g = torch.Generator().manual_seed(0)
    u = torch.stack([stratified_uniforms(1000, s, 4, "mc", "cpu", g) for s in range(4)])
    assert all(((u[s] >= s / 4) & (u[s] < (s + 1) / 4)).all() for s in range(4))
    assert stratified_uniforms(2, 1, 4, "quadrature", "cpu", None).tolist() == [0.375, 0.375]
    with pytest.raises(ValueError, match="method='simpson'"):
        stratified_uniforms(2, 0, 4, "simpson", "cpu", None)
