"""Ancestral (MDLM / D3PM) sampler for absorbing diffusion on a time grid, with row caching.

Step t -> s reveals every masked token independently with probability
psi = (alpha_s - alpha_t) / (1 - alpha_t) (the absorbing posterior, MDLM Eq. 6 = RADD's Tweedie
tau-leap) and draws its value from p_theta(x0 | xt). Whether a token is revealed does not depend
on the network, so the network is needed only where something is revealed:

* ``row_cache="row"`` (RADD's per-row caching): evaluate only rows that reveal a token this step.
  Expected network evaluations per row n(1 - (1 - 1/n)^L) for the log-linear schedule.
* ``row_cache="batch"`` (MDLM's ``ddpm_cache``): evaluate the whole batch when any row reveals;
  expected n(1 - (1 - 1/n)^{BL}).
* ``row_cache="none"``: evaluate every step (n calls).
All three consume the same random numbers and give identical samples. The grid is uniform with
``num_steps`` steps unless ``timesteps`` gives one; the last step reveals everything left.
The reference codebases' (V+1)-way draw is its own sampler (``dlm.samplers.joint``).

Per-step scalars (LSD): ``logit_scales`` c_n multiply the denoiser's logits at step n,
``rate_scales`` kappa_n multiply psi (clipped to 1); both default to identity.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from dlm.diffusion.posterior import unmask_probability
from dlm.diffusion.schedule import LogLinearSchedule
from dlm.samplers.canvas import init_canvas, padded_positions
from dlm.samplers.categorical import Precision, TokenSampling
from dlm.samplers.decodable import MASKED, check_decodable
from dlm.samplers.row_generators import Generator, uniform
from dlm.samplers.step import DenoiseStep, Trajectory
from dlm.samplers.timesteps import resolve_timesteps
from dlm.types import Denoiser, NoiseSchedule, SampleOutput

RowCache = Literal["none", "row", "batch"]


class AncestralSampler:
    """Sampler(model, batch_size=, length=, prompt=, generator=) -> SampleOutput."""

    decodes = MASKED
    extends_context = False  # canvases up to the model's max_seq_len
    aux_networks: tuple[str, ...] = ()  # networks besides the denoiser whose calls SampleOutput.aux_calls counts

    def __init__(self, *, num_steps: int = 128, timesteps: Sequence[float] | Tensor | None = None,
                 schedule: NoiseSchedule | None = None, row_cache: RowCache = "row", temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, sampling_precision: Precision = "float64",
                 logit_scales: Sequence[float] | Tensor | None = None,
                 rate_scales: Sequence[float] | Tensor | None = None, record_trajectory: bool = False) -> None:
        if row_cache not in ("none", "row", "batch"):
            raise ValueError(f"sampler.row_cache={row_cache!r}; valid: none, row, batch")
        self.timesteps = resolve_timesteps(num_steps, timesteps)
        self.num_steps = self.timesteps.numel() - 1
        for key, scales in (("logit_scales", logit_scales), ("rate_scales", rate_scales)):
            if scales is not None and len(scales) != self.num_steps:
                raise ValueError(f"sampler.{key} has {len(scales)} entries for {self.num_steps} steps")
        self.logit_scales, self.rate_scales = logit_scales, rate_scales
        self.schedule = schedule or LogLinearSchedule()
        self.row_cache, self.record_trajectory = row_cache, record_trajectory
        self.step = DenoiseStep(TokenSampling(temperature=temperature, top_k=top_k, top_p=top_p,
                                              sampling_precision=sampling_precision))

    def check_model(self, model: Denoiser) -> None:
        check_decodable(self, model, decodes=self.decodes)

    def grid(self, device: torch.device) -> Tensor:
        """The time grid (N + 1,) float64 on ``device``."""
        return self.timesteps.to(device)

    def reveal_probability(self, t: Tensor, s: Tensor) -> Tensor:
        """P(masked at t -> revealed by s); the tau-leaping sampler overrides this."""
        return unmask_probability(self.schedule.alpha(t), self.schedule.alpha(s))

    def step_psi(self, i: int, t: Tensor, s: Tensor) -> Tensor:
        """psi of step i, times its rate scale; the last step reveals everything left."""
        if i == self.num_steps - 1:
            return torch.ones((), dtype=torch.float64, device=t.device)
        psi = self.reveal_probability(t, s)
        return psi if self.rate_scales is None else (psi * self.rate_scales[i]).clamp(max=1.0)

    def reveal(self, model: Denoiser, x: Tensor, t: Tensor, rows: Tensor, revealed: Tensor, generator: Generator, *,
               step: int, trajectory: Trajectory | None, counts: dict[str, int]) -> None:
        """Step ``step``: one network call on x[rows]; draw x0 at the ``revealed`` (B, L) positions from
        p_theta(x0 | x_t) and write them into x in place. ``counts``: calls of auxiliary networks
        (SampleOutput.aux_calls), which a subclass that spends them (EDLM's energy) increments."""
        at, valid = padded_positions(revealed[rows])
        scale = None if self.logit_scales is None else self.logit_scales[step]
        self.step.commit(model, x, t, rows, at, valid, generator, logit_scale=scale, trajectory=trajectory)

    @torch.no_grad()
    def __call__(self, model: Denoiser, *, batch_size: int, length: int, prompt: Tensor | None = None,
                 generator: Generator = None) -> SampleOutput:
        self.check_model(model)
        start = time.perf_counter()
        x = init_canvas(model, batch_size=batch_size, length=length, prompt=prompt)
        device, b = x.device, batch_size
        grid = self.grid(device)
        row_nfe = torch.zeros(b, dtype=torch.long, device=device)
        reveal_times = torch.zeros(x.shape, dtype=torch.float64, device=device)
        trajectory = Trajectory() if self.record_trajectory else None
        nfe, counts = 0, dict.fromkeys(self.aux_networks, 0)
        for i in range(self.num_steps):
            masked = x == model.mask_id
            t = grid[i]
            psi = self.step_psi(i, t, grid[i + 1])
            u = uniform(x.shape, generator, device=device)
            revealed = masked & (u < psi)
            rows = revealed.any(-1) if self.row_cache == "row" else torch.full((b,), bool(revealed.any()),
                                                                              device=device)
            if self.row_cache == "none":
                rows = masked.any(-1) | rows
            if rows.any():
                self.reveal(model, x, t.expand(b), rows, revealed, generator, step=i, trajectory=trajectory,
                            counts=counts)
                nfe += 1
                row_nfe[rows] += 1
            elif trajectory is not None:  # a step that reveals nothing is still a step of the record
                trajectory.add(x, torch.zeros(x.shape, device=device))
            reveal_times[revealed] = t.item()
            if self.row_cache != "none" and not (x == model.mask_id).any():
                break
        info = {"row_nfe": row_nfe, "reveal_times": reveal_times}
        if trajectory is not None:
            info["step_log_probs"] = trajectory.log_probs
        return SampleOutput(tokens=x, nfe=nfe, seconds=time.perf_counter() - start,
                            trajectory=None if trajectory is None else trajectory.canvases, info=info,
                            aux_calls=counts)
