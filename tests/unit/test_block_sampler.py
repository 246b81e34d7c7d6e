"""Block-by-block decoding with an exact KV cache (research note §2.4, §3.4, checks C2, C9, C10)."""

from __future__ import annotations

import pytest
import torch
from mocks import CachedContext, CountingModel, ExactDenoiser, OracleDenoiser, RandomDenoiser
from torch import Tensor, nn

from dlm.cache.kv import KVCache
from dlm.errors import ConfigError
from dlm.models.transformer import Transformer
from dlm.nn.time_embedding import AdaLNModulation
from dlm.samplers.block import BlockSampler
from dlm.samplers.confidence import position_confidence
from dlm.samplers.reveal import ConfidenceThreshold, EntropyBounded, StaticCount
from dlm.types import DENOISER_ATTRIBUTES

V, MASK, K = 16, 15, 4


def tiny(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(vocab_size=V, mask_id=MASK, dim=32, n_layers=2, n_heads=4, max_seq_len=32,
                       attention="block_causal", block_size=K, init_std=0.5, **kw).eval()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_cached_block_logits_equal_full_recompute_and_commit_pass_matters():
    model = tiny()
    g = gen(1)
    prefix = torch.randint(0, MASK, (2, 2 * K), generator=g)
    clean = torch.randint(0, MASK, (2, K), generator=g)
    noisy = torch.where(torch.rand(2, K, generator=g) < 0.5, torch.full_like(clean, MASK), clean)
    noisy[:, 0] = MASK
    full = model(torch.cat([prefix, noisy], 1))[:, -K:]
    cache = KVCache(model.n_layers)
    model(prefix, cache=cache, store_cache=True)
    # the sampler's decode call: the block sees every cached key and itself (explicit all-True mask)
    got = model(noisy, positions=torch.arange(2 * K, 3 * K), attn_mask=torch.ones(K, 3 * K, dtype=torch.bool),
                cache=cache)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    assert cache.length == 2 * K

    # negative control: block 1's K/V taken from its last denoising step (a [MASK] input) instead of a commit pass
    nxt = torch.full((2, K), MASK)
    truth = model(torch.cat([prefix[:, :K], clean, nxt], 1))[:, -K:]
    stale, exact = KVCache(model.n_layers), KVCache(model.n_layers)
    for c, blk in ((stale, noisy), (exact, clean)):
        model(prefix[:, :K], cache=c, store_cache=True)
        model(blk, cache=c, store_cache=True)
    torch.testing.assert_close(model(nxt, cache=exact), truth, atol=1e-5, rtol=0)
    assert (model(nxt, cache=stale) - truth).abs().max() > 1e-3


def test_cache_and_nocache_give_identical_samples():
    model = tiny(2)
    prompt = torch.randint(0, MASK, (3, 5), generator=gen(4))  # partial prompt block: [4, 8) shares it
    kw = dict(batch_size=3, length=18, prompt=prompt)
    a = BlockSampler()(model, **kw, generator=gen(7))
    b = BlockSampler(use_cache=False)(model, **kw, generator=gen(7))
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.tokens[:, :5], prompt) and not (a.tokens == MASK).any()
    # blocks [4,8) [8,12) [12,16) [16,18): prefill of block 0, commit passes after all but the last block
    assert a.info["prefill"] == 1 and a.info["commit_passes"] == 3
    assert a.nfe == b.nfe + 1 + 3
    assert b.nfe == 3 + 4 + 4 + 2  # one token per call; prompt tokens need none


def test_fused_commit_gives_identical_samples_with_fewer_calls():
    # the commit pass of block j rides on block j+1's first call: exact, one call fewer per block
    for time_conditioned in (False, True):
        model = tiny(6, time_conditioned=time_conditioned)
        for m in model.modules():
            if isinstance(m, AdaLNModulation):
                nn.init.normal_(m.linear.weight, std=0.002)
        prompt = torch.randint(0, MASK, (3, 5), generator=gen(4))
        kw = dict(batch_size=3, length=18, prompt=prompt)
        a = BlockSampler()(model, **kw, generator=gen(7))
        f = BlockSampler(fuse_commit=True)(model, **kw, generator=gen(7))
        assert torch.equal(a.tokens, f.tokens)
        assert f.info["commit_passes"] == a.info["commit_passes"] == 3 and f.nfe == a.nfe - 3
    # a fully given (infilling) block between generated ones is committed on its own
    template = torch.full((1, 16), MASK)
    template[0, :4], template[0, 8:12] = torch.arange(4), torch.arange(4, 8)
    a = BlockSampler()(model, batch_size=1, length=16, prompt=template[0], generator=gen(1))
    f = BlockSampler(fuse_commit=True)(model, batch_size=1, length=16, prompt=template[0], generator=gen(1))
    assert torch.equal(a.tokens, f.tokens) and torch.equal(f.tokens[0, 8:12], torch.arange(4, 8))


