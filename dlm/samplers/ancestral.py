"""Ancestral (MDLM / D3PM) sampler for absorbing diffusion on a uniform t-grid.

Each step t -> s reveals every still-masked token independently with probability
(alpha_s - alpha_t) / (1 - alpha_t) and draws its value from p_theta(x0 | xt) (MDLM Eq. 6 /
RADD App. D). The last step ends at s = 0 where alpha = 1, so no mask is left. Deciding "reveal
or not" with a float64 Bernoulli and then drawing the token only where revealed is the same law
as the joint (V+1)-way categorical, costs no (B, L, V) float64 tensor, and avoids the float32
Gumbel artifact.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from dlm.diffusion.posterior import subs_log_probs, unmask_probability
from dlm.diffusion.schedule import LogLinearSchedule
from dlm.samplers.categorical import Precision, filter_logits, gumbel_argmax
from dlm.types import Denoiser, NoiseSchedule, SampleOutput


class AncestralSampler:
    """Sampler(model, batch_size=, length=, prompt=, generator=) -> SampleOutput.

    ``prompt`` (B, P) or (P,) fills the first P positions, which are never masked.
    """

    def __init__(self, *, num_steps: int = 128, schedule: NoiseSchedule | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 precision: Precision = "float64") -> None:
        if num_steps < 1:
            raise ValueError(f"sampler.num_steps={num_steps} must be >= 1")
        self.num_steps = num_steps
        self.schedule = schedule or LogLinearSchedule()
        self.temperature, self.top_k, self.top_p, self.precision = temperature, top_k, top_p, precision

    @torch.no_grad()
    def __call__(self, model: Denoiser, *, batch_size: int, length: int, prompt: Tensor | None = None,
                 generator: torch.Generator | None = None) -> SampleOutput:
        start = time.perf_counter()
        device = next(model.parameters()).device if hasattr(model, "parameters") else torch.device("cpu")
        x = torch.full((batch_size, length), model.mask_id, dtype=torch.long, device=device)
        if prompt is not None:
            prompt = prompt.expand(batch_size, -1) if prompt.dim() == 1 else prompt
            if prompt.shape[1] > length:
                raise ValueError(f"prompt length {prompt.shape[1]} exceeds sampler length={length}")
            x[:, : prompt.shape[1]] = prompt.to(device)
        grid = torch.linspace(1.0, 0.0, self.num_steps + 1, dtype=torch.float64, device=device)
        nfe = 0
        for i in range(self.num_steps):
            masked = x == model.mask_id
            if not masked.any():
                break
            t, s = grid[i], grid[i + 1]
            alpha_t, alpha_s = self.schedule.alpha(t), self.schedule.alpha(s)
            p_reveal = unmask_probability(alpha_t, alpha_s)
            u = torch.rand(x.shape, dtype=torch.float64, device=device, generator=generator)
            reveal = masked & (u < p_reveal)
            if not reveal.any():
                continue  # a time-free denoiser's output is not needed when nothing changes
            t_in = t.float().expand(batch_size) if model.time_conditioned else None
            logits = model(x, t_in)
            nfe += 1
            log_p = filter_logits(subs_log_probs(logits[reveal], model.mask_id), temperature=self.temperature,
                                  top_k=self.top_k, top_p=self.top_p)
            x[reveal] = gumbel_argmax(log_p, generator=generator, precision=self.precision)
        return SampleOutput(tokens=x, nfe=nfe, seconds=time.perf_counter() - start)
