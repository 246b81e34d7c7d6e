"""Diversity of generated samples: per-sequence unigram entropy and distinct-n.

Unigram entropy is what DUO and FHS report next to generative perplexity: for ONE sequence
x = (x_1..x_n) with empirical token frequencies p_v = #{i: x_i = v} / n,

    H(x) = -sum_v p_v log p_v      (nats),

averaged over sequences. Degenerate, repetitive samples (low-temperature artifacts, the float32
Gumbel bug) lower it long before they show up in generative perplexity, which they often
*improve*. distinct-n (Li et al., 2016) is the fraction of unique n-grams among all n-grams,
pooled over the sample set, so it also catches samples that repeat each other.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def unigram_entropy(ids: Sequence[int]) -> float:
    """Entropy in nats of the empirical token distribution of one sequence; 0.0 for an empty one."""
    n = len(ids)
    if n == 0:
        return 0.0
    return -sum(c / n * math.log(c / n) for c in Counter(ids).values())


def mean_entropy(seqs: Sequence[Sequence[int]]) -> float:
    """Mean of ``unigram_entropy`` over sequences (each sequence weighs the same, as DUO/FHS)."""
    if len(seqs) == 0:
        raise ValueError("mean_entropy needs at least one sequence")
    return sum(unigram_entropy(s) for s in seqs) / len(seqs)


def distinct_n(seqs: Sequence[Sequence[int]], n: int) -> float:
    """Unique n-grams / total n-grams, pooled over all sequences (n-grams never cross sequences).

    0.0 when no sequence is at least n long.
    """
    if n < 1:
        raise ValueError(f"distinct_n needs n >= 1, got n={n}")
    grams: set[tuple[int, ...]] = set()
    total = 0
    for s in seqs:
        s = list(s)
        for i in range(len(s) - n + 1):
            grams.add(tuple(s[i : i + n]))
            total += 1
    return len(grams) / total if total else 0.0
