"""Exact key/value cache of committed tokens for block decoding (BD3-LM / SDAR) and AR decoding.

A ``KVCache`` holds, per layer, the keys and values of tokens that will never change again (a
prompt, committed blocks), stored **after** RoPE: positions are absolute and fixed, so the
rotated keys are exactly what a full forward would compute. It is exact for block diffusion
because a noisy block attends only to clean earlier blocks (BD3-LM's M_OBC), whose keys and values
do not depend on anything later.

The backbone reads it with ``forward(tokens, positions=..., cache=cache)`` (queries attend to
every cached key plus the new tokens as the attention mode allows) and appends the new tokens'
keys and values when called with ``store_cache=True``: the block sampler's one commit pass per
block. Shapes: keys / values (B, H_kv, S, D); positions (S,) long.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Per-layer keys and values of committed tokens; ``length`` tokens at ``positions``."""

    def __init__(self, n_layers: int) -> None:
        self.keys: list[Tensor | None] = [None] * n_layers
        self.values: list[Tensor | None] = [None] * n_layers
        self.positions: Tensor | None = None
        self._pending_positions: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.positions is None else int(self.positions.shape[0])

    def next_positions(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """Positions (n,) that follow the cached tokens: the default for new tokens."""
        return torch.arange(self.length, self.length + n, device=device)

    def read(self, layer: int) -> tuple[Tensor, Tensor] | None:
        k, v = self.keys[layer], self.values[layer]
        return None if k is None or v is None else (k, v)

    def append(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Add the keys / values (B, H_kv, n, D) of n newly committed tokens to ``layer``."""
        old = self.read(layer)
        self.keys[layer] = k if old is None else torch.cat([old[0], k], dim=2)
        self.values[layer] = v if old is None else torch.cat([old[1], v], dim=2)

    def commit_positions(self, positions: Tensor) -> None:
        """Record the positions (n,) of the tokens just appended to every layer."""
        positions = positions.reshape(-1)
        self.positions = positions if self.positions is None else torch.cat([self.positions, positions])

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` tokens (drop K/V stored for tokens that are not committed)."""
        self.keys = [None if k is None else k[:, :, :length] for k in self.keys]
        self.values = [None if v is None else v[:, :, :length] for v in self.values]
        self.positions = None if self.positions is None else self.positions[:length]

    def select_rows(self, rows: Tensor) -> KVCache:
        """A cache over a subset of the batch rows (B' <= B), sharing nothing mutable with this one."""
        out = KVCache(len(self.keys))
        out.keys = [None if k is None else k[rows] for k in self.keys]
        out.values = [None if v is None else v[rows] for v in self.values]
        out.positions = self.positions
        return out
