"""Reverse-step maths of absorbing diffusion: SUBS parameterisation and unmasking probabilities.

Shapes: logits (..., V) with V including the mask token; x0, xt (B, L) long.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def subs_log_probs(logits: Tensor, mask_id: int) -> Tensor:
    """SUBS parameterisation (MDLM Eq. 8): log p_theta(x0 | xt) over the real vocabulary.

    The mask column gets probability 0 ("zero masking probability") and the rest is
    renormalised. Computed in float32 even under bf16 autocast: the loss is a log-sum-exp over
    up to 50k entries. Carry-over of unmasked tokens is implicit in every caller, which only
    scores masked positions. logits (..., V) -> log-probs (..., V) float32.
    """
    logits = logits.float()
    logits = logits.index_fill(-1, torch.tensor([mask_id], device=logits.device), float("-inf"))
    return F.log_softmax(logits, dim=-1)


def masked_token_nll(logits: Tensor, x0: Tensor, masked: Tensor, mask_id: int) -> Tensor:
    """-log p_theta(x0^i | xt) at masked positions, 0 elsewhere; (B, L) float32.

    Only the masked rows are normalised: for a 50k vocabulary that is the memory that matters.
    """
    nll = torch.zeros(x0.shape, device=x0.device, dtype=torch.float32)
    if masked.any():
        rows = logits[masked]  # (N, V)
        log_p = subs_log_probs(rows, mask_id)
        nll[masked] = -log_p.gather(-1, x0[masked][:, None]).squeeze(-1)
    return nll


def unmask_probability(alpha_t: Tensor, alpha_s: Tensor) -> Tensor:
    """P(a token masked at t is revealed by s < t) = (alpha_s - alpha_t) / (1 - alpha_t).

    The absorbing posterior q(x_s | x_t, x0) (MDLM Eq. 6 / RADD App. D's Tweedie tau-leap rate).
    """
    return ((alpha_s - alpha_t) / (1.0 - alpha_t)).clamp(0.0, 1.0)
