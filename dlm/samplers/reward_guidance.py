"""Reward (classifier) guidance for the unblocked ancestral sampler: tilt p_θ(x0 | x_t) per position by a reward.

At a step t -> s, every position ℓ the step reveals draws from the guided law (research note §4.4, (G1)
with log p_φ(y | ·) replaced by r(·)/α; Nisonoff et al. 2024; DRAKES' CG baseline)

    log p_α(x^ℓ = v | x_t) = log p_θ(x^ℓ = v | x_t) + r(z^{ℓ←v}) / α − log Z_ℓ                    (R1)

where z is the context the reward reads and z^{ℓ←v} is z with position ℓ set to v:
  ``context="x0"``      the canvas with every masked position filled by the argmax of p_θ(x0 | x_t) (a
                        complete sequence: what an oracle trained on sequences expects);
  ``context="canvas"``  the canvas itself, masks left in (a reward drops their mass: less evidence).
The tilt r(z^{ℓ←v}) comes from ``dlm.samplers.guidance``, shared with the block sampler's classifier
guidance:
  ``mode="exact"``        every (revealed position, possible token) substitution is scored: K·V sequences
                          per row, ``chunk_size`` per reward call; any reward;
  ``mode="first_order"``  one reward forward + backward: r(z^{ℓ←v}) − r(z) ≈ g[ℓ, v] − g[ℓ, z^ℓ] with
                          g = ∇_onehot r(z) (G2); exact for a reward linear in the one-hot; needs
                          ``reward.differentiable``.
Positions are tilted independently (each with the others fixed at z), so the sampled law is not the
target p exp(r/α)/Z in general; SVDD and SMC target it. The tilt is added to the raw logits before
temperature / top-k / top-p (so with temperature T the tilt is r/(α T)); tokens the filters remove
stay removed. One full-canvas denoiser call per revealing step (x̂0 needs every masked position), as
the ancestral sampler's; ``aux_calls["reward"]`` counts reward calls. Shapes: R evaluated rows, K
revealed positions per row, L length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.errors import ConfigError
from dlm.rewards.finite import check_finite_reward
from dlm.rewards.protocol import RewardModel, check_reward_fits
from dlm.samplers.ancestral import AncestralSampler, RowCache
from dlm.samplers.canvas import model_device, padded_positions
from dlm.samplers.categorical import Precision
from dlm.samplers.guidance import GuidanceMode, gradient_tilt, substitution_tilt
from dlm.samplers.reward_value import check_reward_length, place_reward
from dlm.samplers.row_generators import Generator
from dlm.samplers.step import Trajectory
from dlm.types import Denoiser, NoiseSchedule, SampleOutput

GuidanceContext = Literal["x0", "canvas"]


class RewardGuidedSampler(AncestralSampler):
    """The ancestral sampler drawing revealed tokens from (R1). ``reward``: a ``dlm.rewards.RewardModel``;
    ``alpha`` α > 0 (guidance strength 1/α); ``mode``: exact | first_order; ``context``: x0 | canvas."""

    aux_networks = ("reward",)

    def __init__(self, *, reward: RewardModel, alpha: float = 1.0, mode: GuidanceMode = "exact",
                 context: GuidanceContext = "x0", chunk_size: int = 1024, num_steps: int = 128,
                 timesteps: Sequence[float] | Tensor | None = None, schedule: NoiseSchedule | None = None,
                 row_cache: RowCache = "row", temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, sampling_precision: Precision = "float64",
                 record_trajectory: bool = False) -> None:
        if not alpha > 0:
            raise ConfigError(f"sampler.alpha={alpha} must be > 0 (the tilt is r / alpha)")
        if mode not in ("exact", "first_order"):
            raise ConfigError(f"sampler.mode={mode!r}; valid: exact, first_order")
        if context not in ("x0", "canvas"):
            raise ConfigError(f"sampler.context={context!r}; valid: x0, canvas")
        if chunk_size < 1:
            raise ConfigError(f"sampler.chunk_size={chunk_size} must be >= 1")
        if mode == "first_order":
            try:
                check_reward_fits(reward, alphabet=reward.alphabet, length=reward.length or 0, needs_gradient=True,
                                  method="cg")
            except ConfigError as e:
                raise ConfigError(f"{e}; or keep method=cg with sampler.mode=exact (enumeration needs no gradient)") \
                    from None
        super().__init__(num_steps=num_steps, timesteps=timesteps, schedule=schedule, row_cache=row_cache,
                         temperature=temperature, top_k=top_k, top_p=top_p, sampling_precision=sampling_precision,
                         record_trajectory=record_trajectory)
        self.reward, self.alpha, self.mode, self.context = reward, float(alpha), mode, context
        self.chunk_size = int(chunk_size)

    def __call__(self, model: Denoiser, *, batch_size: int, length: int, prompt: Tensor | None = None,
                 generator: Generator = None) -> SampleOutput:
        check_reward_length(self.reward, length)
        place_reward(self.reward, model_device(model))
        return super().__call__(model, batch_size=batch_size, length=length, prompt=prompt, generator=generator)

    def guided_logits(self, model: Denoiser, x: Tensor, t: Tensor, rows: Tensor, at: Tensor, valid: Tensor,
                      counts: dict[str, int]) -> Tensor:
        """Raw logits (R, K, V) of (R1) at positions ``at`` (R, K) (``valid`` entries) of x[rows]: one denoiser call
        on x[rows] plus the reward calls of ``mode``; tokens outside the sampler's filters are -inf."""
        v = model.vocab_size
        logits = self.step.logits(model, x, t, rows=rows)  # (R, L, V)
        log_p = self.step.tokens.log_probs(logits.flatten(0, 1), model.mask_id).view(logits.shape)
        z = x[rows]
        if self.context == "x0":
            z = torch.where(z == model.mask_id, log_p.argmax(-1), z)
        idx = at[..., None].expand(-1, -1, v)
        logits_at, log_p_at = logits.gather(1, idx).float(), log_p.gather(1, idx)

        def score(ids_or_onehot: Tensor) -> Tensor:  # r / α of ids (m, L) or one-hots (m, L, V)
            counts["reward"] += 1
            probs = ids_or_onehot if ids_or_onehot.is_floating_point() else F.one_hot(ids_or_onehot, v).float()
            return self.reward(probs).float() / self.alpha

        if self.mode == "exact":
            tilt = substitution_tilt(score, log_p_at, z, at, valid, chunk_size=self.chunk_size)
        else:
            tilt = gradient_tilt(score, z, at, v)
        check_finite_reward(tilt[valid].flatten(), reward="the reward (reward guidance tilt)")
        return torch.where(torch.isfinite(log_p_at), logits_at + tilt, float("-inf"))

    def reveal(self, model: Denoiser, x: Tensor, t: Tensor, rows: Tensor, revealed: Tensor, generator: Generator, *,
               step: int, trajectory: Trajectory | None, counts: dict[str, int]) -> None:
        at, valid = padded_positions(revealed[rows])
        logits = self.guided_logits(model, x, t, rows, at, valid, counts)
        draws = self.step.draw_rows(logits, valid, model.mask_id, generator, rows)
        row_ids = rows.nonzero()[:, 0][:, None].expand_as(at)[valid]
        x[row_ids, at[valid]] = draws
        if trajectory is not None:
            log_p = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
            picked = self.step.tokens.log_probs(logits[valid], model.mask_id)  # the guided law drawn from
            log_p[row_ids, at[valid]] = picked.gather(-1, draws[:, None])[:, 0]
            trajectory.add(x, log_p)
