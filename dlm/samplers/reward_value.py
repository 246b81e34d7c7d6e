"""The value of a partial canvas for inference-time design (SVDD, SMC / FK steering): r of the denoiser's x̂0.

The soft value of a state is v(x_s) = α log E_{p_θ}[exp(r(x0)/α) | x_s] (SVDD, Li et al. 2024; research note §3.1);
the training-free estimate ("posterior mean", SVDD-PM) replaces the expectation by the reward of one
x̂0 built from p_θ(x0 | x_s) (unmasked positions keep their tokens):

  ``argmax``  x̂0 = the per-position argmax (SVDD's code and DRAKES' SMC baseline); deterministic;
  ``sample``  x̂0 ~ p_θ(x0 | x_s): then exp(r(x̂0)/α) is an unbiased estimate of exp(v(x_s)/α), so SVDD's
              selection is a consistent importance sampler (M → ∞ gives the tilted step exactly);
  ``mean``    the soft posterior mean E[onehot(x0) | x_s] itself fed to the reward (a reward that reads
              soft probabilities, e.g. linear in the one-hot: then r(mean) = E[r]).

Rewards read (N, L, V) probabilities over the model vocabulary and return (N,); values are returned
in float64 (they enter log-weights, where a float32 difference of two large rewards loses digits).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlm.errors import ConfigError
from dlm.rewards.finite import check_finite_reward
from dlm.rewards.protocol import RewardModel
from dlm.samplers.importance import inverse_cdf
from dlm.types import SampleOutput

ValueEstimate = Literal["argmax", "sample", "mean"]
VALUE_ESTIMATES = ("argmax", "sample", "mean")


def check_value_estimate(value: str, key: str = "sampler.value") -> None:
    if value not in VALUE_ESTIMATES:
        raise ConfigError(f"{key}={value!r}; valid: {', '.join(VALUE_ESTIMATES)}")


def x0_estimate(log_p: Tensor, xs: Tensor, mask_id: int, how: ValueEstimate, u: Tensor | None = None) -> Tensor:
    """x̂0 as probabilities (N, L, V) from log p_θ(x0 | x_s) (N, L, V) and the canvas x_s (N, L).

    Unmasked positions are exact one-hots of x_s; masked ones follow ``how`` (module docstring).
    ``u`` (N, L) uniforms in [0, 1): needed by ``sample`` only (inverse-CDF draws in float64)."""
    masked = xs == mask_id
    onehot = F.one_hot(xs, log_p.shape[-1]).to(torch.float32)
    if how == "mean":
        return torch.where(masked[..., None], log_p.float().exp(), onehot)
    if how == "argmax":
        draws = log_p.argmax(-1)
    elif how == "sample":
        if u is None:
            raise ValueError("x0_estimate(how='sample') needs uniforms u (N, L)")
        draws = xs.clone()
        draws[masked] = inverse_cdf(log_p[masked], u[masked][:, None])[:, 0]
    else:
        raise ConfigError(f"sampler.value={how!r}; valid: {', '.join(VALUE_ESTIMATES)}")
    return F.one_hot(torch.where(masked, draws, xs), log_p.shape[-1]).to(torch.float32)


def score(reward: RewardModel, probs: Tensor, *, where: str) -> Tensor:
    """reward(probs (N, L, V)) -> (N,) float64; a NaN or infinite reward stops the job (``NonFiniteError``
    naming the rows): it would poison every weight it enters."""
    return check_finite_reward(reward(probs).double(), reward=f"the reward ({where})")


def place_reward(reward: RewardModel, device: torch.device) -> None:
    """A reward that is a network follows the denoiser's device (rewards load on the CPU)."""
    if isinstance(reward, nn.Module):
        reward.to(device)


def check_reward_length(reward: RewardModel, length: int) -> None:
    if reward.length is not None and reward.length != length:
        raise ConfigError(f"the reward scores sequences of length {reward.length} but the sampler generates length "
                          f"{length}; set length={reward.length}")


def fold_value_calls(out: SampleOutput) -> SampleOutput:
    """Denoiser calls spent on values are network evaluations too: move ``aux_calls["denoiser"]`` into ``nfe``."""
    out.nfe += out.aux_calls.pop("denoiser", 0)
    return out
