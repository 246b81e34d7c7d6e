"""DRAKES' reparameterised trajectory: N ancestral steps from all-mask, the last K Gumbel-softmax relaxed.

Wang et al. 2025 (DRAKES, ICLR), Alg. 1 / Eq. 6-7 for masked diffusion (notes §2.2, Appendix A.2). On the
time grid t_0 = 1 > ... > t_N (``dlm.samplers.timesteps``) with psi_i = (alpha(t_{i+1}) - alpha(t_i)) /
(1 - alpha(t_i)) (MDLM Eq. 6; psi = 1 on the last step, as every dlm sampler):

* steps 0 .. N-K-1 are **hard** and run under ``no_grad``: exactly ``AncestralSampler``'s step (Bernoulli
  reveal with probability psi_i, then a float64 Gumbel-max token draw) consuming the same random numbers, so
  K = 0 returns the base sampler's tokens bit for bit for the same generator;
* steps N-K .. N-1 are **relaxed**. The state x is a (B, L, V) simplex (one-hot where hard), fed to the
  network as probabilities (``probs @ E``). Per position the MDLM transition over V tokens + stay-masked is
      log q(v) = log psi_i + log p_theta(v | x),   log q(mask) = log(1 - psi_i),
  with p_theta the SUBS distribution (mask column -inf), and a Gumbel-softmax sample at temperature tau
      z = softmax((log q + g) / tau),   g = -log(-log u), u ~ U(0, 1) in float64
  (optionally straight-through: one-hot(argmax z) forward, gradient of z). Only the masked mass moves:
      x' = x + x[mask] (z - e_mask)
  i.e. with probability x[mask] the position was masked and follows z, otherwise it keeps its letters. On a
  hard state this is the joint (V+1)-way draw of ``dlm.samplers.joint``; DRAKES' code uses
  x' = (1 - m) x + m z with m = x[mask], which equals ours on hard states but leaks letter mass into the mask
  channel on soft ones (a position left with mask mass at the end), so we keep the mixture form.
* x0: straight-through one-hot of the final state, exactly one-hot in the forward pass (argmax over the
  non-mask columns) with the gradient of the soft state (notes §2.2).

KL to the frozen pretrained model, per step i on the state x_i, both evaluated at the same (x_i, t_i):

* ``exact`` (ours, notes §2.5): the categorical KL of the two transitions. The stay-masked mass 1 - psi_i is
  the same under both and cancels, so per masked position it is psi_i KL(p_theta(.|x_i) || p_pre(.|x_i)):
      KL_i = sum_l x_i[l, mask] psi_i sum_v p_theta(v) (log p_theta(v) - log p_pre(v)).
  On hard states x_i[l, mask] is the mask indicator and the sum over steps of a trajectory drawn from the
  fine-tuned model is an unbiased estimate of the path KL(P_theta(x_{0:N}) || P_pre(x_{0:N})) (chain rule
  of KL: E sum_i KL(P_theta(.|x_i) || P_pre(.|x_i))); on relaxed states x_i[l, mask] is the masked weight.
* ``public`` (DRAKES' DNA code, ``finetune_reward_bp.py``, a CTMC generalised-KL integrand): with SUBS
  carry-over (an argmax-unmasked position gets p = one-hot of its token) and copy flag c = 1 - x_i[mask],
      KL_i = sum_l sum_{v != mask} x_i[l, v] c_l (p_pre - p_theta + p_theta log(p_theta / p_pre))_v / m_i,
  m_i = 1 - alpha(t_i) the move chance.
  It is **identically zero on hard states** (unmasked: both sides are the same one-hot; masked: c = 0) and
  non-zero only through Gumbel-softmax leakage on relaxed ones. Kept as the documented negative control.

Both estimators are computed at every step (they need the same two network outputs) and returned; the
objective chooses which enters the loss. ``truncate_kl`` (DRAKES' ``--truncate_kl``) keeps only the K relaxed
steps; by default the hard steps are re-evaluated with gradients (one extra network call per hard step).
``checkpoint_steps`` recomputes each relaxed step's (and each hard KL step's) activations in the backward
pass: memory O(1) steps of activations instead of O(K).
Shapes: B rows, L canvas length, V vocabulary (mask included), N steps, K relaxed steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from dlm.samplers.ancestral import AncestralSampler
from dlm.samplers.categorical import TokenSampling
from dlm.samplers.row_generators import uniform
from dlm.samplers.step import DenoiseStep
from dlm.types import Denoiser, NoiseSchedule


@dataclass
class RolloutOutput:
    """``x0`` (B, L, V) straight-through one-hot; ``tokens`` (B, L) its argmax; ``kl_exact`` / ``kl_public``
    (B,) per-trajectory sums over the KL steps (with graphs); ``kl_steps_exact`` / ``kl_steps_public`` (S, B)
    detached per-step terms (S = N, or K with truncate_kl); ``states`` the relaxed states (B, L, V) detached,
    before each relaxed step and after the last (K + 1 entries); ``hard_states`` the (B, L) canvases before
    each hard step."""

    x0: Tensor
    tokens: Tensor
    kl_exact: Tensor
    kl_public: Tensor
    kl_steps_exact: Tensor
    kl_steps_public: Tensor
    states: list[Tensor]
    hard_states: list[Tensor]


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard Gumbel noise (float64): float32 uniforms truncate it at ~16.6 (``dlm.samplers.categorical``)."""
    u = uniform(shape, generator, dtype=torch.float64, device=device)
    return -torch.log(-torch.log(u.clamp(min=1e-300)))


