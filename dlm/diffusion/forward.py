"""Forward corruption q(x_t | x0) of absorbing diffusion and the time samplers of the loss.

Shapes: x0 (B, L) long; t (B,) float; eligible (B, L) bool marks tokens that may be masked
(real tokens of a padded row, everything but a kept prefix, ...).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

TimeSampling = Literal["uniform", "antithetic"]


def sample_unit(
    n: int,
    *,
    sampling: TimeSampling = "antithetic",
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """n draws in [0, 1). ``antithetic`` is MDLM's stratified scheme u_i = (i + U_i) / n.

    Stratification lowers the variance of the batch-mean loss while each draw stays U[0, 1)
    marginally, so the estimator is unbiased.
    """
    u = torch.rand(n, device=device, generator=generator, dtype=torch.float64)
    if sampling == "antithetic":
        u = (torch.arange(n, device=device, dtype=torch.float64) + u) / n
        # shuffle strata over rows so row position does not correlate with t
        u = u[torch.randperm(n, device=device, generator=generator)]
    elif sampling != "uniform":
        raise ValueError(f"t_sampling={sampling!r}; valid: 'uniform', 'antithetic'")
    return u.float()


def sample_t(
    n: int,
    *,
    t_min: float = 1e-3,
    sampling: TimeSampling = "antithetic",
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Diffusion times t in [t_min, 1): t = t_min + (1 - t_min) u.

    ``t_min`` bounds the 1/t weight of the NELBO (its variance diverges logarithmically at 0);
    it drops the [0, t_min) sliver of the integral, where almost nothing is masked.
    """
    u = sample_unit(n, sampling=sampling, device=device, generator=generator)
    return t_min + (1.0 - t_min) * u


def mask_tokens(
    x0: Tensor,
    mask_prob: Tensor,
    mask_id: int,
    *,
    eligible: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """x_t ~ q(x_t | x0): each eligible token independently becomes ``mask_id`` w.p. mask_prob.

    mask_prob: (B,) or (B, L). Returns (xt (B, L), masked (B, L) bool).
    """
    if mask_prob.dim() == 1:
        mask_prob = mask_prob[:, None]
    u = torch.rand(x0.shape, device=x0.device, generator=generator)
    masked = u < mask_prob
    if eligible is not None:
        masked &= eligible
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def mask_exactly_k(
    x0: Tensor,
    k: Tensor,
    mask_id: int,
    *,
    eligible: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Mask exactly k[b] uniformly chosen eligible positions of row b (RADD ``add_noise_k``).

    k: (B,) long with 1 <= k <= number of eligible positions. Returns (xt, masked).
    """
    scores = torch.rand(x0.shape, device=x0.device, generator=generator)
    if eligible is not None:
        scores = scores.masked_fill(~eligible, 2.0)  # ineligible sort last, never chosen
    ranks = scores.argsort(dim=-1).argsort(dim=-1)
    masked = ranks < k[:, None]
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def sample_k(
    num_eligible: Tensor,
    *,
    sampling: TimeSampling = "antithetic",
    generator: torch.Generator | None = None,
) -> Tensor:
    """k ~ U{1..n_b} per row (stratified when antithetic), n_b = num_eligible (B,) long."""
    u = sample_unit(num_eligible.numel(), sampling=sampling, device=num_eligible.device, generator=generator)
    k = (u.double() * num_eligible.double()).floor().long() + 1
    return torch.minimum(k, num_eligible.clamp(min=1))
