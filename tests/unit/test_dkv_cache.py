"""dKV-Cache for bidirectional decoding: exact where it must be, delayed caching better than immediate."""

from __future__ import annotations

import pytest
import torch

from dlm.cache.dkv import DKVCache, DKVPolicy, masked_neighbours
from dlm.errors import ConfigError
from dlm.models.transformer import Transformer
from dlm.samplers.confidence import ConfidenceSampler
from dlm.samplers.dkv_forward import dkv_logits
from dlm.samplers.reveal import StaticCount

V, MASK, L = 13, 12, 24


def tiny(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    kw = {"init_std": 0.3, **kw}
    return Transformer(vocab_size=V, mask_id=MASK, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=L,
                       **kw).eval()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sample(cache, *, model=None, batch=4, prompt=None, order="max_prob", temperature=0.0, steps=12, seed=0):
    model = model or tiny()
    prompt = torch.arange(1, 9) if prompt is None else prompt
    s = ConfidenceSampler(num_steps=steps, order=order, temperature=temperature, cache=cache)
    return s(model, batch_size=batch, length=L, prompt=prompt, generator=gen(seed))


@pytest.mark.parametrize("order,temperature", [("max_prob", 0.0), ("random", 1.0), ("entropy", 1.0)])
def test_refresh_every_step_is_the_uncached_sampler_bit_for_bit(order, temperature):
    base = sample(None, order=order, temperature=temperature)
    full = sample(DKVPolicy(variant="decode", refresh=1), order=order, temperature=temperature)
    assert torch.equal(base.tokens, full.tokens) and base.nfe == full.nfe


def test_a_cache_that_recomputes_every_position_gives_the_uncached_tokens():
    # prefill without a prompt: every cached step queries the whole canvas through gather/attend/scatter
    base = sample(None, prompt=torch.tensor([], dtype=torch.long), temperature=1.0, order="random")
    every = sample(DKVPolicy(variant="prefill"), prompt=torch.tensor([], dtype=torch.long), temperature=1.0,
                   order="random")
    assert torch.equal(base.tokens, every.tokens)


def test_gather_attend_scatter_on_unchanged_input_equals_the_full_forward():
    model = tiny(1, time_conditioned=True)
    x = torch.randint(0, MASK, (3, L), generator=gen(1))
    x[:, 10:] = MASK
    t = torch.full((3,), 0.5)
    full = model(x, t)
    cache = DKVCache(L)
    policy = DKVPolicy(variant="decode", refresh=100)
    logits, _ = dkv_logits(model, x, t, cache=cache, policy=policy, step=0, queries=torch.ones_like(x, dtype=torch.bool))
    assert torch.equal(logits, full), "a full pass is the uncached forward"
    # ragged query sets: 14, 3 and 20 positions
    queries = torch.zeros_like(x, dtype=torch.bool)
    queries[0, 10:], queries[1, [0, 5, 23]], queries[2, 4:] = True, True, True
    cached, _ = dkv_logits(model, x, t, cache=cache, policy=policy, step=1, queries=queries)
    torch.testing.assert_close(cached[queries], full[queries], atol=1e-5, rtol=0)


def test_a_row_alone_equals_the_same_row_in_a_ragged_batch():
    model = tiny(2)
    prompts = torch.full((8, 12), MASK)
    for i in range(8):  # rows with prompts of 2..9 tokens: different query-set sizes every step
        prompts[i, : 2 + i] = torch.arange(2 + i) % MASK
    policy = DKVPolicy(variant="decode", refresh=4)
    s = ConfidenceSampler(num_steps=L, order="max_prob", temperature=0.0, cache=policy, policy=StaticCount())
    batch = s(model, batch_size=8, length=L, prompt=prompts, generator=gen(0)).tokens
    alone = s(model, batch_size=1, length=L, prompt=prompts[5:6], generator=gen(0)).tokens
    assert torch.equal(batch[5:6], alone)


class ImmediateCache(DKVPolicy):
    """Negative control: a token decoded at step s is cached at once (never recomputed with its token)."""

    def queries(self, masked, just_decoded, generated, next_decoded):
        return masked


@torch.no_grad()
def replay_error(model, trajectory, prompt_len: int, policy: DKVPolicy) -> float:
    """Mean |logit error| at masked positions vs the uncached forward, along a fixed trajectory."""
    cache, errs = DKVCache(L), []
    generated = torch.zeros(trajectory[0].shape, dtype=torch.bool)
    generated[:, prompt_len:] = True
    decoded = ~generated
    for step, x in enumerate(trajectory):
        masked = x == MASK
        if not masked.any():
            break
        logits, _ = dkv_logits(model, x, None, cache=cache, policy=policy, step=step,
                               queries=policy.queries(masked, ~masked & ~decoded, generated, None))
        decoded = ~masked
        errs.append((logits - model(x))[masked].abs().mean())
    return float(torch.stack(errs).mean())


def test_delayed_caching_has_lower_logit_error_than_immediate_caching():
    # a random network with large weights (its K/V react strongly to a token flipping from [MASK]);
    # measured along one fixed trajectory, so both caches see the same canvases
    model = tiny(3, init_std=0.6)
    s = ConfidenceSampler(num_steps=L, order="max_prob", temperature=0.0, record_trajectory=True)
    out = s(model, batch_size=4, length=L, prompt=torch.arange(1, 5), generator=gen(0))
    canvases = [torch.cat([torch.arange(1, 5).expand(4, -1), torch.full((4, L - 4), MASK)], 1), *out.trajectory]
    delayed = replay_error(model, canvases, 4, DKVPolicy(variant="decode", refresh=1000))
    immediate = replay_error(model, canvases, 4, ImmediateCache(variant="decode", refresh=1000))
    assert 0 < delayed < 0.8 * immediate, (delayed, immediate)


def test_cached_decoding_stays_close_to_uncached():
    base = sample(None, batch=8, steps=16)
    cached = sample(DKVPolicy(variant="decode", refresh=4), batch=8, steps=16)
    assert base.nfe == cached.nfe
    agreement = (base.tokens == cached.tokens).float().mean()
    assert agreement > 0.8


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="refresh=0"):
        DKVPolicy(refresh=0)
    with pytest.raises(ConfigError, match="window=-1"):
        DKVPolicy(variant="greedy", window=-1)
    with pytest.raises(ValueError, match="greedy needs a decoding order fixed in advance.*fixed_random"):
        ConfidenceSampler(cache=DKVPolicy(variant="greedy"))
    with pytest.raises(ConfigError, match="variant='lazy'"):
        DKVPolicy(variant="lazy")


