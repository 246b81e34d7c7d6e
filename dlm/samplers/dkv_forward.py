"""One network call of a full-canvas sampler through a dKV cache (``dlm.cache.dkv``).

A full step (the first, and every ``refresh``-th) runs the whole canvas and fills the cache; a
cached step runs only the policy's query set per row, padded to the longest row (padding reads a
real position's token but writes its K/V into the cache's sink slot, and its logits are dropped).
The result is a canvas-shaped logits tensor whose queried positions hold this call's logits; other
positions are 0 and must not be read (for ``decode`` and ``prefill`` every masked position is queried).
Shapes: x (B, L) long, t (B,) float, logits (B, L, V).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dlm.cache.dkv import DKVCache, DKVPolicy
from dlm.samplers.canvas import padded_positions
from dlm.types import Denoiser


def dkv_logits(model: Denoiser, x: Tensor, t: Tensor | None, *, cache: DKVCache, policy: DKVPolicy, step: int,
               queries: Tensor) -> tuple[Tensor, Tensor]:
    """(logits (B, L, V), queried (B, L) bool) for this step; ``queries`` is the cached-step query set."""
    b, length = x.shape
    t = t.float() if (t is not None and model.time_conditioned) else None
    if policy.full_step(step):
        cache.set_full()
        positions = torch.arange(length, device=x.device)
        logits = model(x, t, positions=positions, cache=cache, store_cache=True)
        return logits, torch.ones_like(queries)
    at, valid = padded_positions(queries)  # (B, Q): each row's queries first, ascending
    attn_mask = cache.set_queries(torch.where(valid, at, length))
    out = model(x.gather(1, at), t, positions=at, attn_mask=attn_mask, cache=cache, store_cache=True)  # (B, Q, V)
    logits = out.new_zeros(b, length, out.shape[-1])
    rows = torch.arange(b, device=x.device)[:, None].expand_as(at)
    logits[rows[valid], at[valid]] = out[valid]
    return logits, queries
