"""Scaled dot-product attention with interchangeable kernels and boolean "may attend" masks.

    out = softmax(Q K^T / sqrt(D) + M) V,   M = 0 where allowed, -inf where not.

Every backend computes the same function (tested against ``dense``):
  * ``dense``: explicit reference implementation, float32 scores and softmax.
  * ``sdpa``:  ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels where possible).
  * ``flash``: ``flash_attn.flash_attn_func``; CUDA fp16/bf16 and no ``attn_mask`` only.
  * ``auto``:  flash when it applies, else sdpa.

Conventions
  * ``causal`` is aligned bottom-right when L != S: query i sits at absolute position S - L + i
    and attends keys j <= S - L + i (what a KV cache needs; also flash-attn's convention).
    For L == S this is the usual lower triangle.
  * A query row with no allowed key (e.g. a pad query under causal + left padding) outputs 0
    rather than NaN, in every backend; its value is meaningless and callers ignore it.
"""

from __future__ import annotations

import importlib.util
import math
from functools import cache
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.errors import ConfigError

AttentionMode = Literal["bidirectional", "causal"]
AttentionBackend = Literal["auto", "sdpa", "flash", "dense"]


def padding_mask_to_attn_mask(attention_mask: Tensor) -> Tensor:
    """HF-style padding mask (B, S), 1 = real token, 0 = pad -> boolean "may attend" (B, 1, 1, S)."""
    return attention_mask.bool()[:, None, None, :]


def causal_mask(q_len: int, kv_len: int, device: torch.device | None = None) -> Tensor:
    """Boolean (L, S) lower-triangular mask aligned bottom-right (see module docstring)."""
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(kv_len - q_len)


@cache
def _flash_installed() -> bool:
    # find_spec instead of importing at module load: nothing runs at import, and a broken CUDA
    # install should only fail a run that asks for flash.
    return importlib.util.find_spec("flash_attn") is not None


def _flash_applies(q: Tensor, attn_mask: Tensor | None) -> bool:
    return (
        attn_mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _flash_installed()
    )


def _full_mask(q: Tensor, k: Tensor, mode: AttentionMode, attn_mask: Tensor | None) -> Tensor | None:
    """Combine mode and attn_mask into one boolean mask broadcastable to (B, H, L, S), or None."""
    if mode == "causal":
        tri = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
        return tri if attn_mask is None else attn_mask.bool() & tri
    return None if attn_mask is None else attn_mask.bool()


def _repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, Hkv, S, D) -> (B, Hkv * n_rep, S, D); query head h uses kv head h // n_rep (Llama GQA)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _dense(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> Tensor:
    n_rep = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    # float32 island: the reference must not lose precision in the logits or the normaliser.
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    if mask is not None:
        probs = probs.masked_fill(~mask, 0.0)  # fully masked rows: NaN -> 0
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return (probs @ v.float()).to(q.dtype)


def _sdpa(
    q: Tensor, k: Tensor, v: Tensor, mode: AttentionMode, mask: Tensor | None, dropout_p: float
) -> Tensor:
    gqa = q.shape[1] != k.shape[1]
    if mask is None:
        # Unmasked causal with L == S takes the is_causal fast path (no mask materialised).
        is_causal = mode == "causal"
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=gqa
        )
    # Some fused kernels return NaN for rows with no allowed key; let such rows attend everywhere
    # and zero their output afterwards, so every kernel agrees with ``dense``.
    has_key = mask.any(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask | ~has_key, dropout_p=dropout_p, enable_gqa=gqa
    )
    return out * has_key.to(out.dtype)


def _flash(q: Tensor, k: Tensor, v: Tensor, mode: AttentionMode, dropout_p: float) -> Tensor:
    from flash_attn import flash_attn_func

    # flash-attn wants (B, L, H, D) and handles GQA natively.
    out = flash_attn_func(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p, causal=mode == "causal"
    )
    return out.transpose(1, 2)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mode: AttentionMode,
    attn_mask: Tensor | None = None,
    backend: AttentionBackend = "auto",
    dropout_p: float = 0.0,
) -> Tensor:
    """Multi-head attention with grouped-query support.

    q: (B, Hq, L, D); k, v: (B, Hkv, S, D) with Hq a multiple of Hkv (GQA / MQA: query head h
    reads kv head h // (Hq / Hkv), as in Llama). attn_mask: optional boolean "may attend" mask
    broadcastable to (B, Hq, L, S), True = attend (padding, block-diffusion masks), ANDed with
    ``mode``. dropout_p is applied to the attention probabilities (pass 0 at eval).
    Returns (B, Hq, L, D) in q's dtype.
    """
    if backend not in get_args(AttentionBackend):
        raise ConfigError(f"unknown attn_backend={backend!r}; choose one of {get_args(AttentionBackend)}")
    if mode not in get_args(AttentionMode):
        raise ConfigError(f"unknown attention mode={mode!r}; choose one of {get_args(AttentionMode)}")
    if q.shape[1] % k.shape[1]:
        raise ConfigError(
            f"n_heads={q.shape[1]} must be a multiple of n_kv_heads={k.shape[1]}; change model.n_kv_heads"
        )
    if backend == "flash" or (backend == "auto" and _flash_applies(q, attn_mask)):
        if not _flash_applies(q, attn_mask):
            raise ConfigError(
                "attn_backend='flash' needs flash-attn installed (pip install '.[gpu]'), CUDA fp16/bf16 "
                f"tensors (got device={q.device}, dtype={q.dtype}) and no attn_mask "
                f"(got {'a mask' if attn_mask is not None else 'none'}); use model.attn_backend=auto or sdpa"
            )
        return _flash(q, k, v, mode, dropout_p)
    if backend == "dense":
        return _dense(q, k, v, _full_mask(q, k, mode, attn_mask), dropout_p)
    # sdpa's is_causal is aligned top-left, so a causal L != S call needs an explicit mask.
    explicit = attn_mask is not None or (mode == "causal" and q.shape[-2] != k.shape[-2])
    mask = _full_mask(q, k, mode, attn_mask) if explicit else None
    return _sdpa(q, k, v, mode, mask, dropout_p)