def test_masked_neighbours_window():
    seeds = torch.tensor([[False, False, True, False, False, False]])
    masked = torch.tensor([[True, True, False, True, True, False]])
    assert masked_neighbours(seeds, masked, 2).tolist() == [[True, True, False, True, True, False]]
    assert masked_neighbours(seeds, masked, 1).tolist() == [[False, True, False, True, False, False]]


@pytest.mark.parametrize("cache", [None, DKVPolicy(variant="decode", refresh=2)])
def test_semi_autoregressive_blocks_finish_left_to_right(cache):
    s = ConfidenceSampler(num_steps=16, order="max_prob", temperature=1.0, cache=cache, block_length=6,
                          record_trajectory=True)
    out = s(tiny(5), batch_size=3, length=L, prompt=torch.arange(1, 4), generator=gen(0))
    assert not (out.tokens == MASK).any()
    block = torch.arange(L) // 6
    for canvas in out.trajectory:  # a later block is touched only once every earlier block is complete
        decoded = canvas != MASK
        for j in range(1, 4):
            if decoded[:, (block == j) & (torch.arange(L) >= 3)].any():
                assert decoded[:, block < j].all()
    assert out.nfe == 3 + 4 * 3  # 4 steps per block; the first holds only 3 masks (the prompt fills the rest)


def test_greedy_cache_with_a_fixed_order():
    kw = dict(order="fixed_random", temperature=1.0, steps=L)
    base = sample(None, **kw)
    assert torch.equal(sample(DKVPolicy(variant="greedy", refresh=1), **kw).tokens, base.tokens)
    greedy = sample(DKVPolicy(variant="greedy", refresh=2, window=4), **kw)
    assert not (greedy.tokens == MASK).any() and greedy.nfe == base.nfe
    assert (greedy.tokens == base.tokens).float().mean() > 0.7


def test_fixed_random_order_has_the_exact_law():
    from mocks import ExactDenoiser
    from test_samplers_law import N, correlated_joint, empirical_tv

    joint = correlated_joint()
    out = ConfidenceSampler(num_steps=3, order="fixed_random", temperature=1.0)(
        ExactDenoiser(joint), batch_size=N, length=3, generator=gen(0))
    assert empirical_tv(out.tokens, joint) < 0.03
