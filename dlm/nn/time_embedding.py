"""Diffusion-time conditioning: sinusoidal timestep embedding + MLP, and adaLN modulation.

As in DiT (Peebles & Xie 2023) and MDLM's DDiT backbone (Sahoo et al. 2024): the time t is
embedded, passed through SiLU, and each block predicts a (shift, scale, gate) per sub-layer from
it with a zero-initialised linear map.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[cos(t * f_j), sin(t * f_j)], f_j = max_period^(-j / (dim/2)), j = 0 .. dim/2 - 1.

    t: (...,) float -> (..., dim) float32 (zero-padded when dim is odd). float32 island: the
    phases t * f_j are large and bf16 would alias neighbouring times.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], dim=-1)
    return emb


class TimestepEmbedding(nn.Module):
    """t in [0, 1] -> Linear(freq_dim, cond_dim) -> SiLU -> Linear(cond_dim, cond_dim).

    t is multiplied by ``time_scale`` (default 1000) before the sinusoid. Why: with
    max_period = 10^4 the frequencies span [1e-4, 1]; raw t in [0, 1] would leave almost every
    channel near cos = 1, sin = 0. Scaling by 1000 matches DiT's integer timesteps 0..1000.

    t: (B,) or (B, L) (per-token / per-block time) -> (B, cond_dim) or (B, L, cond_dim).
    """

    def __init__(self, cond_dim: int, freq_dim: int = 256, time_scale: float = 1000.0) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_scale = time_scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, t: Tensor) -> Tensor:
        emb = sinusoidal_embedding(t * self.time_scale, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class AdaLNModulation(nn.Module):
    """c -> n_chunks tensors of width ``dim`` (e.g. shift, scale, gate), from one Linear.

    Zero-initialised (weight and bias), so at initialisation every chunk is 0: with
    ``modulate`` and a (1 + gate) residual the conditioned block equals the unconditioned one.
    ``reset_parameters`` restores the zeros; a model-wide init must call it last.

    c: (B, cond_dim) -> chunks (B, 1, dim) (broadcast over positions);
    c: (B, L, cond_dim) -> chunks (B, L, dim).
    """

    def __init__(self, cond_dim: int, dim: int, n_chunks: int) -> None:
        super().__init__()
        self.n_chunks = n_chunks
        self.linear = nn.Linear(cond_dim, n_chunks * dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c: Tensor) -> tuple[Tensor, ...]:
        if c.dim() == 2:
            c = c[:, None, :]
        return self.linear(c).chunk(self.n_chunks, dim=-1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x * (1 + scale) + shift (DiT adaLN); x: (B, L, dim), shift/scale broadcastable."""
    return x * (1 + scale) + shift
