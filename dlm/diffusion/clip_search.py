"""BD3-LM's data-driven clipped noise schedule (research note §3.3): pick the t interval [a, b] whose
training-loss estimator has the smallest variance across batches.

Each validation batch is scored once with t drawn uniformly on the full interval; a segment (block)
whose t falls in a candidate [a, b] is an exact draw of that interval's estimator (t | t ∈ [a, b] is
U[a, b]), so one pass serves every candidate. Per batch and candidate the estimator is the mean
per-token loss of the segments inside the interval; its variance over batches is what BD3-LM
minimises (``_clipped_schedule_search``). The loss weight stays w(t), so a clipped interval trains
a lower-variance, biased loss; the NELBO is always evaluated on the full interval.

Shapes: t, loss, batch (N,) over scored segments; candidates (C, 2); stats (C, 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def clip_candidates(widths: Sequence[float], delta: float, full: tuple[float, float]) -> Tensor:
    """(C, 2) intervals: every [a, a + w] with a = 0, delta, 2 delta, ... and a + w <= 1, plus ``full``."""
    rows = [full]
    for w in widths:
        if not 0.0 < w <= 1.0:
            raise ValueError(f"clip search width {w} must be in (0, 1]")
        a = 0.0
        while a + w <= 1.0 + 1e-9:
            rows.append((round(a, 6), round(min(a + w, 1.0), 6)))
            a += delta
    return torch.tensor(rows, dtype=torch.float64)


def interval_stats(t: Tensor, loss: Tensor, batch: Tensor, candidates: Tensor) -> Tensor:
    """(C, 3) float64 [Σ_b m_b, Σ_b m_b², n_b] of the per-batch means m_b of ``loss`` over segments with
    t in each candidate (batches without such a segment are skipped). Sums, so ranks add them up."""
    t, loss = t.double().reshape(-1), loss.double().reshape(-1)
    batch = batch.long().reshape(-1)
    n_batches = int(batch.max()) + 1 if batch.numel() else 0
    inside = (t[None, :] >= candidates[:, :1]) & (t[None, :] <= candidates[:, 1:])  # (C, N)
    weights = inside.double()
    sums = torch.zeros(len(candidates), n_batches, dtype=torch.float64).index_add_(1, batch, weights * loss)
    counts = torch.zeros(len(candidates), n_batches, dtype=torch.float64).index_add_(1, batch, weights)
    seen = counts > 0
    means = torch.where(seen, sums / counts.clamp(min=1), torch.zeros_like(sums))
    return torch.stack([means.sum(1), (means**2).sum(1), seen.double().sum(1)], dim=1)


def best_interval(stats: Tensor, candidates: Tensor, min_batches: int = 2) -> tuple[float, float] | None:
    """The candidate with the smallest across-batch variance (unbiased), or None if none has
    ``min_batches`` batches; ties go to the earlier candidate (the full interval first)."""
    s, s2, n = stats.unbind(1)
    var = (s2 - s**2 / n.clamp(min=1)) / (n - 1).clamp(min=1)
    var = torch.where(n >= min_batches, var, torch.full_like(var, float("inf")))
    if not torch.isfinite(var).any():
        return None
    i = int(torch.argmin(var))
    return float(candidates[i, 0]), float(candidates[i, 1])
