"""REINFORCE for the block-size policy of a frozen block-diffusion denoiser (research note §4.3, a proposal).

One rollout = one call of a block sampler that asks ``policy.next_block_size`` before every block and
records ``info["block_sizes"]`` (K ints) and ``info["policy_features"]`` (K tuples (hidden (B, dim),
probe_entropy (B,))). With a_k the chosen sizes and s_k the batch-pooled states:

    R = mean_b [ reward_fn(tokens)_b ] − step_cost · nfe / generated tokens                 (P1)
    b ← μ b + (1 − μ) R      (running-mean baseline, updated after the loss uses it)         (P2)
    loss = −(R − b) · Σ_k log π(a_k | s_k)                                                  (P3)

The policy picks one size per batch (see ``dlm.models.block_policy``), so the batch-mean reward
is the return of that single trajectory. ``reward_fn`` defaults to the per-token log-likelihood of
the finished sequence under an autoregressive model (``ARLogLikelihood``): a fluency score that
large blocks (fewer steps per token, more parallel decoding errors) must trade against ``step_cost``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from dlm.nn.next_token import next_token_nll
from dlm.types import ArSoftmax, SampleOutput

RewardFn = Callable[[Tensor], Tensor]  # tokens (B, L) long -> reward (B,)
BlockSampler = Callable[..., SampleOutput]  # sampler(model, batch_size=, length=, prompt=, generator=)


class ARLogLikelihood:
    """reward(tokens (B, L)) = mean_{i ≥ 1} log p_AR(x_i | x_{<i}), (B,): per-token log-likelihood,
    normalised as the AR model was trained (``ar_softmax`` of its model directory's record)."""

    def __init__(self, model: nn.Module, *, ar_softmax: ArSoftmax = "without_mask") -> None:
        self.model, self.ar_softmax = model, ar_softmax

    @torch.no_grad()
    def __call__(self, tokens: Tensor) -> Tensor:
        logits = self.model(tokens, None)
        return -next_token_nll(logits, tokens, self.model.mask_id, self.ar_softmax).mean(-1)


def rollout_metrics(out: SampleOutput, reward_fn: RewardFn, *, step_cost: float, length: int,
                    prompt: Tensor | None = None) -> dict[str, float]:
    """Reward, NFE per generated token and the return R of (P1) for one finished sampler call."""
    sizes = out.info.get("block_sizes", [])
    prompt_len = 0 if prompt is None else prompt.shape[-1]
    nfe_per_token = out.nfe / max(length - prompt_len, 1)
    quality = float(reward_fn(out.tokens).float().mean())
    ret = quality - step_cost * nfe_per_token
    if not math.isfinite(ret):  # one inf reward would turn the baseline, hence every later update, into NaN
        raise ValueError(f"non-finite return {ret} (reward {quality}); check reward_fn on these tokens "
                         "(e.g. a mask token left in the sample scores -inf under an AR model)")
    return {"reward": quality, "return": ret, "nfe_per_token": nfe_per_token,
            "mean_block_size": sum(sizes) / max(len(sizes), 1), "num_blocks": float(len(sizes))}


class BlockPolicyTrainer:
    """``step()`` runs ``num_rollouts`` sampler calls, applies (P1)-(P3), takes one optimiser step.

    ``sampler`` must already hold ``policy`` (e.g. ``BlockSampler(block_size_policy=policy, ...)``); the
    denoiser ``model`` is frozen (only the policy's parameters are optimised). Exactly one of
    ``reward_fn`` / ``ar_model`` is given. ``baseline_momentum`` μ of (P2); the first rollout sets b.
    """

    def __init__(
        self,
        *,
        policy: nn.Module,
        sampler: BlockSampler,
        model: nn.Module,
        batch_size: int,
        length: int,
        reward_fn: RewardFn | None = None,
        ar_model: nn.Module | None = None,
        step_cost: float = 0.0,
        baseline_momentum: float = 0.9,
        num_rollouts: int = 1,
        prompt: Tensor | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        lr: float = 1e-2,
    ) -> None:
        if (reward_fn is None) == (ar_model is None):
            raise ValueError("BlockPolicyTrainer needs exactly one of reward_fn= and ar_model=")
        if not 0.0 <= baseline_momentum < 1.0:
            raise ValueError(f"baseline_momentum={baseline_momentum} must be in [0, 1)")
        if num_rollouts < 1:
            raise ValueError(f"num_rollouts={num_rollouts} must be >= 1")
        self.policy, self.sampler, self.model = policy, sampler, model
        self.batch_size, self.length, self.prompt = batch_size, length, prompt
        self.reward_fn = reward_fn if reward_fn is not None else ARLogLikelihood(ar_model)
        self.step_cost, self.momentum, self.num_rollouts = float(step_cost), baseline_momentum, num_rollouts
        self.optimizer = optimizer or torch.optim.Adam(policy.parameters(), lr=lr)
        self.baseline: float | None = None

    def rollout(self, generator: torch.Generator | None = None) -> tuple[float, Tensor, dict[str, float]]:
        """One sampler call -> (return R of (P1), Σ_k log π(a_k | s_k) with gradients, metrics)."""
        self.policy.train()  # sample actions (explore) while training
        out = self.sampler(self.model, batch_size=self.batch_size, length=self.length, prompt=self.prompt,
                           generator=generator)
        sizes, feats = out.info["block_sizes"], out.info["policy_features"]
        if len(sizes) != len(feats):
            raise ValueError(f"sampler recorded {len(sizes)} block sizes but {len(feats)} policy states; "
                             "it must record one (hidden, entropy) pair per policy decision")
        metrics = rollout_metrics(out, self.reward_fn, step_cost=self.step_cost, length=self.length, prompt=self.prompt)
        device = next(self.policy.parameters()).device
        states = torch.stack([self.policy.state(h.to(device), e.to(device)) for h, e in feats]) if feats else None
        log_pi = (self.policy.log_prob(states, self.policy.action_index(sizes).to(device)).sum()
                  if states is not None else torch.zeros((), device=device))
        return metrics["return"], log_pi, metrics

    def step(self, generator: torch.Generator | None = None) -> dict[str, float]:
        """One REINFORCE update; returns averaged rollout metrics plus ``loss`` and ``baseline``."""
        rollouts = [self.rollout(generator) for _ in range(self.num_rollouts)]
        if self.baseline is None:
            self.baseline = sum(r for r, _, _ in rollouts) / len(rollouts)
        b = self.baseline
        loss = -sum((r - b) * log_pi for r, log_pi, _ in rollouts) / len(rollouts)  # (P3)
        self.optimizer.zero_grad(set_to_none=True)
        if torch.is_tensor(loss) and loss.requires_grad:
            loss.backward()
            self.optimizer.step()
        for r, _, _ in rollouts:  # (P2), after use so the advantage does not see its own return
            self.baseline = self.momentum * self.baseline + (1.0 - self.momentum) * r
        metrics = {k: sum(m[k] for _, _, m in rollouts) / len(rollouts) for k in rollouts[0][2]}
        return {**metrics, "loss": float(loss.detach()) if torch.is_tensor(loss) else float(loss), "baseline": b}
