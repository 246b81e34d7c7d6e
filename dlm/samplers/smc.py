"""Sequential Monte Carlo / Feynman–Kac steering (Singhal et al. 2025, "A general framework for inference-time
scaling and steering of diffusion models", the ``diff`` potential) on the ancestral sampler.

Each output row b runs k = ``num_particles`` particles of the pretrained ancestral sampler (rows
b·k .. b·k + k − 1 of one canvas). At the steps where a particle changes (every ``every`` steps, and
always when it becomes complete) its intermediate reward r_n = r(x̂0(x_{t_n})) (``dlm.samplers.reward_value``)
enters the potential

    G_n = exp((r_n − r_{n−1}) / α),      log w ← log w + (r_n − r_{n−1}) / α                    (FK "diff"; research note §4)

with r_0 = r(x̂0(start canvas)), common to a row's particles (one extra call on B rows). The last r of a
particle is r(x0) exactly (x̂0 of a complete canvas is itself), so the product of potentials telescopes
to exp((r(x0) − r_0)/α) and the particle system targets p_θ(x0) exp(r(x0)/α) / Z, whatever the
intermediate estimates (they change the variance only). Resampling: when ESS = (Σ w)² / Σ w² < ``ess_threshold`` · k in a row's group, its particles are
resampled within the group (``systematic``: one uniform per group, k evenly spaced points of the CDF,
lower variance; ``multinomial``: k independent draws) and its weights reset to equal. Weights are kept
as float64 log-weights normalised by log-sum-exp, so ±1e4 rewards give no NaN; ESS ∈ [1, k].
At the end one particle per row is drawn ∝ w (``info["particle_index"]``) and returned.

Identities: k = 1 is the ancestral sampler bit for bit (no value or reward call); a constant reward gives
equal weights, no resampling, and particles equal to the ancestral sampler's on B·k rows bit for bit
(with ``value="argmax"``, which draws no random numbers). ``nfe`` counts the proposal calls and the value
calls (one batched call on the particles that changed); ``aux_calls["reward"]`` the reward calls.
``info["reveal_times"]`` / ``row_nfe`` are per particle slot (a resampled slot inherits another lineage).
Shapes: B output rows, k particles, P = B·k particle rows, L length, V vocabulary.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dlm.errors import ConfigError
from dlm.rewards.protocol import RewardModel
from dlm.samplers.ancestral import AncestralSampler, RowCache
from dlm.samplers.canvas import init_canvas, model_device
from dlm.samplers.categorical import Precision
from dlm.samplers.importance import choose_per_row
from dlm.samplers.reward_value import (
    ValueEstimate,
    check_reward_length,
    check_value_estimate,
    fold_value_calls,
    place_reward,
    score,
    x0_estimate,
)
from dlm.samplers.row_generators import Generator, RowGenerators, uniform
from dlm.samplers.step import Trajectory
from dlm.types import Denoiser, NoiseSchedule, SampleOutput

Resampling = Literal["systematic", "multinomial"]


def log_ess(log_w: Tensor) -> Tensor:
    """log ESS = 2 lse(log w) − lse(2 log w) per group: log_w (B, k) float64 -> (B,), ESS in [1, k]."""
    return 2 * log_w.logsumexp(-1) - (2 * log_w).logsumexp(-1)


def resample_indices(log_w: Tensor, u: Tensor, how: Resampling) -> Tensor:
    """Ancestor indices (B, k) in [0, k) from log-weights (B, k) float64 and uniforms u: (B, 1) for
    ``systematic`` (points (u + j) / k), (B, k) for ``multinomial`` (sorted draws: the same law)."""
    k = log_w.shape[-1]
    cdf = log_w.double().softmax(-1).cumsum(-1)  # float64: a float32 CDF can miss its last bin
    if how == "systematic":
        points = (u + torch.arange(k, dtype=torch.float64, device=u.device)) / k
    elif how == "multinomial":
        points = u.sort(-1).values
    else:
        raise ConfigError(f"sampler.resampling={how!r}; valid: systematic, multinomial")
    return torch.searchsorted(cdf, (points * cdf[:, -1:]).contiguous(), right=True).clamp(max=k - 1)


@dataclass
class _Particles:
    """Per-call state of the particle system (created in ``__call__``, dropped when it returns)."""

    log_w: Tensor      # (B, k) float64 log-weights
    r_prev: Tensor     # (P,) float64 last intermediate reward of each particle
    resampled: int = 0


class SMCSampler(AncestralSampler):
    """FK steering with the ``diff`` potential (module docstring). ``reward``: a ``dlm.rewards.RewardModel``;
    ``num_particles`` k; ``alpha`` α > 0 (target p exp(r/α)); ``ess_threshold`` in [0, 1] (0 = never
    resample, 1 = every potential step); ``every``: potential steps every n steps (plus completions)."""

    aux_networks = ("reward", "denoiser")

    def __init__(self, *, reward: RewardModel, num_particles: int = 8, alpha: float = 0.1,
                 ess_threshold: float = 0.5, resampling: Resampling = "systematic", every: int = 1,
                 value: ValueEstimate = "argmax", num_steps: int = 128,
                 timesteps: Sequence[float] | Tensor | None = None, schedule: NoiseSchedule | None = None,
                 row_cache: RowCache = "row", temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, sampling_precision: Precision = "float64",
                 record_trajectory: bool = False) -> None:
        if int(num_particles) != num_particles or num_particles < 1:
            raise ConfigError(f"sampler.num_particles={num_particles} must be an integer >= 1 (1 = the base sampler)")
        if not alpha > 0:
            raise ConfigError(f"sampler.alpha={alpha} must be > 0 (the target is p exp(r / alpha))")
        if not 0.0 <= ess_threshold <= 1.0:
            raise ConfigError(f"sampler.ess_threshold={ess_threshold} must be in [0, 1] (resample when ESS < "
                              "ess_threshold * num_particles)")
        if resampling not in ("systematic", "multinomial"):
            raise ConfigError(f"sampler.resampling={resampling!r}; valid: systematic, multinomial")
        if int(every) != every or every < 1:
            raise ConfigError(f"sampler.every={every} must be an integer >= 1")
        check_value_estimate(value)
        super().__init__(num_steps=num_steps, timesteps=timesteps, schedule=schedule, row_cache=row_cache,
                         temperature=temperature, top_k=top_k, top_p=top_p, sampling_precision=sampling_precision,
                         record_trajectory=record_trajectory)
        self.reward, self.num_particles, self.alpha = reward, int(num_particles), float(alpha)
        self.ess_threshold, self.resampling, self.every, self.value = float(ess_threshold), resampling, int(every), value
        self._run: _Particles | None = None

    def __call__(self, model: Denoiser, *, batch_size: int, length: int, prompt: Tensor | None = None,
                 generator: Generator = None) -> SampleOutput:
        k = self.num_particles
        if k == 1:
            return super().__call__(model, batch_size=batch_size, length=length, prompt=prompt, generator=generator)
        if isinstance(generator, RowGenerators):
            raise ConfigError("sampler=smc couples the particles of a row and resamples across them: pass one "
                              "torch.Generator, not RowGenerators")
        self.check_model(model)  # before the start value spends a call
        check_reward_length(self.reward, length)
        device = model_device(model)
        place_reward(self.reward, device)
        start = time.perf_counter()
        # r_0: the value of the start canvas, common to a row's particles (they share it), so that a particle
        # whose first potential comes later than another's is not favoured meanwhile; one call on B rows
        start_counts = {"reward": 0, "denoiser": 0}
        x_start = init_canvas(model, batch_size=batch_size, length=length, prompt=prompt)
        every_row = torch.ones(batch_size, dtype=torch.bool, device=device)
        r0 = self.values(model, x_start, self.grid(device)[0].float().expand(batch_size), every_row, generator,
                         start_counts)
        if prompt is not None:
            prompt = prompt.to(device)
            prompt = prompt.repeat_interleave(k, 0) if prompt.dim() == 2 else prompt
        self._run = _Particles(log_w=torch.zeros(batch_size, k, dtype=torch.float64, device=device),
                               r_prev=r0.repeat_interleave(k))
        try:
            out = fold_value_calls(super().__call__(model, batch_size=batch_size * k, length=length, prompt=prompt,
                                                    generator=generator))
            run = self._run
        finally:
            self._run = None  # stateless between calls
        out.nfe += start_counts["denoiser"]
        out.aux_calls["reward"] += start_counts["reward"]
        index = choose_per_row(-run.log_w.T, generator)  # (B,): one particle per row, ∝ w
        pick = torch.arange(batch_size, device=device) * k + index
        info = {key: value[pick] for key, value in out.info.items() if key in ("row_nfe", "reveal_times")}
        info |= {"particle_index": index, "particles": out.tokens.view(batch_size, k, length),
                 "log_weights": run.log_w - run.log_w.logsumexp(-1, keepdim=True),
                 "ess": log_ess(run.log_w).exp(), "resampled": run.resampled}
        if "step_log_probs" in out.info:
            info["step_log_probs"] = [lp[pick] for lp in out.info["step_log_probs"]]
        trajectory = None if out.trajectory is None else [c[pick] for c in out.trajectory]
        return SampleOutput(tokens=out.tokens[pick], nfe=out.nfe, seconds=time.perf_counter() - start,
                            trajectory=trajectory, info=info, aux_calls=out.aux_calls)

    def reveal(self, model: Denoiser, x: Tensor, t: Tensor, rows: Tensor, revealed: Tensor, generator: Generator, *,
               step: int, trajectory: Trajectory | None, counts: dict[str, int]) -> None:
        super().reveal(model, x, t, rows, revealed, generator, step=step, trajectory=trajectory, counts=counts)
        run = self._run
        if run is None:  # k = 1: the base sampler
            return
        complete = ~(x == model.mask_id).any(-1)
        on_schedule = (step + 1) % self.every == 0 or step == self.num_steps - 1
        update = rows & (complete | on_schedule)  # particles that changed and are due a potential
        if not bool(update.any()):
            return
        s = self.grid(x.device)[step + 1].float().expand(x.shape[0])
        r_new = self.values(model, x, s, update, generator, counts)  # (n,) for the updated particles
        inc = torch.zeros_like(run.r_prev)
        inc[update] = (r_new - run.r_prev[update]) / self.alpha  # log G_n, float64
        run.r_prev[update] = r_new
        run.log_w += inc.view(run.log_w.shape)
        self.maybe_resample(x, generator)

    def values(self, model: Denoiser, x: Tensor, s: Tensor, update: Tensor, generator: Generator,
               counts: dict[str, int]) -> Tensor:
        """r(x̂0) of the particles ``update`` (P,) bool -> (n,) float64: one denoiser call on those with masks
        left, one reward call."""
        xs = x[update]
        probs = torch.nn.functional.one_hot(xs, model.vocab_size).float()
        open_rows = (xs == model.mask_id).any(-1)
        if bool(open_rows.any()):
            open_global = update.clone()
            open_global[update] = open_rows
            log_p = self.step.x0_log_probs(model, x, s, rows=open_global)
            u = uniform(xs[open_rows].shape, generator, device=x.device) if self.value == "sample" else None
            probs[open_rows] = x0_estimate(log_p, xs[open_rows], model.mask_id, self.value, u)
            counts["denoiser"] += 1
        counts["reward"] += 1
        return score(self.reward, probs, where="SMC particles")

    def maybe_resample(self, x: Tensor, generator: Generator) -> None:
        """Resample, in place, the groups whose ESS fell below ``ess_threshold`` · k (canvas rows, r_prev, weights)."""
        run, k = self._run, self.num_particles
        # 1e-9 slack: equal weights give log ESS = log k only up to float64 rounding, and ess_threshold = 1
        # must not resample them
        low = log_ess(run.log_w) < torch.log(torch.tensor(self.ess_threshold * k, dtype=torch.float64)) - 1e-9
        if not bool(low.any()):
            return
        b = run.log_w.shape[0]
        u = uniform((b, 1 if self.resampling == "systematic" else k), generator, device=x.device)
        ancestors = resample_indices(run.log_w, u, self.resampling)  # (B, k)
        groups = low.nonzero()[:, 0]
        src = (groups[:, None] * k + ancestors[groups]).reshape(-1)
        dst = (groups[:, None] * k + torch.arange(k, device=x.device)).reshape(-1)
        x[dst] = x[src]
        run.r_prev[dst] = run.r_prev[src]
        run.log_w[groups] = 0.0
        run.resampled += int(groups.numel())
