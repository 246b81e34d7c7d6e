"""Rotary position embeddings (Su et al. 2021, RoFormer) and NTK base scaling for context extension.

Convention: Llama / HF "rotate_half" (the two halves of the head dimension form the rotation
pairs, not adjacent even/odd entries), with tables computed exactly as HF transformers computes
them, so converted Llama / Qwen checkpoints reproduce HF outputs bit for bit.

Scaling is a *value* (``NoScaling()``, ``NTK(factor)``, ``NTKAuto(train_len, target_len)``,
``NTKAutoDiffusion(train_len, target_len)``): each
knows how to change the RoPE base theta, and ``rope_frequencies`` just asks it; nothing branches
on names. In Hydra: ``model.rope_scaling={_target_: dlm.nn.rope.NTKAuto, train_len: 1024,
target_len: 4096}``. All three change the base only (static NTK): no position interpolation, no
attention temperature, and the tables do not depend on the sequence length, so cached keys
stay consistent during block decoding (unlike HF's length-dependent "dynamic" NTK).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dlm.errors import ConfigError


@dataclass(frozen=True)
class NoScaling:
    """Plain RoPE: theta unchanged."""

    def scaled_theta(self, theta: float, head_dim: int) -> float:
        return theta


@dataclass(frozen=True)
class NTK:
    """NTK-aware base change (bloc97, 2023): theta' = theta * factor^(D / (D - 2)).

    The exponent makes the lowest frequency (i = D/2 - 1) slow down by exactly ``factor`` (like
    position interpolation) while the highest frequency (i = 0) is untouched.
    """

    factor: float

    def __post_init__(self) -> None:
        if self.factor < 1.0:
            raise ConfigError(f"rope_scaling NTK(factor={self.factor}): factor must be >= 1 (1 = no scaling)")

    def scaled_theta(self, theta: float, head_dim: int) -> float:
        return theta * self.factor ** (head_dim / (head_dim - 2))


def critical_dim(head_dim: int, theta: float, train_len: int) -> int:
    """First head dimension whose RoPE period exceeds ``train_len`` (Liu et al. 2023, "Scaling
    laws of RoPE-based extrapolation").

    Pair i (i = 0 .. D/2 - 1) rotates with period 2*pi * theta^(2i/D). Pairs with
    i >= (D/2) * log_theta(train_len / 2*pi) never complete a full rotation during training, so
    the model only learned part of their circle. In head-dimension units (two per pair):

        d_crit = 2 * ceil((D/2) * log(train_len / 2*pi) / log(theta)),  clamped to [2, D].

    LLaDA-8B (D=128, theta=5e5, train_len=4096) gives d_crit = 64.
    """
    if train_len <= 2 * math.pi:
        raise ConfigError(
            f"rope_scaling train_len={train_len} must exceed 2*pi (one rotation of the fastest pair)"
        )
    pairs = math.ceil((head_dim / 2) * math.log(train_len / (2 * math.pi)) / math.log(theta))
    return min(max(2 * pairs, 2), head_dim)


@dataclass(frozen=True)
class NTKAuto:
    """NTK base change chosen by the critical-dimension rule (LongLLaDA, Liu et al. 2025).

    Choose the new base theta' so that the critical dimension d_crit (see ``critical_dim``) has a
    period equal to the target length, i.e. the dimensions that were already unseen as full
    rotations at ``train_len`` stay unseen at ``target_len``:

        2*pi * theta'^(d_crit / D) = target_len   =>   theta' = (target_len / 2*pi)^(D / d_crit)

    and the scaling factor is lambda = theta' / theta, rounded up to an integer when
    ``round_up`` (LongLLaDA's choice; it reproduces their LLaDA-8B factors 4 / 14 / 31 / 55 for
    8k / 16k / 24k / 32k from 4k). lambda is never below 1. Unlike ``NTK(factor=target/train)``
    the factor depends on theta and D, not only on the length ratio.
    """

    train_len: int
    target_len: int
    round_up: bool = True

    def __post_init__(self) -> None:
        check_target_len("NTKAuto", self.train_len, self.target_len)

    def factor(self, theta: float, head_dim: int) -> float:
        return ntk_auto_factor(theta, head_dim, train_len=self.train_len, target_len=self.target_len,
                               round_up=self.round_up)

    def scaled_theta(self, theta: float, head_dim: int) -> float:
        return theta * self.factor(theta, head_dim)


def check_target_len(name: str, train_len: int, target_len: int) -> None:
    """An automatic NTK extends the context: ``target_len`` below ``train_len`` is refused."""
    if target_len < train_len:
        raise ConfigError(f"rope_scaling {name}(train_len={train_len}, target_len={target_len}): "
                          "target_len must be >= train_len")


def ntk_auto_factor(theta: float, head_dim: int, *, train_len: int, target_len: int, round_up: bool) -> float:
    """lambda = theta' / theta with theta' = (target_len / 2*pi)^(D / d_crit(train_len)) (``NTKAuto``), >= 1;
    rounded up to an integer when ``round_up``."""
    d_crit = critical_dim(head_dim, theta, train_len)
    new_theta = (target_len / (2 * math.pi)) ** (head_dim / d_crit)
    lam = new_theta / theta
    return float(max(math.ceil(lam), 1)) if round_up else max(lam, 1.0)


@dataclass(frozen=True)
class NTKAutoDiffusion:
    """UltraLLaDA's "diffusion-aware" NTK (arXiv 2510.10481): the critical-dimension rule of ``NTKAuto``
    with both lengths doubled.

    A bidirectional model trained on rows of T tokens sees relative distances in [-T, T], a span of 2T,
    while a causal model only sees [0, T]; so the dimensions that completed a rotation during training
    are those with period <= 2T (T_cap = 2 * train_len), and at the target the span is 2 * target_len
    (T_Ecap):

        d_crit = d_crit(D, theta, 2 * train_len),   theta' = (2 * target_len / 2*pi)^(D / d_crit)

    LLaDA-8B 4k -> 16k: d_crit 70 (64 for ``NTKAuto``), lambda = 12.5 -> 13 (14 for ``NTKAuto``).
    """

    train_len: int
    target_len: int
    round_up: bool = True

    def __post_init__(self) -> None:
        check_target_len("NTKAutoDiffusion", self.train_len, self.target_len)

    def factor(self, theta: float, head_dim: int) -> float:
        return ntk_auto_factor(theta, head_dim, train_len=2 * self.train_len, target_len=2 * self.target_len,
                               round_up=self.round_up)

    def scaled_theta(self, theta: float, head_dim: int) -> float:
        return theta * self.factor(theta, head_dim)


RopeScaling = NoScaling | NTK | NTKAuto | NTKAutoDiffusion


def rope_frequencies(
    head_dim: int,
    *,
    theta: float = 10000.0,
    scaling: RopeScaling | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Inverse frequencies inv_freq_i = 1 / theta'^(2i / D), i = 0 .. D/2 - 1, float32, shape (D/2,).

    theta' = ``scaling.scaled_theta(theta, D)``. Computed in float32 as HF does (on CPU by
    default; keep it float32 even when the model runs in bf16: a bf16 inv_freq is off by ~1e-3
    relative, i.e. whole radians at position 1000).
    """
    if head_dim % 2:
        raise ConfigError(f"RoPE needs an even head_dim, got {head_dim}; change model.dim / model.n_heads")
    base = (scaling or NoScaling()).scaled_theta(theta, head_dim)
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))


def rope_tables(positions: Tensor, inv_freq: Tensor) -> tuple[Tensor, Tensor]:
    """cos, sin tables for integer ``positions`` (B, L) or (L,) -> each (..., L, D), float32.

    angle[..., l, i] = positions[..., l] * inv_freq[i], duplicated over the two halves
    (rotate_half convention). Kept in float32; ``apply_rope`` casts to the activation dtype.
    """
    freqs = positions[..., None].float() * inv_freq.to(device=positions.device, dtype=torch.float)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate queries or keys: x * cos + rotate_half(x) * sin.

    x: (B, H, L, D); cos, sin: (B, L, D) or (L, D) from ``rope_tables`` (broadcast over heads).
    Tables are cast to x.dtype first, as HF does, so bf16 results match HF bit for bit.
    """
    cos = cos.to(x.dtype).unsqueeze(-3)
    sin = sin.to(x.dtype).unsqueeze(-3)
    return x * cos + _rotate_half(x) * sin
