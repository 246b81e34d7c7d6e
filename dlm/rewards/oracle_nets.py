"""Small regressors from (soft) one-hot letters to one value: the networks of trained oracles.

Both take x (B, L, K) letter probabilities (a one-hot for a hard sequence) and return (B,); both are
smooth in x, so an oracle built on them is differentiable w.r.t. the design's probabilities.
Chosen by ``_target_`` in ``conf/fit_oracle.yaml`` (``network``); ``alphabet_size`` and ``length``
are filled in from the data.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class OneHotMLP(nn.Module):
    """Flattened one-hot (L·K) -> ``layers`` x [Linear, SiLU] of width ``hidden`` -> 1. For short fixed
    lengths (GB1: 4 x 20 = 80 inputs), where every position-letter pair and their interactions matter."""

    def __init__(self, *, alphabet_size: int, length: int, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        dims = [alphabet_size * length] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.SiLU()]
        self.body = nn.Sequential(*blocks, nn.Linear(dims[-1], 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x.flatten(1)).squeeze(-1)


class OneHotCNN(nn.Module):
    """Conv1d(K -> hidden, ``kernel``) then ``layers - 1`` residual same-padding convs, SiLU; mean and max
    pooling over positions -> Linear -> 1. For long sequences (200-bp DNA), translation-aware."""

    def __init__(self, *, alphabet_size: int, length: int | None = None, hidden: int = 64, kernel: int = 9,
                 layers: int = 3) -> None:
        super().__init__()
        self.inp = nn.Conv1d(alphabet_size, hidden, kernel, padding=kernel // 2)
        self.convs = nn.ModuleList(nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2) for _ in range(layers - 1))
        self.out = nn.Linear(2 * hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.nn.functional.silu(self.inp(x.transpose(1, 2)))
        for conv in self.convs:
            h = h + torch.nn.functional.silu(conv(h))
        return self.out(torch.cat([h.mean(-1), h.amax(-1)], dim=-1)).squeeze(-1)
