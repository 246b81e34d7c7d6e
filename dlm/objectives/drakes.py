"""DRAKES: reward fine-tuning through a Gumbel-softmax relaxed trajectory with a KL to the pretrained model.

Wang et al. 2025 (arXiv 2410.13643), Eq. 4: maximise over the fine-tuned denoiser theta
    J(theta) = E_{x_{0:N} ~ P_theta}[ r(x_0) ] - alpha KL(P_theta(x_{0:N}) || P_pre(x_{0:N})),
whose optimum is p_pre(x) exp(r(x) / alpha) / Z. The expectation is reparameterised by the relaxed rollout of
``dlm.objectives.drakes_rollout`` (N steps, the last K = ``truncate_steps`` Gumbel-softmax relaxed, the x0 a
straight-through one-hot), so the loss per batch of B trajectories is
    loss = - mean_b r(x0_b) + alpha_k mean_b sum_i KL_i^b,
with alpha_k = alpha min(1, k / alpha_warmup_steps) at optimiser step k (DRAKES' ``--alpha_schedule_warmup``)
and KL_i the exact per-step categorical KL over masked positions (``kl_estimator="exact"``, default) or the
public code's estimator (``"public"``, identically 0 on hard states: a documented negative control, notes
§2.5). Both estimators are reported in the metrics whichever enters the loss.

``evaluate`` is the honest measurement: K = 0 (the fine-tuned model's own ancestral sampler, no relaxation),
the reward of the samples it draws and the exact estimator, whose trajectory sum is unbiased for the path KL.

The reward reads the generated positions only (the prompt, e.g. BOS, is cut), as probabilities over the model
vocabulary (letters first, ``dlm.rewards.protocol``). Paper settings (DNA): num_steps 128, truncate_steps 50,
gumbel_temp 1, alpha 1e-3, Adam lr 1e-4, batch 32 x 4, clip 1, 1000 steps (notes §2.6).
Shapes: B rows, L canvas length, P prompt length, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from dlm.diffusion.schedule import LogLinearSchedule
from dlm.errors import ConfigError
from dlm.io.record import Family
from dlm.objectives.drakes_rollout import RelaxedRollout, RolloutOutput
from dlm.rewards.protocol import RewardModel
from dlm.samplers.canvas import init_canvas
from dlm.samplers.timesteps import resolve_timesteps
from dlm.types import Denoiser, NoiseSchedule

KLEstimator = Literal["exact", "public"]


@dataclass
class DrakesOutput:
    """``loss`` scalar with its graph; ``reward`` (B,) and ``kl`` (B,) detached (kl: the estimator in the loss);
    ``rollout`` the trajectory; ``metrics`` detached scalars (reward, kl_exact, kl_public, alpha, diversity)."""

    loss: Tensor
    reward: Tensor
    kl: Tensor
    rollout: RolloutOutput
    metrics: dict[str, Tensor] = field(default_factory=dict)


def diversity(tokens: Tensor) -> dict[str, Tensor]:
    """unique_fraction (distinct rows / B) and hamming (mean pairwise Hamming distance / L) of (B, L) ids."""
    b, length = tokens.shape
    unique = torch.unique(tokens, dim=0).shape[0] / b
    if b < 2:
        return {"unique_fraction": torch.tensor(float(unique)), "hamming": torch.tensor(0.0)}
    diff = (tokens[:, None] != tokens[None]).float().mean(-1)
    hamming = diff.sum() / (b * (b - 1))
    return {"unique_fraction": torch.tensor(float(unique)), "hamming": hamming.detach().cpu()}


def is_count(value: object) -> bool:
    """An integer >= 0 (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class DrakesLoss:
    """DRAKES objective (module docstring). Built by Hydra from ``conf/objective/drakes.yaml``; the recipe
    (``dlm/train/drakes_run.py``) passes the model directory's noise ``schedule``.

    ``num_steps`` N, ``truncate_steps`` K in [0, N], ``gumbel_temp`` tau > 0, ``straight_through`` (relaxed
    samples one-hot forward), ``alpha`` >= 0, ``alpha_warmup_steps`` (linear ramp; 0: none), ``kl_estimator``,
    ``truncate_kl`` (KL over the K relaxed steps only), ``checkpoint_steps`` (gradient checkpointing per step),
    ``timesteps`` an explicit grid (N + 1,) instead of the uniform one.
    """

    family = Family.MASKED  # it fine-tunes a bidirectional masked-diffusion denoiser, read without shift
    shift_logits = False

    def __init__(self, *, num_steps: int = 128, truncate_steps: int = 50, gumbel_temp: float = 1.0,
                 straight_through: bool = False, alpha: float = 1e-3, alpha_warmup_steps: int = 0,
                 kl_estimator: KLEstimator = "exact", truncate_kl: bool = False, checkpoint_steps: bool = False,
                 timesteps: list[float] | None = None, schedule: NoiseSchedule | None = None) -> None:
        grid = resolve_timesteps(num_steps, timesteps)
        n = grid.numel() - 1
        if not is_count(truncate_steps) or truncate_steps > n:
            raise ConfigError(f"objective.truncate_steps={truncate_steps!r} must be an integer in [0, {n}] (the "
                              f"relaxed last steps of the {n}-step rollout; the paper uses 50 of 128)")
        if not gumbel_temp > 0:
            raise ConfigError(f"objective.gumbel_temp={gumbel_temp} must be > 0 (the paper uses 1.0 for DNA)")
        if not alpha >= 0:
            raise ConfigError(f"objective.alpha={alpha} must be >= 0 (the KL weight; the paper uses 1e-3)")
        if not is_count(alpha_warmup_steps):
            raise ConfigError(f"objective.alpha_warmup_steps={alpha_warmup_steps!r} must be an integer >= 0")
        if kl_estimator not in ("exact", "public"):
            raise ConfigError(f"objective.kl_estimator={kl_estimator!r}; valid: exact (per-step categorical KL over "
                              "masked positions), public (the DRAKES code's estimator, 0 on hard states)")
        self.num_steps, self.truncate_steps, self.gumbel_temp = n, truncate_steps, float(gumbel_temp)
        self.straight_through, self.alpha = bool(straight_through), float(alpha)
        self.alpha_warmup_steps = alpha_warmup_steps
        self.kl_estimator: KLEstimator = kl_estimator
        self.truncate_kl, self.checkpoint_steps = bool(truncate_kl), bool(checkpoint_steps)
        self.timesteps = grid
        self.schedule = schedule or LogLinearSchedule()

    def rollout(self, *, truncate_steps: int | None = None, truncate_kl: bool | None = None,
                kl_grad: bool = True) -> RelaxedRollout:
        """The rollout of this objective (``truncate_steps`` / ``truncate_kl`` overridable: ``evaluate``)."""
        return RelaxedRollout(num_steps=self.num_steps,
                              truncate_steps=self.truncate_steps if truncate_steps is None else truncate_steps,
                              gumbel_temp=self.gumbel_temp, schedule=self.schedule, timesteps=self.timesteps,
                              straight_through=self.straight_through,
                              truncate_kl=self.truncate_kl if truncate_kl is None else truncate_kl,
                              checkpoint_steps=self.checkpoint_steps, kl_grad=kl_grad)

    def alpha_at(self, step: int) -> float:
        """alpha_k: linear warm-up from 0 over ``alpha_warmup_steps`` optimiser steps, then alpha."""
        if self.alpha_warmup_steps == 0:
            return self.alpha
        return self.alpha * min(1.0, step / self.alpha_warmup_steps)

    def _run(self, rollout: RelaxedRollout, model: Denoiser, reference: Denoiser, reward: RewardModel, *,
             batch_size: int, length: int, prompt: Tensor | None, generator: torch.Generator | None, alpha: float
             ) -> DrakesOutput:
        start = init_canvas(model, batch_size=batch_size, length=length, prompt=prompt)
        p = 0 if prompt is None else prompt.shape[-1]
        out = rollout(model, reference, start, generator=generator)
        r = reward(out.x0[:, p:])  # (B,) the generated positions, straight-through one-hot
        kl = out.kl_exact if self.kl_estimator == "exact" else out.kl_public
        loss = -r.mean() + alpha * kl.mean() if alpha else -r.mean()
        metrics = {"reward": r.detach().mean(), "kl_exact": out.kl_exact.detach().mean(),
                   "kl_public": out.kl_public.detach().mean(), "alpha": torch.tensor(alpha),
                   **diversity(out.tokens[:, p:])}
        return DrakesOutput(loss=loss, reward=r.detach(), kl=kl.detach(), rollout=out, metrics=metrics)

    def __call__(self, model: Denoiser, reference: Denoiser, reward: RewardModel, *, batch_size: int, length: int,
                 prompt: Tensor | None = None, generator: torch.Generator | None = None, step: int = 0) -> DrakesOutput:
        """One relaxed rollout of ``batch_size`` canvases of ``length`` (prompt written in) and the loss."""
        alpha = self.alpha_at(step)
        # with alpha_k = 0 the KL is a metric only: its N - K re-evaluations of the hard states need no graph
        return self._run(self.rollout(kl_grad=alpha > 0), model, reference, reward, batch_size=batch_size,
                         length=length, prompt=prompt, generator=generator, alpha=alpha)

    @torch.no_grad()
    def evaluate(self, model: Denoiser, reference: Denoiser, reward: RewardModel, *, batch_size: int, length: int,
                 prompt: Tensor | None = None, generator: torch.Generator | None = None) -> DrakesOutput:
        """K = 0: samples of the fine-tuned model's own sampler, their reward and the path-KL estimates."""
        return self._run(self.rollout(truncate_steps=0, truncate_kl=False), model, reference, reward,
                         batch_size=batch_size, length=length, prompt=prompt, generator=generator, alpha=self.alpha)
