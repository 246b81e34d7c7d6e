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
    """Per-layer keys and values of committed tokens; ``length`` tokens at ``positions``.

    Storage is a per-layer buffer (B, H_kv, capacity, D) that grows by doubling: a call writes its
    new keys / values after the committed ones and attends over a view of the buffer, so neither
    reading nor committing copies the cache (a ``torch.cat`` per layer per call would copy all of it).
    Inference only: the buffer is written in place.
    """

    def __init__(self, n_layers: int) -> None:
        self._k: list[Tensor | None] = [None] * n_layers
        self._v: list[Tensor | None] = [None] * n_layers
        self._fill = [0] * n_layers  # committed tokens per layer
        self.positions: Tensor | None = None

    @property
    def n_layers(self) -> int:
        return len(self._k)

    @property
    def length(self) -> int:
        return 0 if self.positions is None else int(self.positions.shape[0])

    def next_positions(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """Positions (n,) that follow the cached tokens: the default for new tokens."""
        return torch.arange(self.length, self.length + n, device=device)

    def read(self, layer: int) -> tuple[Tensor, Tensor] | None:
        """Committed keys and values (B, H_kv, S, D) of ``layer`` (views), or None when empty."""
        fill, k, v = self._fill[layer], self._k[layer], self._v[layer]
        return None if fill == 0 or k is None or v is None else (k[:, :, :fill], v[:, :, :fill])

    def extend(self, layer: int, k: Tensor, v: Tensor, *, store: bool) -> tuple[Tensor, Tensor]:
        """Keys / values (B, H_kv, S + n, D) of the committed tokens followed by the n new ones (B, H_kv, n, D).

        ``store``: the new tokens become committed; otherwise their slots are scratch that the next
        call overwrites.
        """
        fill, n = self._fill[layer], k.shape[2]
        self._reserve(layer, k, v, fill + n)
        kb, vb = self._k[layer], self._v[layer]
        kb[:, :, fill : fill + n] = k
        vb[:, :, fill : fill + n] = v
        if store:
            self._fill[layer] = fill + n
        return kb[:, :, : fill + n], vb[:, :, : fill + n]

    def append(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Add the keys / values (B, H_kv, n, D) of n newly committed tokens to ``layer``."""
        self.extend(layer, k, v, store=True)

    def _reserve(self, layer: int, k: Tensor, v: Tensor, need: int) -> None:
        kb = self._k[layer]
        if kb is not None and kb.shape[2] >= need:
            return
        cap = max(need, 2 * (kb.shape[2] if kb is not None else 0), 64)
        fill = self._fill[layer]
        new_k = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
        new_v = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
        if kb is not None and fill:
            new_k[:, :, :fill] = kb[:, :, :fill]
            new_v[:, :, :fill] = self._v[layer][:, :, :fill]
        self._k[layer], self._v[layer] = new_k, new_v

    def commit_positions(self, positions: Tensor) -> None:
        """Record the positions (n,) of the tokens just appended to every layer."""
        positions = positions.reshape(-1)
        self.positions = positions if self.positions is None else torch.cat([self.positions, positions])

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` tokens (drop K/V stored for tokens that are not committed)."""
        self._fill = [min(f, length) for f in self._fill]
        self.positions = None if self.positions is None else self.positions[:length]

    def select_rows(self, rows: Tensor) -> KVCache:
        """A cache over a subset of the batch rows (B' <= B), sharing nothing mutable with this one."""
        out = KVCache(self.n_layers)
        out._k = [None if k is None else k[rows] for k in self._k]
        out._v = [None if v is None else v[rows] for v in self._v]
        out._fill = list(self._fill)
        out.positions = self.positions
        return out
