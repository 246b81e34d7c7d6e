"""Delayed key/value cache for bidirectional masked-diffusion decoding (dKV-Cache, Ma et al. 2025).

In a bidirectional denoiser every token's keys and values depend on the whole canvas, so no cache
is exact; but a decoded token's K/V change little once it and its neighbours settle, while they
change a lot at the step its input flips from [MASK] to its token. dKV-Cache therefore:

* delays: a token decoded at step s is still a query at step s + 1 (now with its real token), and
  the K/V computed then are reused from step s + 2 on; prompt tokens are cached from the first pass;
* refreshes: every ``refresh`` steps a full forward over the canvas rebuilds every entry.

``DKVCache`` holds per layer a full-canvas buffer (B, H_kv, L + 1, D): slot j is position j, the
extra slot L is a sink that padded queries write into and nobody attends to. A call names its
queries' slots (``set_queries``); each layer scatters the fresh K/V of those queries into the
buffer and attends over it, so a query sees fresh K/V of every query and cached K/V of the rest.
Keys are stored **after** RoPE: in full-canvas decoding a position never moves, so the rotated key
of position j is what a full forward computes for it; caching pre-RoPE (and rotating at read time)
would only be needed if positions shifted, which they do not here.

Query sets differ per row; they are padded to the longest (``padded_positions``) and the sink slot
makes the padding inert, so there is no per-row Python loop. Which positions are queried is the
``DKVPolicy``'s business (``decode``, ``greedy``, ``prefill``); the sampler asks it each step.
Shapes: B batch, Q queries per row (padded), L canvas length, H_kv kv heads, D head dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dlm.errors import ConfigError

Variant = Literal["decode", "greedy", "prefill"]


class DKVCache:
    """Full-canvas K/V buffers of one sampler call; implements ``dlm.types.AttentionCache``."""

    def __init__(self, length: int) -> None:
        self.canvas_length = length
        self._k: dict[int, Tensor] = {}
        self._v: dict[int, Tensor] = {}
        self._slots: Tensor | None = None  # (B, Q) buffer slots of this call's queries; L = padding
        self._full = False

    # -- the protocol the backbone reads -------------------------------------------------------
    @property
    def length(self) -> int:
        return 0  # positions are always given explicitly: nothing is "before" the queries

    @property
    def positions(self) -> Tensor | None:
        return None

    def commit_positions(self, positions: Tensor) -> None:
        pass  # slots are positions; nothing to record

    def extend(self, layer: int, k: Tensor, v: Tensor, *, store: bool) -> tuple[Tensor, Tensor]:
        """Write this call's fresh K/V (B, H_kv, Q, D) at the query slots; return the canvas K/V
        (B, H_kv, L, D) on a full pass (the fresh K/V: bitwise the uncached forward), else (.., L + 1, ..)."""
        if self._full:
            kb, vb = self._reserve(layer, k, v)
            kb[:, :, : self.canvas_length] = k
            vb[:, :, : self.canvas_length] = v
            return k, v  # the fresh tensors themselves: a full pass is the uncached forward bit for bit
        kb, vb = self._k.get(layer), self._v.get(layer)
        if kb is None or vb is None:
            raise ConfigError("the dKV cache was read before a full pass filled it; start with a full step")
        if not store:
            kb, vb = kb.clone(), vb.clone()
        idx = self._slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        kb.scatter_(2, idx, k)
        vb.scatter_(2, idx, v)
        return kb, vb

    # -- what the sampler drives ---------------------------------------------------------------
    def set_full(self) -> None:
        """The next call is a full forward over the canvas (first step, refresh)."""
        self._full, self._slots = True, None

    def set_queries(self, slots: Tensor) -> Tensor:
        """The next call's queries sit at ``slots`` (B, Q) (L = padding); returns the (B, 1, Q, L + 1)
        "may attend" mask: every real slot, never the sink."""
        self._full, self._slots = False, slots
        allowed = torch.ones(slots.shape[0], 1, slots.shape[1], self.canvas_length + 1, dtype=torch.bool,
                             device=slots.device)
        allowed[..., self.canvas_length] = False
        return allowed

    def _reserve(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if layer not in self._k:
            shape = (k.shape[0], k.shape[1], self.canvas_length + 1, k.shape[3])
            self._k[layer], self._v[layer] = k.new_zeros(shape), v.new_zeros(shape)
        return self._k[layer], self._v[layer]


@dataclass(frozen=True)
class DKVPolicy:
    """Which positions a cached step recomputes, and when the whole canvas is refreshed.

    decode   queries = still masked + decoded at the previous step (delayed caching); refresh every
             ``refresh`` steps. The masked positions always have fresh logits.
    greedy   queries = the positions decoded at this step (known in advance: a fixed order) + decoded
             at the previous step + the masked positions within ``window`` of them; other
             masked positions keep stale K/V. Needs a sampler with a decoding order fixed in advance.
    prefill  queries = every non-prompt position; the prompt's K/V come from the first pass and are
             never refreshed (``refresh`` is ignored).
    Step 0 is always a full pass (it fills the cache); ``refresh=1`` makes every step full (the
    uncached sampler, bit for bit).
    """

    variant: Variant = "decode"
    refresh: int = 8
    window: int = 0

    def __post_init__(self) -> None:
        if self.variant not in ("decode", "greedy", "prefill"):
            raise ConfigError(f"sampler.cache.variant={self.variant!r}; valid: decode, greedy, prefill")
        if self.refresh < 1:
            raise ConfigError(f"sampler.cache.refresh={self.refresh} must be >= 1 (1 = a full pass every step)")
        if self.window < 0:
            raise ConfigError(f"sampler.cache.window={self.window} must be >= 0")

    def full_step(self, step: int) -> bool:
        """Whether ``step`` recomputes the whole canvas."""
        if step == 0:
            return True
        return self.variant != "prefill" and step % self.refresh == 0

    def queries(self, masked: Tensor, just_decoded: Tensor, generated: Tensor, next_decoded: Tensor | None) -> Tensor:
        """(B, L) bool positions to recompute at a cached step.

        masked: still masked; just_decoded: committed at the previous step; generated: not given by the
        prompt; next_decoded: (greedy) the positions this step will commit.
        """
        if self.variant == "prefill":
            return generated
        if self.variant == "decode":
            return masked | just_decoded
        if next_decoded is None:
            raise ConfigError("sampler.cache.variant=greedy needs a decoding order fixed in advance "
                              "(sampler=random_order); use variant=decode with confidence orders")
        seeds = next_decoded | just_decoded
        return seeds | masked_neighbours(seeds, masked, self.window)


def masked_neighbours(seeds: Tensor, masked: Tensor, window: int) -> Tensor:
    """(B, L) bool: masked positions within ``window`` positions of a seed (either side)."""
    if window == 0:
        return torch.zeros_like(masked)
    near = seeds.clone()
    for shift in range(1, window + 1):
        near[:, shift:] |= seeds[:, :-shift]
        near[:, :-shift] |= seeds[:, shift:]
    return near & masked