def transition_log_probs(log_p: Tensor, psi: Tensor, mask_id: int) -> Tensor:
    """log q (..., V) float64 of the MDLM step: log psi + log p(v) off the mask, log(1 - psi) on it (-inf on
    the last step, psi = 1). The same numbers as ``dlm.samplers.joint.joint_draw``."""
    log_q = log_p.double() + torch.log(psi)
    is_mask = torch.arange(log_q.shape[-1], device=log_q.device) == mask_id
    return torch.where(is_mask, torch.log1p(-psi), log_q)


def gumbel_softmax(log_q: Tensor, gumbel: Tensor, tau: float, *, straight_through: bool) -> Tensor:
    """z = softmax((log q + g) / tau) (..., V) float64; straight-through: one-hot(argmax) forward, z's gradient."""
    z = torch.softmax((log_q + gumbel) / tau, dim=-1)
    if not straight_through:
        return z
    hard = F.one_hot(z.argmax(-1), z.shape[-1]).to(z.dtype)
    return hard + (z - z.detach())


def kl_exact_step(log_p: Tensor, log_ref: Tensor, masked: Tensor, psi: Tensor) -> Tensor:
    """sum_l masked_l psi KL(p || p_ref)_l -> (B,); log_p, log_ref (B, L, V) SUBS log-probs, masked (B, L)."""
    p = log_p.exp()
    # 0 log 0 = 0 (the mask column); the difference is zeroed before the product, or its -inf - -inf = NaN
    # would reach the gradient through p
    kl = (p * torch.where(p > 0, log_p - log_ref, 0.0)).sum(-1)
    return (masked * psi.to(kl.dtype) * kl).sum(-1)


def subs_carry_probs(log_p: Tensor, x: Tensor, mask_id: int) -> Tensor:
    """DRAKES' SUBS on a (soft) state x (B, L, V): p(.|x) at positions whose argmax is the mask, the one-hot of
    the argmax token elsewhere (``_subs_parameterization``)."""
    top = x.argmax(-1)
    return torch.where((top == mask_id)[..., None], log_p.exp(), F.one_hot(top, x.shape[-1]).to(log_p.dtype))


