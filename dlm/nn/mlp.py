"""SwiGLU feed-forward block (Shazeer 2020, "GLU Variants Improve Transformer"), Llama naming."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SwiGLU(nn.Module):
    """y = W_down (silu(W_gate x) * W_up x).

    Parameter names ``gate_proj, up_proj, down_proj`` match HF Llama / Qwen so converting a
    checkpoint is a name map.

    x: (..., dim) -> (..., dim); hidden activations (..., hidden_dim).
    """

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
