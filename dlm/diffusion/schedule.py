"""Noise schedules for absorbing diffusion.

Convention (DESIGN §3): t in [0, 1], t = 1 is fully masked; ``alpha(t)`` is the probability
that a token is still clean, so the mask probability is ``1 - alpha(t)``. In RADD/SEDD notation
``alpha(t) = exp(-sigma_bar(t))`` and ``sigma(t) = -alpha'(t) / alpha(t)``.

Every schedule reaches ``alpha(1) = 0`` exactly (up to float rounding for the cosine), so the
prior is the all-mask sequence and the NELBO is a true bound; the small-t singularity of the
weight ``-alpha'/(1-alpha)`` is handled by the time sampler (``dlm.diffusion.forward``), not by
bending the schedule (MDLM's log-linear ``eps`` leaves ``alpha(1) = eps`` and silently drops the
last ``eps`` of the integral).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LogLinearSchedule:
    """alpha(t) = 1 - t (log-linear total noise sigma_bar = -log(1 - t), MDLM/RADD with eps = 0).

    The NELBO weight -alpha'/(1-alpha) is exactly 1/t (RADD §1.4).
    """

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def alpha_prime(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def t_of_alpha(self, alpha: Tensor) -> Tensor:
        return 1.0 - alpha


@dataclass(frozen=True)
class LinearSchedule:
    """Linear total noise: sigma_bar(t) = sigma_max * t, alpha(t) = exp(-sigma_max t) rescaled to hit 0.

    alpha(t) = (exp(-sigma_max t) - exp(-sigma_max)) / (1 - exp(-sigma_max)) so alpha(0) = 1 and
    alpha(1) = 0 exactly (MDLM's ``LinearNoise`` without the floor).
    """

    sigma_max: float = 10.0

    def _floor(self) -> float:
        return math.exp(-self.sigma_max)

    def alpha(self, t: Tensor) -> Tensor:
        f = self._floor()
        return (torch.exp(-self.sigma_max * t) - f) / (1.0 - f)

    def alpha_prime(self, t: Tensor) -> Tensor:
        return -self.sigma_max * torch.exp(-self.sigma_max * t) / (1.0 - self._floor())

    def t_of_alpha(self, alpha: Tensor) -> Tensor:
        f = self._floor()
        return -torch.log(alpha * (1.0 - f) + f) / self.sigma_max


@dataclass(frozen=True)
class CosineSchedule:
    """alpha(t) = cos(pi t / 2) (Shi et al. 2024 / MaskGIT-style cosine)."""

    def alpha(self, t: Tensor) -> Tensor:
        # clamp: cos(pi/2) is 6e-17 in float64, not 0; the prior must be exactly all-mask.
        return torch.cos(0.5 * math.pi * t).clamp(min=0.0) * (t < 1.0)

    def alpha_prime(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def t_of_alpha(self, alpha: Tensor) -> Tensor:
        return torch.acos(alpha.clamp(0.0, 1.0)) * (2.0 / math.pi)


def nelbo_weight(schedule, t: Tensor) -> Tensor:
    """Continuous-time MDLM NELBO weight w(t) = -alpha'(t) / (1 - alpha(t)); shape of t."""
    return -schedule.alpha_prime(t) / (1.0 - schedule.alpha(t))
