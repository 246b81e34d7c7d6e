"""Reveal policies: which masked positions a confidence-ordered sampler commits at a step.

``policy(confidence (B, L), masked (B, L) bool, step, num_steps) -> commit (B, L) bool``; every
row with a masked position commits at least one, so decoding always terminates in num_steps.
``required_order``: the confidence score the policy reads (``None``: any), checked at build time.
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

    required_order: str | None = None

    def __call__(self, confidence: Tensor, masked: Tensor, step: int, num_steps: int) -> Tensor:
        steps_left = max(1, num_steps - step)
        count = (masked.sum(-1) + steps_left - 1) // steps_left
        return top_confidence(confidence, masked, count)


class ConfidenceThreshold:
    """Commit every masked position whose confidence >= ``threshold`` (at least the best one).

    On the last step everything left is committed. threshold = 1 commits exactly one token per
    step (unless several are certain), i.e. confidence-ordered token-by-token decoding.
    """

    required_order: str | None = None

    def __init__(self, threshold: float = 0.9) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"sampler.threshold={threshold} must lie in (0, 1]")
        self.threshold = threshold

    def __call__(self, confidence: Tensor, masked: Tensor, step: int, num_steps: int) -> Tensor:
        if step >= num_steps - 1:
            return masked.clone()
        best = top_confidence(confidence, masked, torch.ones_like(masked[:, 0], dtype=torch.long))
        return ((confidence >= self.threshold) & masked) | best


class EntropyBounded:
    """Entropy-bounded (EB) unmasking: commit the lowest-entropy masked positions while their
    cumulative entropy stays <= ``bound`` (at least the lowest one); everything left on the last step.

    Reads ``confidence`` as the negative entropy -H_i = sum_v p_i(v) log p_i(v) of each position's
    own predictive distribution (``order="entropy"``, ``required_order`` below). SDAR's reference
    ``entropy_bounded`` instead accumulates the sampled tokens' probabilities, which is not an
    entropy; with bound -> 0 this rule is one token per step, lowest entropy first.
    """

    required_order = "entropy"

    def __init__(self, bound: float = 1.0) -> None:
        if bound < 0:
            raise ValueError(f"sampler.policy.bound={bound} must be >= 0 (nats of cumulative entropy)")
        self.bound = bound

    def __call__(self, confidence: Tensor, masked: Tensor, step: int, num_steps: int) -> Tensor:
        if step >= num_steps - 1:
            return masked.clone()
        # float round-off can make -sum p log p slightly negative; an entropy is >= 0
        entropy = (-confidence).clamp(min=0.0).masked_fill(~masked, float("inf"))
        sorted_h, order = entropy.sort(dim=-1)
        keep = sorted_h.cumsum(-1) <= self.bound
        keep[:, 0] = True  # at least the lowest-entropy position (dropped below if the row has no mask)
        return torch.zeros_like(masked).scatter(-1, order, keep) & masked
