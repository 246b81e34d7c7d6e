import collections

import pytest
import torch
from mocks import OracleDenoiser, RandomDenoiser

from dlm.diffusion.posterior import subs_log_probs
from dlm.samplers.ancestral import AncestralSampler
from dlm.samplers.categorical import filter_logits, gumbel_argmax

V, MASK = 4, 3


def test_oracle_is_reproduced_exactly_and_prompt_kept():
    x0 = torch.randint(0, MASK, (4, 9), generator=torch.Generator().manual_seed(0))
    model = OracleDenoiser(x0, V, MASK)
    prompt = x0[:, :3]
    out = AncestralSampler(num_steps=5)(model, batch_size=4, length=9, prompt=prompt,
                                        generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.tokens, x0)
    assert 1 <= out.nfe <= 5


def test_same_generator_same_output_and_no_mask_left():
    model = RandomDenoiser(6, V, MASK, seed=0)
    s = AncestralSampler(num_steps=20)
    a = s(model, batch_size=3, length=6, generator=torch.Generator().manual_seed(5)).tokens
    b = s(model, batch_size=3, length=6, generator=torch.Generator().manual_seed(5)).tokens
    assert torch.equal(a, b) and not (a == MASK).any()


def test_one_step_sampler_draws_the_factorised_marginals():
    """With one step every token is drawn independently from p(x0^i | all masked)."""
    model = RandomDenoiser(2, V, MASK, seed=3)
    probs = subs_log_probs(model(torch.full((1, 2), MASK)), MASK).exp()[0, :, :MASK].double()
    n = 20000
    out = AncestralSampler(num_steps=1)(model, batch_size=n, length=2, generator=torch.Generator().manual_seed(0))
    for pos in range(2):
        freq = torch.bincount(out.tokens[:, pos], minlength=MASK)[:MASK].double() / n
        assert (freq - probs[pos]).abs().max() < 0.015


def test_gumbel_float64_matches_probabilities():
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    draws = gumbel_argmax(logits.expand(50000, 3), generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).double() / 50000
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), atol=0.01, rtol=0)


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, top_p=0.8))
    assert kept.tolist() == [[True, True, False, False]]
    with pytest.raises(ValueError, match="temperature"):
        filter_logits(logits, temperature=0.0)
    counts = collections.Counter(gumbel_argmax(filter_logits(logits.expand(2000, 4), top_k=1)).tolist())
    assert counts == {0: 2000}
