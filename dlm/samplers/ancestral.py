"""Ancestral (MDLM / D3PM) sampler for absorbing diffusion on a uniform t-grid, with caching.

Step t -> s reveals every masked token independently with probability
psi = (alpha_s - alpha_t) / (1 - alpha_t) (the absorbing posterior, MDLM Eq. 6 = RADD's Tweedie
tau-leap) and draws its value from p_theta(x0 | xt). Whether a token is revealed does not depend
on the network, so the network is needed only where something is revealed:

* ``cache="row"`` (RADD's per-row caching): evaluate only rows that reveal a token this step.
  Expected network evaluations per row n(1 - (1 - 1/n)^L) for the log-linear schedule.
* ``cache="batch"`` (MDLM's ``ddpm_cache``): evaluate the whole batch when any row reveals;
  expected n(1 - (1 - 1/n)^{BL}).
* ``cache="none"``: evaluate every step (n calls).
All three consume the same random numbers and give identical samples. ``reveal="joint"`` is the
reference codebases' rule instead: one (V+1)-way categorical per masked position per step
(stay masked w.p. 1 - psi), in ``precision`` — with float32 it reproduces the low-temperature
artifact of Zheng et al. (2024); it needs the network every step.
"""

from __future__ import annotations

import time
from typing import Literal

import torch
from torch import Tensor

from dlm.diffusion.posterior import unmask_probability
from dlm.diffusion.schedule import LogLinearSchedule
from dlm.samplers.canvas import denoise, init_canvas, padded_positions
from dlm.samplers.categorical import Precision, TokenSampling, gumbel_argmax
from dlm.types import Denoiser, NoiseSchedule, SampleOutput

Cache = Literal["none", "row", "batch"]


class AncestralSampler:
    """Sampler(model, batch_size=, length=, prompt=, generator=) -> SampleOutput."""

    def __init__(self, *, num_steps: int = 128, schedule: NoiseSchedule | None = None, cache: Cache = "row",
                 reveal: Literal["bernoulli", "joint"] = "bernoulli", temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, precision: Precision = "float64") -> None:
        if num_steps < 1:
            raise ValueError(f"sampler.num_steps={num_steps} must be >= 1")
        if cache not in ("none", "row", "batch"):
            raise ValueError(f"sampler.cache={cache!r}; valid: none, row, batch")
        if reveal not in ("bernoulli", "joint"):
            raise ValueError(f"sampler.reveal={reveal!r}; valid: bernoulli, joint")
        if reveal == "joint" and cache != "none":
            raise ValueError("sampler.reveal=joint needs the network every step: set sampler.cache=none")
        self.num_steps = num_steps
        self.schedule = schedule or LogLinearSchedule()
        self.cache, self.reveal = cache, reveal
        self.tokens = TokenSampling(temperature=temperature, top_k=top_k, top_p=top_p, precision=precision)

    def reveal_probability(self, t: Tensor, s: Tensor) -> Tensor:
        """P(masked at t -> revealed by s); the tau-leaping sampler overrides this."""
        return unmask_probability(self.schedule.alpha(t), self.schedule.alpha(s))

    @torch.no_grad()
    def __call__(self, model: Denoiser, *, batch_size: int, length: int, prompt: Tensor | None = None,
                 generator: torch.Generator | None = None) -> SampleOutput:
        start = time.perf_counter()
        x = init_canvas(model, batch_size=batch_size, length=length, prompt=prompt)
        device, b = x.device, batch_size
        grid = torch.linspace(1.0, 0.0, self.num_steps + 1, dtype=torch.float64, device=device)
        row_nfe = torch.zeros(b, dtype=torch.long, device=device)
        reveal_times = torch.zeros(x.shape, dtype=torch.float64, device=device)
        nfe = 0
        for i in range(self.num_steps):
            masked = x == model.mask_id
            t, s = grid[i], grid[i + 1]
            psi = torch.ones((), dtype=torch.float64, device=device) if i == self.num_steps - 1 \
                else self.reveal_probability(t, s)
            t_rows = t.expand(b)
            if self.reveal == "joint":
                rows = masked.any(-1)
                if not rows.any():
                    break
                logits = denoise(model, x, t_rows, rows)
                nfe += 1
                row_nfe[rows] += 1
                new = self._joint_step(logits, x[rows], psi, model.mask_id, generator)
                revealed = torch.zeros_like(masked)
                revealed[rows] = new != x[rows]
                x[rows] = new
            else:
                u = torch.rand(x.shape, dtype=torch.float64, device=device, generator=generator)
                revealed = masked & (u < psi)
                rows = revealed.any(-1) if self.cache == "row" else torch.full((b,), bool(revealed.any()),
                                                                                  device=device)
                if self.cache == "none":
                    rows = masked.any(-1) | rows
                if rows.any():
                    at, valid = padded_positions(revealed[rows])
                    logits = denoise(model, x, t_rows, rows, at=at)  # (R, K, V): revealed positions only
                    nfe += 1
                    row_nfe[rows] += 1
                    if valid.any():
                        draws = self.tokens.draw(logits[valid], model.mask_id, generator)
                        xr = x[rows]
                        xr[revealed[rows]] = draws  # row-major, ascending: the order of logits[valid]
                        x[rows] = xr
            reveal_times[revealed] = t.item()
            if self.cache != "none" and not (x == model.mask_id).any():
                break
        return SampleOutput(tokens=x, nfe=nfe, seconds=time.perf_counter() - start,
                            info={"row_nfe": row_nfe, "reveal_times": reveal_times})

    def _joint_step(self, logits: Tensor, x: Tensor, psi: Tensor, mask_id: int,
                    generator: torch.Generator | None) -> Tensor:
        """One (V+1)-way draw per masked position: tokens w.p. psi * p, stay masked w.p. 1 - psi."""
        log_p = self.tokens.log_probs(logits, mask_id).double()
        stay = torch.log1p(-psi) if psi < 1 else torch.tensor(float("-inf"), dtype=torch.float64)
        joint = (log_p + torch.log(psi)).index_fill(-1, torch.tensor([mask_id], device=x.device), 0.0)
        joint[..., mask_id] = stay
        new = gumbel_argmax(joint, generator=generator, precision=self.tokens.precision)
        return torch.where(x == mask_id, new, x)
