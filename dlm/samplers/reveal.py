"""Reveal policies: which masked positions a confidence-ordered sampler commits at a step.

``policy(confidence (B, L), masked (B, L) bool, step, num_steps) -> commit (B, L) bool``; every
row with a masked position commits at least one, so decoding always terminates in num_steps.
"""

from __future__ import annotations

import torch
from torch import Tensor


def top_confidence(confidence: Tensor, masked: Tensor, count: Tensor) -> Tensor:
    """The ``count[b]`` most confident masked positions of each row (B, L) bool."""
    conf = confidence.masked_fill(~masked, float("-inf"))
    ranks = conf.argsort(dim=-1, descending=True).argsort(dim=-1)
    return (ranks < count[:, None]) & masked


class StaticCount:
    """Commit an even share of the remaining masks each step: ceil(n_masked / steps_left)."""

    def __call__(self, confidence: Tensor, masked: Tensor, step: int, num_steps: int) -> Tensor:
        steps_left = max(1, num_steps - step)
        count = (masked.sum(-1) + steps_left - 1) // steps_left
        return top_confidence(confidence, masked, count)


class ConfidenceThreshold:
    """Commit every masked position whose confidence >= ``threshold`` (at least the best one).

    On the last step everything left is committed. threshold = 1 commits exactly one token per
    step (unless several are certain), i.e. confidence-ordered token-by-token decoding.
    """

    def __init__(self, threshold: float = 0.9) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"sampler.threshold={threshold} must lie in (0, 1]")
        self.threshold = threshold

    def __call__(self, confidence: Tensor, masked: Tensor, step: int, num_steps: int) -> Tensor:
        if step >= num_steps - 1:
            return masked.clone()
        best = top_confidence(confidence, masked, torch.ones_like(masked[:, 0], dtype=torch.long))
        return ((confidence >= self.threshold) & masked) | best
