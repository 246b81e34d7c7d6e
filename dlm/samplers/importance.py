"""EDLM's importance-sampling decoder (Xu et al. 2025, Algorithm 1): the ancestral sampler whose x0
comes from the energy-corrected kernel p_theta(x0 | xt) exp(-E(x0, xt, t)) / Z inside a window.

At a step t -> s with t >= 1 - w (the window) and k = ``num_candidates`` > 1, for every row that
reveals a token (the same rows the ancestral sampler evaluates):
  1. one denoiser call gives log p_theta(x0^i | xt) at every position (R, L, V);
  2. k whole candidates x0^(j) ~ p_theta(. | xt) are drawn at every masked position (unmasked
     positions carry over), laid out (k, R, L);
  3. one batched energy call scores the k * R candidates (chunked to ``energy_batch`` rows);
  4. self-normalised weights softmax_j(-E_j / tau) **per row** (over the k axis only: a row never
     takes another row's candidate);
  5. one candidate j* is drawn per row, and the absorbing posterior step q(xs | xt, x0^(j*)) reveals
     it at the positions the step reveals (which positions reveal does not depend on x0, so they are
     drawn first, exactly as in the ancestral sampler).
Outside the window, or with k = 1, the step is the ancestral step itself: with one candidate the
weight is 1, so the draw at the revealed positions is p_theta's, and the sampler is the base sampler
bit for bit with the same generator (the rest of the candidate and its energy are never needed).
w = 0 makes no energy call. As k grows the selected x0 converges to the corrected kernel (SNIS).

Weights are exp(-E): lower energy = more likely, as the energies are defined and trained (the public
EDLM code weights by exp(+E)). ``aux_calls["energy"]`` counts batched energy calls; ``nfe`` counts
denoiser calls as for the ancestral sampler. Shapes: B batch, R evaluated rows, L length, V vocab.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dlm.errors import ConfigError
from dlm.models.energy import EnergyModel, check_energy_fits
from dlm.samplers.ancestral import AncestralSampler, RowCache
from dlm.samplers.canvas import model_device
from dlm.samplers.categorical import Precision
from dlm.samplers.row_generators import Generator, RowGenerators, uniform
from dlm.samplers.step import Trajectory
from dlm.types import Denoiser, NoiseSchedule


def inverse_cdf(log_p: Tensor, u: Tensor, *, chunk: int = 64) -> Tensor:
    """Draws from softmax rows by inverting the float64 CDF: log_p (M, V), u (M, k) in [0, 1) -> (M, k).

    k draws per row for one cumulative sum; rows are processed ``chunk`` at a time, so memory stays
    O(chunk * V) whatever the vocabulary (a Gumbel draw of k whole candidates would need k * M * V
    noise values).
    """
    out = torch.empty(u.shape, dtype=torch.long, device=log_p.device)
    for i in range(0, log_p.shape[0], chunk):
        cdf = log_p[i:i + chunk].double().softmax(-1).cumsum(-1)
        target = (u[i:i + chunk] * cdf[:, -1:]).contiguous()  # the total is 1 up to rounding; scale so the last bin closes
        out[i:i + chunk] = torch.searchsorted(cdf, target, right=True).clamp(max=log_p.shape[-1] - 1)
    return out


def draw_candidates(log_p: Tensor, xt: Tensor, mask_id: int, k: int, generator: Generator, *,
                    greedy: bool = False) -> tuple[Tensor, Tensor]:
    """k whole x0 proposals per row from the factorised p_theta(x0 | xt).

    log_p (R, L, V) filtered log-probabilities, xt (R, L) -> candidates (k, R, L) (xt's tokens where
    unmasked) and their per-position log-probabilities (k, R, L) (0 where unmasked). Uniforms are drawn
    (R, k, L) per row with ``RowGenerators`` (a row's candidates do not depend on the other rows), else
    (k, R, L) from the one generator; only masked positions are inverted. ``greedy``: the argmax (k copies).
    """
    r, length, _ = log_p.shape
    masked = xt == mask_id
    draws = log_p.argmax(-1)[None].expand(k, r, length).clone()
    if not greedy:
        if isinstance(generator, RowGenerators):
            u = generator.rand((r, k, length), dtype=torch.float64, device=log_p.device).transpose(0, 1)
        else:
            u = uniform((k, r, length), generator, device=log_p.device)
        pos = masked.nonzero(as_tuple=True)
        draws[:, pos[0], pos[1]] = inverse_cdf(log_p[pos], u[:, pos[0], pos[1]].T).T
    candidates = torch.where(masked, draws, xt)
    lp = log_p[None].expand(k, -1, -1, -1).gather(-1, candidates[..., None])[..., 0]
    return candidates, lp.masked_fill(~masked, 0.0)


def choose_per_row(energies: Tensor, generator: Generator, *, temperature: float = 1.0) -> Tensor:
    """One index j* per row with probability softmax_j(-E_j / temperature) over the k axis.

    energies (k, R) -> (R,) long. The weights are normalised per row, never across rows; a shift of
    all k energies of a row leaves them unchanged (log-sum-exp), +-1e4 energies give no NaN.
    """
    log_w = (-energies.double() / temperature).log_softmax(0)  # (k, R)
    u = uniform((energies.shape[1],), generator, device=energies.device)
    cdf = log_w.exp().cumsum(0)
    # inverse CDF on the k axis; clamp guards against a cumulative sum that rounds below u at the end
    return (cdf < u[None] * cdf[-1:]).sum(0).clamp(max=energies.shape[0] - 1)


class ImportanceSampler(AncestralSampler):
    """EDLM decoding (module docstring). ``energy``: an ``EnergyModel`` (``dlm.io.energy_dir.load_energy``);
    ``num_candidates`` k >= 1; ``window`` w in [0, 1] (importance sampling while t >= 1 - w);
    ``energy_temperature`` tau of the weights; ``energy_batch`` candidate rows per energy forward."""

    aux_networks = ("energy",)

    def __init__(self, *, energy: EnergyModel, num_candidates: int = 2, window: float = 0.2,
                 energy_temperature: float = 1.0, energy_batch: int = 256, num_steps: int = 128,
                 timesteps: Sequence[float] | Tensor | None = None, schedule: NoiseSchedule | None = None,
                 row_cache: RowCache = "row", temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, sampling_precision: Precision = "float64",
                 record_trajectory: bool = False) -> None:
        if int(num_candidates) != num_candidates or num_candidates < 1:
            raise ConfigError(f"sampler.num_candidates={num_candidates} must be an integer >= 1 (1 = the base "
                              "ancestral sampler)")
        if not 0.0 <= window <= 1.0:
            raise ConfigError(f"sampler.window={window} must be in [0, 1] (importance sampling while t >= 1 - window; "
                              "0 = the base sampler, 1 = every step)")
        if energy_temperature <= 0:
            raise ConfigError(f"sampler.energy_temperature={energy_temperature} must be > 0")
        if energy_batch < 1:
            raise ConfigError(f"sampler.energy_batch={energy_batch} must be >= 1")
        super().__init__(num_steps=num_steps, timesteps=timesteps, schedule=schedule, row_cache=row_cache,
                         temperature=temperature, top_k=top_k, top_p=top_p, sampling_precision=sampling_precision,
                         record_trajectory=record_trajectory)
        self.energy, self.num_candidates, self.window = energy, int(num_candidates), float(window)
        self.energy_temperature, self.energy_batch = float(energy_temperature), int(energy_batch)

    def check_model(self, model: Denoiser) -> None:
        super().check_model(model)
        check_energy_fits(self.energy, model)

    def __call__(self, model: Denoiser, *, batch_size: int, length: int, prompt: Tensor | None = None,
                 generator: Generator = None):
        self.energy.to(model_device(model))  # the energy follows the denoiser (loaded on the CPU)
        return super().__call__(model, batch_size=batch_size, length=length, prompt=prompt, generator=generator)

    def in_window(self, t: Tensor) -> bool:
        return self.num_candidates > 1 and self.window > 0 and float(t) >= 1.0 - self.window

    def score(self, candidates: Tensor, xt: Tensor, t: Tensor, log_p: Tensor) -> Tensor:
        """Energies (k, R) of candidates (k, R, L) in one batched call (chunks of ``energy_batch`` rows)."""
        k, r, length = candidates.shape
        flat = candidates.reshape(k * r, length)
        xt_flat = xt[None].expand(k, r, length).reshape(k * r, length)
        t_flat = t[None].expand(k, r).reshape(k * r)
        lp_flat = log_p.reshape(k * r, length)
        out = [self.energy(flat[i:i + self.energy_batch], xt_flat[i:i + self.energy_batch],
                           t_flat[i:i + self.energy_batch], lp_flat[i:i + self.energy_batch])
               for i in range(0, k * r, self.energy_batch)]
        return torch.cat(out).view(k, r)

    def reveal(self, model: Denoiser, x: Tensor, t: Tensor, rows: Tensor, revealed: Tensor, generator: Generator, *,
               step: int, trajectory: Trajectory | None, counts: dict[str, int]) -> None:
        if not self.in_window(t[0]):
            return super().reveal(model, x, t, rows, revealed, generator, step=step, trajectory=trajectory,
                                  counts=counts)
        xt = x[rows]
        log_p = self.step.x0_log_probs(model, x, t, rows=rows)  # (R, L, V)
        gen_rows = generator.select(rows) if isinstance(generator, RowGenerators) else generator
        candidates, cand_lp = draw_candidates(log_p, xt, model.mask_id, self.num_candidates, gen_rows,
                                              greedy=self.step.tokens.temperature == 0)
        energies = self.score(candidates, xt, t[rows], cand_lp)
        counts["energy"] += 1
        if not bool(torch.isfinite(energies).all()):
            raise ConfigError(f"the energy returned non-finite values at t={float(t[0]):.4f}; check the energy "
                              "model's weights (sampler.energy.path)")
        chosen = choose_per_row(energies, gen_rows, temperature=self.energy_temperature)  # (R,)
        r_idx = torch.arange(candidates.shape[1], device=x.device)
        x0 = candidates[chosen, r_idx]  # (R, L)
        reveal_rows = revealed[rows]
        x[rows] = torch.where(reveal_rows, x0, xt)  # q(xs | xt, x0*): the revealed positions take x0*
        if trajectory is not None:
            log_p_step = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
            # the proposal's log-probability of the committed tokens (the corrected kernel's is intractable)
            log_p_step[rows] = torch.where(reveal_rows, cand_lp[chosen, r_idx], 0.0).float()
            trajectory.add(x, log_p_step)