def kl_public_step(log_p: Tensor, log_ref: Tensor, x: Tensor, move_chance: Tensor, mask_id: int) -> Tensor:
    """The public DRAKES DNA estimator of step i (module docstring) -> (B,); x (B, L, V) the state."""
    p_new, p_old = subs_carry_probs(log_p, x, mask_id), subs_carry_probs(log_ref, x, mask_id)
    tiny = torch.finfo(p_new.dtype).tiny
    bracket = p_old - p_new + p_new * (torch.log(p_new.clamp(min=tiny)) - torch.log(p_old.clamp(min=tiny)))
    copy_flag = 1.0 - x[..., mask_id]
    letters = x.index_fill(-1, torch.tensor([mask_id], device=x.device), 0.0)
    return (letters * bracket).sum(-1).mul(copy_flag).sum(-1) / move_chance.to(bracket.dtype)


class RelaxedRollout:
    """``rollout(model, reference, start, generator=)`` -> RolloutOutput (module docstring).

    ``timesteps`` (N + 1,) float64 grid (``AncestralSampler``'s, from ``num_steps`` when None); ``schedule``
    the noise schedule the denoiser was trained with; ``truncate_steps`` K in [0, N]; ``gumbel_temp`` tau > 0.
    """

    def __init__(self, *, num_steps: int, truncate_steps: int, gumbel_temp: float, schedule: NoiseSchedule,
                 timesteps: Tensor | None = None, straight_through: bool = False, truncate_kl: bool = False,
                 checkpoint_steps: bool = False, kl_grad: bool = True) -> None:
        self.sampler = AncestralSampler(num_steps=num_steps, timesteps=timesteps, schedule=schedule)
        self.num_steps = self.sampler.num_steps
        self.truncate_steps, self.gumbel_temp = truncate_steps, float(gumbel_temp)
        self.straight_through, self.truncate_kl = straight_through, truncate_kl
        self.checkpoint_steps = checkpoint_steps
        self.kl_grad = kl_grad  # False: the hard steps' KL is a metric only (alpha = 0), computed without a graph
        self.schedule = schedule
        self.step = DenoiseStep(TokenSampling())  # SUBS log-probs at temperature 1, float64 Gumbel draws

    def psi(self, i: int, grid: Tensor) -> Tensor:
        return self.sampler.step_psi(i, grid[i], grid[i + 1])

    def log_probs(self, model: Denoiser, x: Tensor, t: Tensor) -> Tensor:
        """SUBS log p(x0 | x) (B, L, V) float32 of ids (B, L) or probabilities (B, L, V)."""
        return self.step.tokens.log_probs(self.step.logits(model, x, t), model.mask_id)

    def hard_prefix(self, model: Denoiser, x: Tensor, generator: torch.Generator | None) -> list[Tensor]:
        """Steps 0 .. N-K-1 of ``AncestralSampler`` (row caching, same random numbers) on x in place; returns
        the canvases before each step."""
        grid, b, states = self.sampler.grid(x.device), x.shape[0], []
        for i in range(self.num_steps - self.truncate_steps):
            states.append(x.clone())
            masked = x == model.mask_id
            revealed = masked & (uniform(x.shape, generator, device=x.device) < self.psi(i, grid))
            rows = revealed.any(-1)
            if rows.any():
                self.sampler.reveal(model, x, grid[i].expand(b), rows, revealed, generator, step=i, trajectory=None,
                                    counts={})
        return states

    def kl_terms(self, log_p: Tensor, log_ref: Tensor, x: Tensor, t: Tensor, psi: Tensor,
                 mask_id: int) -> tuple[Tensor, Tensor]:
        """(exact, public) KL of one step on the state x (B, L, V) from both models' SUBS log-probs -> (B,), (B,)."""
        move = 1.0 - self.schedule.alpha(t[:1]).squeeze(0)
        return (kl_exact_step(log_p, log_ref, x[..., mask_id], psi),
                kl_public_step(log_p, log_ref, x, move, mask_id))

    def relaxed_step(self, model: Denoiser, x: Tensor, log_ref: Tensor, gumbel: Tensor, t: Tensor,
                     psi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One relaxed step from x (B, L, V): (x', exact KL (B,), public KL (B,)). Pure given its inputs, so it
        can be recomputed by gradient checkpointing."""
        mask_id = model.mask_id
        log_p = self.log_probs(model, x, t)
        z = gumbel_softmax(transition_log_probs(log_p, psi, mask_id), gumbel, self.gumbel_temp,
                           straight_through=self.straight_through).to(x.dtype)
        e_mask = F.one_hot(torch.tensor(mask_id, device=x.device), x.shape[-1])
        x_next = x + x[..., mask_id:mask_id + 1] * (z - e_mask)  # only the masked mass moves
        exact, public = self.kl_terms(log_p, log_ref, x, t, psi, mask_id)  # on the state the step leaves
        return x_next, exact, public

    def hard_kl(self, model: Denoiser, tokens: Tensor, log_ref: Tensor, t: Tensor, psi: Tensor) -> tuple[Tensor, Tensor]:
        """(exact, public) KL of a hard step from the canvas ``tokens`` (B, L), the fine-tuned model re-evaluated."""
        onehot = F.one_hot(tokens, model.vocab_size).float()
        return self.kl_terms(self.log_probs(model, tokens, t), log_ref, onehot, t, psi, model.mask_id)

    def _maybe_checkpoint(self, fn, *args):
        if self.checkpoint_steps and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def __call__(self, model: Denoiser, reference: Denoiser, start: Tensor, *,
                 generator: torch.Generator | None = None) -> RolloutOutput:
        """Roll out from ``start`` (B, L) ids (masks to generate, the prompt clean)."""
        x, b, mask_id = start.clone(), start.shape[0], model.mask_id
        grid = self.sampler.grid(x.device)
        with torch.no_grad():
            hard_states = self.hard_prefix(model, x, generator)
        exact_steps, public_steps = [], []
        if not self.truncate_kl:
            for i, state in enumerate(hard_states):
                t, psi = grid[i].expand(b), self.psi(i, grid)
                with torch.no_grad():
                    log_ref = self.log_probs(reference, state, t)
                with torch.set_grad_enabled(self.kl_grad and torch.is_grad_enabled()):
                    exact, public = self._maybe_checkpoint(
                        lambda s, lr, t=t, psi=psi: self.hard_kl(model, s, lr, t, psi), state, log_ref)
                exact_steps.append(exact)
                public_steps.append(public)
        soft = F.one_hot(x, model.vocab_size).float()
        states = [soft.detach()]
        for i in range(self.num_steps - self.truncate_steps, self.num_steps):
            t, psi = grid[i].expand(b), self.psi(i, grid)
            with torch.no_grad():  # the frozen model: no graph, whatever the caller's mode
                log_ref = self.log_probs(reference, soft.detach(), t)
            gumbel = gumbel_noise(soft.shape, generator, soft.device)  # outside the checkpoint: replayed as is
            soft, exact, public = self._maybe_checkpoint(
                lambda s, lr, g, t=t, psi=psi: self.relaxed_step(model, s, lr, g, t, psi),
                soft, log_ref, gumbel)
            states.append(soft.detach())
            exact_steps.append(exact)
            public_steps.append(public)
        # straight-through x0: exactly one-hot forward (soft - soft.detach() is exactly 0), the soft gradient
        tokens = soft.detach().index_fill(-1, torch.tensor([mask_id], device=x.device), float("-inf")).argmax(-1)
        x0 = F.one_hot(tokens, model.vocab_size).to(soft.dtype) + (soft - soft.detach())
        zero = soft.new_zeros(b)
        kl_exact = torch.stack(exact_steps).sum(0) if exact_steps else zero
        kl_public = torch.stack(public_steps).sum(0) if public_steps else zero
        detach = lambda terms: torch.stack(terms).detach() if terms else soft.new_zeros(0, b)  # noqa: E731
        return RolloutOutput(x0=x0, tokens=tokens, kl_exact=kl_exact, kl_public=kl_public,
                             kl_steps_exact=detach(exact_steps), kl_steps_public=detach(public_steps),
                             states=states, hard_states=hard_states)
