"""First-hitting sampler (Zheng et al. 2024, Alg. 1 / Prop. 4.1), and its parallel variant (Alg. 2).

Per sequence with n masked tokens at time tau, the next unmasking time is the largest of n i.i.d.
hitting times, drawn in closed form:  alpha(tau') = 1 - u^{1/n} (1 - alpha(tau)),  u ~ U(0, 1);
the token that hits is uniform among the masked positions and is drawn from p_theta(. | x, tau').
This is the N -> infinity limit of the ancestral sampler with exactly one network call per token
(time-free network: it is random-order any-order-AR decoding). ``tokens_per_step = k > 1`` reveals
the next k hitting events with one call evaluated at the first of them (an approximation).
Times are per row and asynchronous; a time-conditioned network sees each row's own tau.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from dlm.diffusion.schedule import LogLinearSchedule
from dlm.samplers.canvas import init_canvas
from dlm.samplers.categorical import Precision, TokenSampling
from dlm.samplers.decodable import MASKED, check_decodable
from dlm.samplers.step import DenoiseStep, Trajectory
from dlm.types import Denoiser, NoiseSchedule, SampleOutput


def next_hitting_time(schedule: NoiseSchedule, tau: Tensor, n: Tensor, u: Tensor) -> Tensor:
    """tau' = alpha^{-1}(1 - u^{1/n} (1 - alpha(tau))) per row; tau, u float64 (B,), n (B,) >= 1."""
    alpha = 1.0 - u.pow(1.0 / n.clamp(min=1).double()) * (1.0 - schedule.alpha(tau))
    return schedule.t_of_alpha(alpha).clamp(0.0, 1.0)


class FirstHittingSampler:
    """Sampler(model, batch_size=, length=, prompt=, generator=) -> SampleOutput.

    ``record_trajectory``: the canvas after every call and the log-probabilities of the committed
    tokens (``SampleOutput.trajectory``, ``info["step_log_probs"]``).
    """

    decodes = MASKED
    extends_context = False  # canvases up to the model's max_seq_len

    def __init__(self, *, schedule: NoiseSchedule | None = None, tokens_per_step: int = 1,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 sampling_precision: Precision = "float64", record_trajectory: bool = False) -> None:
        if tokens_per_step < 1:
            raise ValueError(f"sampler.tokens_per_step={tokens_per_step} must be >= 1")
        self.schedule = schedule or LogLinearSchedule()
        self.tokens_per_step, self.record_trajectory = tokens_per_step, record_trajectory
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
        device = x.device
        # every generated position is masked at t = 1 (alpha = 0), prompt or not
        tau = torch.ones(batch_size, dtype=torch.float64, device=device)
        row_nfe = torch.zeros(batch_size, dtype=torch.long, device=device)
        reveal_times = torch.zeros(x.shape, dtype=torch.float64, device=device)
        trajectory = Trajectory() if self.record_trajectory else None
        nfe = 0
        while True:
            masked = x == model.mask_id
            n = masked.sum(-1)
            rows = n > 0
            if not rows.any():
                break
            k = torch.clamp(n, max=self.tokens_per_step)
            # k successive hitting events; the network is evaluated at the first one
            times = []
            for j in range(self.tokens_per_step):
                u = torch.rand(batch_size, dtype=torch.float64, device=device, generator=generator)
                active = j < k
                tau = torch.where(active, next_hitting_time(self.schedule, tau, n - j, u), tau)
                times.append(tau.clone())
            t_eval = times[0]
            # uniformly random masked positions: the k best of fresh uniform scores
            scores = torch.rand(x.shape, device=device, generator=generator).masked_fill(~masked, -1.0)
            at = scores.argsort(-1, descending=True)[:, : self.tokens_per_step]  # (B, K)
            valid = torch.arange(at.shape[1], device=device)[None] < k[:, None]
            # one call at the chosen positions only, (R, K, V)
            self.step.commit(model, x, t_eval, rows, at[rows], valid[rows], generator, trajectory=trajectory)
            nfe += 1
            row_nfe[rows] += 1
            sel = valid & rows[:, None]
            for j in range(at.shape[1]):
                reveal_times[sel[:, j], at[sel[:, j], j]] = times[j][sel[:, j]]
        info = {"row_nfe": row_nfe, "reveal_times": reveal_times}
        if trajectory is not None:
            info["step_log_probs"] = trajectory.log_probs
        return SampleOutput(tokens=x, nfe=nfe, seconds=time.perf_counter() - start,
                            trajectory=None if trajectory is None else trajectory.canvases, info=info)