def test_time_conditioned_cache_equals_nocache():
    model = tiny(3, time_conditioned=True)
    for m in model.modules():  # adaLN starts at zero: make time actually matter
        if isinstance(m, AdaLNModulation):
            nn.init.normal_(m.linear.weight, std=0.002)
    kw = dict(batch_size=2, length=12, prompt=torch.tensor([1, 2, 3, 4, 5, 6]))
    a = BlockSampler(num_steps=2)(model, **kw, generator=gen(0)).tokens
    b = BlockSampler(num_steps=2, use_cache=False)(model, **kw, generator=gen(0)).tokens
    assert torch.equal(a, b)


def test_threshold_one_equals_static_one_token_per_step():
    model = tiny(5)
    kw = dict(batch_size=4, length=16, prompt=torch.tensor([3, 1, 4]))
    a = BlockSampler(num_steps=K, policy=ConfidenceThreshold(1.0))(model, **kw, generator=gen(2))
    b = BlockSampler(num_steps=K, policy=StaticCount())(model, **kw, generator=gen(2))
    assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe


class CallLog:
    """Records the first position of every network call of a wrapped model."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.starts = model, []
        for name in (*DENOISER_ATTRIBUTES, "n_layers"):
            setattr(self, name, getattr(model, name))

    def parameters(self):
        return self.model.parameters()

    def __call__(self, tokens, t=None, **kw):
        self.starts.append(int(kw["positions"][0]) if kw.get("cache") is not None else -1)
        return self.model(tokens, t, **kw)


@pytest.mark.parametrize("policy,steps", [(ConfidenceThreshold(0.3), 2), (StaticCount(), 3),
                                          (EntropyBounded(1.5), 2)])
def test_commit_invariants(policy, steps):
    model = CallLog(tiny(6))
    order = "entropy" if isinstance(policy, EntropyBounded) else "max_prob"
    s = BlockSampler(num_steps=steps, policy=policy, order=order, record_trajectory=True)
    out = s(model, batch_size=3, length=16, prompt=torch.tensor([1, 2]), generator=gen(0))
    frames = [torch.cat([torch.tensor([1, 2]), torch.full((14,), MASK)]).expand(3, -1)] + out.trajectory
    for prev, cur in zip(frames, frames[1:], strict=False):
        kept = prev != MASK
        assert torch.equal(cur[kept], prev[kept]), "committed tokens never change"
        newly = (prev == MASK) & (cur != MASK)
        blocks = newly.nonzero()[:, 1] // K
        assert blocks.numel() and (blocks == blocks[0]).all(), "a step commits inside one block"
        span = slice(int(blocks[0]) * K, int(blocks[0]) * K + K)
        waiting = (prev[:, span] == MASK).any(-1)
        assert newly[waiting].any(-1).all(), "every row with masks in the block commits at least one per step"
    assert len(out.trajectory) == out.nfe - out.info["commit_passes"] - out.info["prefill"]
    calls_per_block = torch.bincount(torch.tensor(model.starts) // K, minlength=4)
    assert (calls_per_block <= steps + 1).all()
    assert not (out.tokens == MASK).any()


@pytest.mark.parametrize("kw", [dict(), dict(policy=ConfidenceThreshold(0.9)), dict(first_hitting=True),
                                dict(policy=EntropyBounded(0.5), order="entropy"), dict(order="random"),
                                dict(num_steps=1), dict(use_cache=False), dict(temperature=0.0, top_p=0.5)])
def test_oracle_reproduced_with_any_policy(kw):
    x0 = torch.randint(0, MASK, (3, 14), generator=gen(9))
    model = CountingModel(OracleDenoiser(x0, V, MASK))
    wrapped = CachedContext(model, block_size=K)
    a = BlockSampler(**kw)(wrapped, batch_size=3, length=14, prompt=x0[:, :6], generator=gen(1))
    b = BlockSampler(**kw)(wrapped, batch_size=3, length=14, prompt=x0[:, :6], generator=gen(1))
    assert torch.equal(a.tokens, x0) and torch.equal(a.tokens, b.tokens)
    assert a.nfe == model.calls / 2


def test_random_mock_same_generator_and_prompt_kept():
    model = CachedContext(RandomDenoiser(12, 5, 4, seed=3), block_size=3)
    s = BlockSampler(policy=ConfidenceThreshold(0.5))
    a = s(model, batch_size=4, length=12, prompt=torch.tensor([0, 1, 2, 3, 0]), generator=gen(3)).tokens
    b = s(model, batch_size=4, length=12, prompt=torch.tensor([0, 1, 2, 3, 0]), generator=gen(3)).tokens
    c = s(model, batch_size=4, length=12, prompt=torch.tensor([0, 1, 2, 3, 0]), generator=gen(4)).tokens
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, :5], torch.tensor([0, 1, 2, 3, 0]).expand(4, -1)) and not (a == 4).any()


def joint_with_block_dependence() -> Tensor:
    """A joint over 3^4 sequences with strong within-block dependence (x0 ~ x1, x2 ~ x3) and across blocks."""
    g = gen(0)
    p = torch.rand(3, 3, 3, 3, generator=g, dtype=torch.float64) + 0.05
    eye = torch.eye(3, dtype=torch.float64)
    p = p * (1 + 6 * eye[:, :, None, None]) * (1 + 6 * eye[None, None]) * (1 + 2 * eye[:, None, :, None])
    return p / p.sum()


def total_variation(tokens: Tensor, joint: Tensor) -> float:
    idx = ((tokens * torch.tensor([27, 9, 3, 1])).sum(-1))
    emp = torch.bincount(idx, minlength=81).double() / tokens.shape[0]
    return 0.5 * float((emp - joint.reshape(-1)).abs().sum())


@pytest.mark.parametrize("kw", [dict(first_hitting=True), dict(order="random", num_steps=2),
                                dict(order="random", num_steps=2, use_cache=False)])
def test_exact_law_on_enumerable_problem(kw):
    joint = joint_with_block_dependence()
    model = CachedContext(ExactDenoiser(joint), block_size=2, pad_to=4)
    out = BlockSampler(**kw)(model, batch_size=20000, length=4, generator=gen(11))
    assert total_variation(out.tokens, joint) < 0.05


def test_one_step_per_block_is_not_the_joint():
    joint = joint_with_block_dependence()
    model = CachedContext(ExactDenoiser(joint), block_size=2, pad_to=4)
    out = BlockSampler(num_steps=1)(model, batch_size=20000, length=4, generator=gen(11))
    assert total_variation(out.tokens, joint) > 0.15


def test_eos_ends_rows_and_fills_the_rest():
    eos, length = 0, 16
    x0 = torch.randint(1, MASK, (2, length), generator=gen(2))
    x0[0, 6], x0[1, 9] = eos, eos
    model = CountingModel(OracleDenoiser(x0, V, MASK))
    out = BlockSampler(eos_id=eos)(CachedContext(model, block_size=K), batch_size=2, length=length, generator=gen(0))
    assert torch.equal(out.tokens[0, :7], x0[0, :7]) and (out.tokens[0, 7:] == eos).all()
    assert torch.equal(out.tokens[1, :10], x0[1, :10]) and (out.tokens[1, 10:] == eos).all()
    assert out.info["lengths"].tolist() == [7, 10]
    assert out.info["block_spans"] == [(0, 4), (4, 8), (8, 12)]  # block [12, 16) never decoded
    assert out.nfe <= 4 + 1 + 4 + 1 + 4 and out.nfe == model.calls
    free = BlockSampler(eos_id=eos, stop_at_eos=False)(CachedContext(model, block_size=K), batch_size=2,
                                                        length=length, generator=gen(0))
    assert torch.equal(free.tokens, x0) and free.info["lengths"].tolist() == [16, 16]


def test_entropy_bounded_commits_lowest_entropy_prefix():
    entropy = torch.tensor([[0.1, 0.5, 0.05, 2.0, 0.0]])
    masked = torch.tensor([[True, True, True, True, False]])
    commit = EntropyBounded(0.2)(-entropy, masked, 0, 4)
    assert commit.tolist() == [[True, False, True, False, False]]
    assert EntropyBounded(0.01)(-entropy, masked, 0, 4).tolist() == [[False, False, True, False, False]]
    assert EntropyBounded(0.01)(-entropy, masked, 3, 4).tolist() == [masked[0].tolist()]
    # order="entropy" scores a position by its own distribution: -H = sum p log p
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    conf = position_confidence(p.log(), torch.zeros(2, dtype=torch.long), "entropy")
    torch.testing.assert_close(conf, torch.tensor([-0.6931472, 0.0]))


class FixedSizes:
    def __init__(self, sizes):
        self.sizes, self.seen = list(sizes), []

    def next_block_size(self, hidden: Tensor, probe_entropy: Tensor, generator=None) -> int:
        self.seen.append((hidden.shape, probe_entropy.shape))
        return self.sizes[(len(self.seen) - 1) % len(self.sizes)]


def test_block_size_policy_records_decisions_and_costs_probes():
    model = tiny(8)
    prompt = torch.tensor([1, 2, 3, 4, 5])
    fixed = BlockSampler()(model, batch_size=2, length=20, prompt=prompt, generator=gen(5))
    same = BlockSampler(block_size_policy=FixedSizes([K]))(model, batch_size=2, length=20, prompt=prompt,
                                                           generator=gen(5))
    assert torch.equal(fixed.tokens, same.tokens), "a constant policy = fixed blocks (the probe draws nothing)"
    assert same.nfe == fixed.nfe + same.info["probes"] and same.info["probes"] == len(same.info["block_sizes"])
    policy = FixedSizes([2, 3])
    out = BlockSampler(block_size_policy=policy)(model, batch_size=2, length=20, prompt=prompt, generator=gen(5))
    assert out.info["block_sizes"][:3] == [2, 3, 2] and len(out.info["policy_features"]) == len(policy.seen)
    assert policy.seen[0] == (torch.Size([2, 32]), torch.Size([2]))
    assert out.info["block_spans"][:2] == [(4, 6), (6, 9)] and not (out.tokens == MASK).any()
    x0 = torch.randint(0, MASK, (2, 20), generator=gen(6))
    oracle = CachedContext(OracleDenoiser(x0, V, MASK), block_size=K)
    got = BlockSampler(block_size_policy=FixedSizes([3, 1, 5]))(oracle, batch_size=2, length=20, prompt=x0[:, :9])
    assert torch.equal(got.tokens, x0)


def test_validation_names_the_key():
    bidir = RandomDenoiser(8, 5, 4)  # a bidirectional model never saw the block-causal mask
    with pytest.raises(ConfigError, match="attention='bidirectional'.*masked-diffusion sampler"):
        BlockSampler(block_size=4)(bidir, batch_size=1, length=8)
    no_block = CachedContext(RandomDenoiser(8, 5, 4), block_size=None)
    with pytest.raises(ConfigError, match="sampler.block_size"):
        BlockSampler()(no_block, batch_size=1, length=8)
    model = tiny()
    with pytest.raises(ConfigError, match="prompt length 9 exceeds length=8"):
        BlockSampler()(model, batch_size=1, length=8, prompt=torch.zeros(9, dtype=torch.long))
    with pytest.raises(ConfigError, match="length=40 exceeds the model.s context model.max_seq_len=32.*NTK"):
        BlockSampler()(model, batch_size=1, length=40)
    with pytest.raises(ConfigError, match="nothing to generate"):
        BlockSampler()(model, batch_size=1, length=4, prompt=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="threshold"):
        BlockSampler(policy=ConfidenceThreshold(0.0))
    with pytest.raises(ConfigError, match="sampler.num_steps"):
        BlockSampler(num_steps=0)
    with pytest.raises(ConfigError, match="sampler.order=entropy"):
        BlockSampler(policy=EntropyBounded(1.0))
    with pytest.raises(ConfigError, match="use_cache"):
        BlockSampler(use_cache=False, block_size_policy=FixedSizes([2]))


class NextTokenOracle(nn.Module):
    """A shift_logits oracle: output i puts all mass on x0[i + 1] (output L-1: on x0[0], never read)."""

    time_conditioned = False

    def __init__(self, x0: Tensor) -> None:
        super().__init__()
        self.register_buffer("x0", x0)
        self.vocab_size, self.mask_id = V, MASK

    def forward(self, xt: Tensor, t=None, **_) -> Tensor:
        nxt = torch.roll(self.x0, -1, dims=1)[:, : xt.shape[1]]
        return torch.full((*xt.shape, V), -1e4).scatter(-1, nxt[..., None], 1e4)


@pytest.mark.parametrize("kw", [dict(), dict(fuse_commit=True), dict(use_cache=False),
                                dict(policy=ConfidenceThreshold(threshold=0.9), fuse_commit=True)])
@pytest.mark.parametrize("prompt_len", [1, 4, 6])  # BOS only / a full prompt block / a partial one
def test_shift_logits_model_is_read_one_position_back(kw, prompt_len):
    x0 = torch.randint(0, MASK, (2, 14), generator=gen(3))
    model = CachedContext(NextTokenOracle(x0), block_size=K)
    model.shift_logits = True
    out = BlockSampler(**kw)(model, batch_size=2, length=14, prompt=x0[:, :prompt_len], generator=gen(0))
    assert torch.equal(out.tokens, x0)
    model.shift_logits = False  # negative control: read unshifted, the oracle's answers land one off
    wrong = BlockSampler(**kw)(model, batch_size=2, length=14, prompt=x0[:, :prompt_len], generator=gen(0))
    assert not torch.equal(wrong.tokens, x0)


def test_shift_logits_cached_fused_and_uncached_decoding_agree():
    model = tiny(8)
    model.shift_logits = True
    prompt = torch.randint(0, MASK, (3, 5), generator=gen(4))
    kw = dict(batch_size=3, length=18, prompt=prompt)
    outs = [BlockSampler(**o)(model, **kw, generator=gen(7)).tokens
            for o in (dict(), dict(fuse_commit=True), dict(use_cache=False))]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    # the shift is real: reading the same model unshifted gives other samples
    model.shift_logits = False
    assert not torch.equal(BlockSampler()(model, **kw, generator=gen(7)).tokens, outs[0])
    model.shift_logits = True
    with pytest.raises(ConfigError, match="prompt"):
        BlockSampler()(model, batch_size=1, length=8, generator=gen(0))


def test_static_ntk_kv_cached_block_decoding_past_the_training_length_equals_full_recompute():
    """NTK RoPE is static (one base for every position), so keys cached at their true positions stay exact past
    the training context: cached = uncached logits and samples at 3x the saved length. Negative control: the
    scaling is in effect (logits differ from plain RoPE extrapolation there), so equality is not vacuous."""
    from dlm.nn.rope import NTK

    train_len, target = 16, 48
    torch.manual_seed(5)
    ntk = Transformer(vocab_size=V, mask_id=MASK, dim=32, n_layers=2, n_heads=4, max_seq_len=target,
                      attention="block_causal", block_size=K, init_std=0.5,
                      rope_scaling=NTK(factor=target / train_len)).eval()
    plain = Transformer(vocab_size=V, mask_id=MASK, dim=32, n_layers=2, n_heads=4, max_seq_len=target,
                        attention="block_causal", block_size=K, init_std=0.5).eval()
    plain.load_state_dict(ntk.state_dict())
    g = gen(3)
    prefix = torch.randint(0, MASK, (2, 9 * K), generator=g)  # 36 tokens: positions far past train_len
    noisy = torch.where(torch.rand(2, K, generator=g) < 0.5, torch.full((2, K), MASK), torch.randint(0, MASK, (2, K)))
    full = ntk(torch.cat([prefix, noisy], 1))[:, -K:]
    cache = KVCache(ntk.n_layers)
    ntk(prefix, cache=cache, store_cache=True)
    got = ntk(noisy, positions=torch.arange(9 * K, 10 * K), attn_mask=torch.ones(K, 10 * K, dtype=torch.bool),
              cache=cache)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    assert (plain(torch.cat([prefix, noisy], 1))[:, -K:] - full).abs().max() > 1e-3

    prompt = torch.randint(0, MASK, (2, 6), generator=gen(4))
    kw = dict(batch_size=2, length=3 * train_len, prompt=prompt)
    a = BlockSampler()(ntk, **kw, generator=gen(7))
    b = BlockSampler(use_cache=False)(ntk, **kw, generator=gen(7))
    assert torch.equal(a.tokens, b.tokens) and not (a.tokens == MASK).any()
