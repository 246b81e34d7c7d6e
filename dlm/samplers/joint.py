"""The reference codebases' ancestral rule: one (V+1)-way categorical per masked position per step.

At step t -> s a masked position stays masked w.p. 1 - psi and becomes token v w.p.
psi * p_theta(x0 = v | x_t), drawn jointly by Gumbel-max over V + 1 outcomes, with
psi = (alpha_s - alpha_t) / (1 - alpha_t). In law this equals ``AncestralSampler`` (Bernoulli
reveal, then a token draw); it needs the network at every step on every row that has a mask, and
with ``sampling_precision="float32"`` it reproduces the low-temperature artifact of the public MDLM /
SEDD code (Zheng et al. 2024): float32 Gumbel noise truncates, so the stay-masked outcome wins too
often and tokens are drawn at an effectively lower temperature. For comparisons only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor

from dlm.diffusion.posterior import unmask_probability
from dlm.diffusion.schedule import LogLinearSchedule
from dlm.samplers.canvas import init_canvas
from dlm.samplers.categorical import Precision, TokenSampling, gumbel_argmax
from dlm.samplers.decodable import MASKED, check_decodable
from dlm.samplers.step import DenoiseStep
from dlm.samplers.timesteps import resolve_timesteps
from dlm.types import Denoiser, NoiseSchedule, SampleOutput


def joint_draw(log_p: Tensor, x: Tensor, psi: Tensor, mask_id: int, *, generator: torch.Generator | None,
               sampling_precision: Precision) -> Tensor:
    """One (V+1)-way draw per masked position of x (R, L) from log-probs (R, L, V): token v w.p.
    psi * p(v), stay masked w.p. 1 - psi. Unmasked positions are returned unchanged."""
    log_p = log_p.double()
    stay = torch.log1p(-psi) if psi < 1 else torch.tensor(float("-inf"), dtype=torch.float64)
    joint = (log_p + torch.log(psi)).index_fill(-1, torch.tensor([mask_id], device=x.device), 0.0)
    joint[..., mask_id] = stay
    new = gumbel_argmax(joint, generator=generator, sampling_precision=sampling_precision)
    return torch.where(x == mask_id, new, x)


class JointReferenceSampler:
    """Sampler(model, batch_size=, length=, prompt=, generator=) -> SampleOutput."""

    decodes = MASKED
    extends_context = False  # canvases up to the model's max_seq_len

    def __init__(self, *, num_steps: int = 1000, timesteps: Sequence[float] | Tensor | None = None,
                 schedule: NoiseSchedule | None = None, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, sampling_precision: Precision = "float32") -> None:
        self.timesteps = resolve_timesteps(num_steps, timesteps)
        self.num_steps = self.timesteps.numel() - 1
        self.schedule = schedule or LogLinearSchedule()
        self.step = DenoiseStep(TokenSampling(temperature=temperature, top_k=top_k, top_p=top_p,
                                              sampling_precision=sampling_precision))

    def check_model(self, model: Denoiser) -> None:
        check_decodable(self, model, decodes=self.decodes)

    @torch.no_grad()
    def __call__(self, model: Denoiser, *, batch_size: int, length: int, prompt: Tensor | None = None,
                 generator: torch.Generator | None = None) -> SampleOutput:
        self.check_model(model)
        start = time.perf_counter()
        x = init_canvas(model, batch_size=batch_size, length=length, prompt=prompt)
        device, b = x.device, batch_size
        grid = self.timesteps.to(device)
        row_nfe = torch.zeros(b, dtype=torch.long, device=device)
        reveal_times = torch.zeros(x.shape, dtype=torch.float64, device=device)
        nfe = 0
        for i in range(self.num_steps):
            masked = x == model.mask_id
            rows = masked.any(-1)
            if not rows.any():
                break
            t = grid[i]
            psi = torch.ones((), dtype=torch.float64, device=device) if i == self.num_steps - 1 \
                else unmask_probability(self.schedule.alpha(t), self.schedule.alpha(grid[i + 1]))
            log_p = self.step.tokens.log_probs(self.step.logits(model, x, t.expand(b), rows=rows), model.mask_id)
            nfe += 1
            row_nfe[rows] += 1
            new = joint_draw(log_p, x[rows], psi, model.mask_id, generator=generator,
                             sampling_precision=self.step.tokens.sampling_precision)
            revealed = torch.zeros_like(masked)
            revealed[rows] = new != x[rows]
            x[rows] = new
            reveal_times[revealed] = t.item()
        return SampleOutput(tokens=x, nfe=nfe, seconds=time.perf_counter() - start,
                            info={"row_nfe": row_nfe, "reveal_times": reveal_times})
