"""Tau-leaping samplers of the reverse CTMC (SEDD / RADD App. D).

``method="tweedie"``: the exact one-coordinate reverse marginal, psi = (alpha_s - alpha_t)/(1 - alpha_t);
for absorbing diffusion with a SUBS denoiser it coincides with the ancestral step.
``method="euler"``: first-order, psi = rate(t) * (t - s) with rate -alpha'(t)/(1 - alpha(t)); equal to
Tweedie on a uniform log-linear grid (RADD D.4), different for other schedules. The last step
reveals everything left (RADD sets psi > 1 there). The loop, time grid, row caching, per-step scalars
and NFE accounting are the ancestral sampler's.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from dlm.diffusion.schedule import nelbo_weight
from dlm.samplers.ancestral import AncestralSampler


class TauLeapingSampler(AncestralSampler):
    def __init__(self, *, method: Literal["tweedie", "euler"] = "tweedie", **kwargs) -> None:
        if method not in ("tweedie", "euler"):
            raise ValueError(f"sampler.method={method!r}; valid: tweedie, euler")
        super().__init__(**kwargs)
        self.method = method

    def reveal_probability(self, t: Tensor, s: Tensor) -> Tensor:
        if self.method == "tweedie":
            return super().reveal_probability(t, s)
        return (nelbo_weight(self.schedule, t) * (t - s)).clamp(0.0, 1.0)
