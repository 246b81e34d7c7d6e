"""SVDD: soft value-based decoding (Li et al. 2024, "Derivative-free guidance in continuous and discrete
diffusion models with soft value-based decoding", Algorithm 1), on the ancestral sampler.

Target: p_α(x0) ∝ p_θ(x0) exp(r(x0)/α). Its optimal step is p*(x_s | x_t) ∝ p_θ(x_s | x_t) exp(v(x_s)/α)
with the soft value v (``dlm.samplers.reward_value``). SVDD approximates it at every step t -> s by
importance sampling: for every row that reveals a token,

  1. one denoiser call gives p_θ(x0 | x_t) at the positions the step reveals (the same rows, positions
     and call as the ancestral sampler; which positions reveal does not depend on x0, so they are drawn
     first and shared by the candidates);
  2. M = ``num_candidates`` candidate next states x_s^(m) draw the revealed tokens from it;
  3. one batched denoiser call on the M·R candidates (at time s) and one reward call give the values
     v̂_m = r(x̂0(x_s^(m))) (``value``: argmax / sample / mean of p_θ(x0 | x_s^(m)));
  4. per row, J ~ softmax_m(v̂_m / α) (float64, ``choose_per_row``), x_s = x_s^(J). α = 0 takes the argmax
     (the public code's greedy rule; the paper's algorithm samples, so α > 0 is the default).

Sharing the revealed set is exact in the limit: under p_θ the set S is independent of x0, so
E[exp(r/α) | x_t, S] = exp(v(x_t)/α) and p*(S | x_t) = p_θ(S); only the revealed values are tilted.
With ``value="sample"`` exp(v̂/α) is unbiased for exp(v/α) and step 4 converges to p* as M → ∞; with
``argmax`` it is the (biased, lower-variance) SVDD-PM estimate.

M = 1 is the ancestral sampler bit for bit with the same generator (no value call, no reward call).
Cost per revealing step: 2 denoiser calls (the second on M·R rows; it is skipped when every
candidate is complete, then x̂0 = x_s exactly) and 1 reward call. ``nfe`` counts both denoiser calls,
``aux_calls["reward"]`` the batched reward calls; ``info["row_nfe"]`` counts the proposal calls only.
Shapes: B batch, R evaluated rows, M candidates, L length, K revealed positions per row, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dlm.errors import ConfigError
from dlm.rewards.protocol import RewardModel
from dlm.samplers.ancestral import AncestralSampler, RowCache
from dlm.samplers.canvas import model_device, padded_positions
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


class SVDDSampler(AncestralSampler):
    """SVDD on the ancestral loop (module docstring). ``reward``: a ``dlm.rewards.RewardModel`` over the model
    vocabulary; ``num_candidates`` M >= 1; ``alpha`` α >= 0 (selection temperature; 0 = argmax);
    ``value``: how x̂0 is built for the value estimate."""

    aux_networks = ("reward", "denoiser")

    def __init__(self, *, reward: RewardModel, num_candidates: int = 10, alpha: float = 0.1,
                 value: ValueEstimate = "argmax", num_steps: int = 128,
                 timesteps: Sequence[float] | Tensor | None = None, schedule: NoiseSchedule | None = None,
                 row_cache: RowCache = "row", temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, sampling_precision: Precision = "float64",
                 record_trajectory: bool = False) -> None:
        if int(num_candidates) != num_candidates or num_candidates < 1:
            raise ConfigError(f"sampler.num_candidates={num_candidates} must be an integer >= 1 (1 = the base "
                              "ancestral sampler)")
        if alpha < 0:
            raise ConfigError(f"sampler.alpha={alpha} must be >= 0 (0 = pick the best candidate)")
        check_value_estimate(value)
        super().__init__(num_steps=num_steps, timesteps=timesteps, schedule=schedule, row_cache=row_cache,
                         temperature=temperature, top_k=top_k, top_p=top_p, sampling_precision=sampling_precision,
                         record_trajectory=record_trajectory)
        self.reward, self.num_candidates, self.alpha, self.value = reward, int(num_candidates), float(alpha), value

    def __call__(self, model: Denoiser, *, batch_size: int, length: int, prompt: Tensor | None = None,
                 generator: Generator = None) -> SampleOutput:
        check_reward_length(self.reward, length)
        place_reward(self.reward, model_device(model))
        return fold_value_calls(super().__call__(model, batch_size=batch_size, length=length, prompt=prompt,
                                                 generator=generator))

    def values(self, model: Denoiser, candidates: Tensor, s: Tensor, u: Tensor | None, counts: dict[str, int]) -> Tensor:
        """v̂ = r(x̂0) of candidates (N, L) at time s (N,) -> (N,) float64; one denoiser call on the rows with
        masks left (complete rows are their own x0), one reward call. ``u`` (N, L): uniforms for ``sample``."""
        probs = torch.nn.functional.one_hot(candidates, model.vocab_size).float()
        open_rows = (candidates == model.mask_id).any(-1)
        if bool(open_rows.any()):
            log_p = self.step.x0_log_probs(model, candidates, s, rows=open_rows)
            probs[open_rows] = x0_estimate(log_p, candidates[open_rows], model.mask_id, self.value,
                                           None if u is None else u[open_rows])
            counts["denoiser"] += 1
        counts["reward"] += 1
        return score(self.reward, probs, where="SVDD candidates")

    def select(self, values: Tensor, generator: Generator) -> Tensor:
        """One candidate per row: values (M, R) -> (R,) long, J ~ softmax(v / α) (argmax when α = 0)."""
        if self.alpha == 0.0:
            return values.argmax(0)
        return choose_per_row(-values, generator, temperature=self.alpha)

    def reveal(self, model: Denoiser, x: Tensor, t: Tensor, rows: Tensor, revealed: Tensor, generator: Generator, *,
               step: int, trajectory: Trajectory | None, counts: dict[str, int]) -> None:
        if self.num_candidates == 1:
            return super().reveal(model, x, t, rows, revealed, generator, step=step, trajectory=trajectory,
                                  counts=counts)
        m, xt = self.num_candidates, x[rows]  # (R, L)
        r = xt.shape[0]
        at, valid = padded_positions(revealed[rows])
        logits = self.step.logits(model, x, t, rows=rows, at=at)  # (R, K, V): the ancestral step's call
        row_ids = torch.arange(r, device=x.device)[:, None].expand_as(at)[valid]
        candidates = xt[None].repeat(m, 1, 1)  # (M, R, L)
        for j in range(m):  # each candidate draws the revealed tokens as the ancestral step would
            candidates[j, row_ids, at[valid]] = self.step.draw_rows(logits, valid, model.mask_id, generator, rows)
        gen_rows = generator.select(rows) if isinstance(generator, RowGenerators) else generator
        u = None
        if self.value == "sample":  # a row's value draws come from its own stream with RowGenerators
            u = uniform((r, m, xt.shape[1]), gen_rows, device=x.device).transpose(0, 1).reshape(m * r, -1)
        s = self.grid(x.device)[step + 1].float().expand(m * r)
        v = self.values(model, candidates.reshape(m * r, -1), s, u, counts).view(m, r)
        chosen = self.select(v, gen_rows)  # (R,)
        x[rows] = candidates[chosen, torch.arange(r, device=x.device)]
        if trajectory is not None:
            log_p = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
            picked = self.step.tokens.log_probs(logits[valid], model.mask_id)  # (N, V) proposal log-probs
            tokens = x[rows][row_ids, at[valid]]
            log_p[rows.nonzero()[:, 0][row_ids], at[valid]] = picked.gather(-1, tokens[:, None])[:, 0]
            trajectory.add(x, log_p)
