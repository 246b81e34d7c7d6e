"""Pearson and Spearman correlations of two (N,) vectors (held-out oracle quality), in float64."""

from __future__ import annotations

import torch
from torch import Tensor


def pearson(a: Tensor, b: Tensor) -> float:
    """sum (a - mean a)(b - mean b) / sqrt(sum (a - mean a)^2 · sum (b - mean b)^2); 0 if either is constant."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = (a.square().sum() * b.square().sum()).sqrt()
    return float((a * b).sum() / den) if den > 0 else 0.0


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..N with ties sharing their average rank (as scipy.stats.rankdata)."""
    x = x.double()
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    # start index of each run of equal values, and the run each sorted element belongs to
    new_run = torch.ones_like(sorted_x, dtype=torch.bool)
    new_run[1:] = sorted_x[1:] != sorted_x[:-1]
    run_id = new_run.cumsum(0) - 1
    starts = torch.nonzero(new_run).flatten()
    ends = torch.cat([starts[1:], torch.tensor([len(x)])])
    avg = (starts + ends - 1).double() / 2 + 1  # mean of 1-based ranks start+1 .. end
    ranks = torch.empty_like(x)
    ranks[order] = avg[run_id]
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of the average ranks."""
    return pearson(average_ranks(a), average_ranks(b))
