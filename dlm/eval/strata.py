"""Stratified draws for Monte Carlo perplexity bounds, shared by the masked and block evaluators.

With S samples per sequence, sample s draws u in the stratum [s/S, (s+1)/S): uniformly (``mc``,
an unbiased stratified estimator) or at its midpoint (``quadrature``, deterministic). The
evaluators turn u into a mask count k (time-free models) or a time t (time-conditioned ones).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Method = Literal["mc", "quadrature"]


def stratified_uniforms(n: int, s: int, num_samples: int, method: Method, device: torch.device | str,
                        generator: torch.Generator | None) -> Tensor:
    """u in [s/S, (s+1)/S) for each of ``n`` draws: random (mc) or the midpoint (quadrature); (n,) float64."""
    if method == "quadrature":
        u = torch.full((n,), 0.5, dtype=torch.float64, device=device)
    elif method == "mc":
        u = torch.rand(n, dtype=torch.float64, device=device, generator=generator)
    else:
        raise ValueError(f"method={method!r}; valid: 'mc', 'quadrature'")
    return (s + u) / num_samples
