"""RoPE tables, the rotate_half convention and NTK scaling values."""

import math

import pytest
import torch

from dlm.errors import ConfigError
from dlm.nn.rope import NTK, NoScaling, NTKAuto, apply_rope, critical_dim, rope_frequencies, rope_tables


def test_ntk_factor_one_is_plain_rope_exactly():
    plain = rope_frequencies(64, theta=10000.0, scaling=NoScaling())
    assert torch.equal(rope_frequencies(64, theta=10000.0, scaling=NTK(factor=1.0)), plain)
    assert torch.equal(rope_frequencies(64, theta=10000.0), plain)


def test_table_matches_hand_computed_d8():
    inv_freq = rope_frequencies(8, theta=10000.0)
    # 1 / 10000^(2i/8), i = 0..3
    assert torch.allclose(inv_freq, torch.tensor([1.0, 0.1, 0.01, 0.001]), rtol=1e-6, atol=0)
    cos, sin = rope_tables(torch.arange(5), inv_freq)
    assert cos.shape == sin.shape == (5, 8)
    for pos in range(5):
        for j in range(8):
            angle = pos * [1.0, 0.1, 0.01, 0.001][j % 4]  # rotate_half: both halves share frequencies
            assert cos[pos, j].item() == pytest.approx(math.cos(angle), abs=1e-6)
            assert sin[pos, j].item() == pytest.approx(math.sin(angle), abs=1e-6)


def test_batched_positions_match_1d():
    inv_freq = rope_frequencies(16)
    pos = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8]])
    cos_b, sin_b = rope_tables(pos, inv_freq)
    cos_1, sin_1 = rope_tables(torch.arange(5, 9), inv_freq)
    assert cos_b.shape == (2, 4, 16)
    assert torch.equal(cos_b[1], cos_1) and torch.equal(sin_b[1], sin_1)


def test_apply_rope_preserves_norms():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 16, generator=g)
    cos, sin = rope_tables(torch.arange(100, 107), rope_frequencies(16))
    y = apply_rope(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 1, 1, 32, generator=g), torch.randn(1, 1, 1, 32, generator=g)
    inv_freq = rope_frequencies(32)

    def score(m: int, n: int) -> float:
        cq, sq = rope_tables(torch.tensor([m]), inv_freq)
        ck, sk = rope_tables(torch.tensor([n]), inv_freq)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()

    for shift in (1, 17, 300):
        assert score(5 + shift, 2 + shift) == pytest.approx(score(5, 2), abs=1e-4)
    assert abs(score(5, 2) - score(5, 3)) > 1e-3


def test_ntk_slows_lowest_frequency_by_factor():
    plain, scaled = rope_frequencies(64), rope_frequencies(64, scaling=NTK(factor=4.0))
    assert scaled[0] == plain[0]  # highest frequency untouched
    assert scaled[-1].item() == pytest.approx(plain[-1].item() / 4.0, rel=1e-5)


def test_critical_dim_and_ntk_auto_reproduce_longllada():
    # LLaDA-8B: D = 128, theta = 5e5, trained at 4k; LongLLaDA's factors for 8k/16k/24k/32k.
    assert critical_dim(128, 5e5, 4096) == 64
    factors = [NTKAuto(train_len=4096, target_len=n).factor(5e5, 128) for n in (8192, 16384, 24576, 32768)]
    assert factors == [4.0, 14.0, 31.0, 55.0]
    # LLaMA3-8B (trained at 8k): 16k -> 4, 32k -> 13.
    assert critical_dim(128, 5e5, 8192) == 70
    assert NTKAuto(train_len=8192, target_len=32768).factor(5e5, 128) == 13.0
    unrounded = NTKAuto(train_len=4096, target_len=16384, round_up=False).factor(5e5, 128)
    assert 13.0 < unrounded < 14.0
    assert rope_frequencies(128, theta=5e5, scaling=NTKAuto(4096, 16384))[1].item() == pytest.approx(
        1.0 / (5e5 * 14) ** (2 / 128), rel=1e-6
    )


def test_critical_dim_periods():
    d, theta, train_len = 64, 10000.0, 1024
    dc = critical_dim(d, theta, train_len)
    periods = 2 * math.pi / rope_frequencies(d, theta=theta).double()
    assert (periods[: dc // 2] < train_len).all() and (periods[dc // 2 :] >= train_len).all()


def test_ntk_auto_never_shrinks_and_validates():
    assert NTKAuto(train_len=1024, target_len=1024).factor(10000.0, 64) >= 1.0
    with pytest.raises(ConfigError, match="target_len"):
        NTKAuto(train_len=2048, target_len=1024)
    with pytest.raises(ConfigError, match="factor"):
        NTK(factor=0.5)
    with pytest.raises(ConfigError, match="head_dim"):
        rope_frequencies(7)
