"""One denoising call inside a block: draw candidates, score positions, choose what to commit; EOS bookkeeping.

Given the block's logits from p_theta(x0 | x^{<j}, x_t^j), every masked position gets a candidate
x̂0 drawn with ``TokenSampling`` (temperature / top-k / top-p, float64 Gumbel-max), optionally after a
guidance hook tilts the block's log-probabilities. Then either
  * a ``RevealPolicy`` commits positions ranked by ``position_confidence`` (SDAR's static /
    dynamic-threshold / entropy-bounded rules), or
  * first-hitting (BD3-LM, Zheng et al. 2024 Alg. 1): exactly one uniformly random masked position —
    the one whose hitting time comes next — reveals its candidate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dlm.samplers.categorical import TokenSampling, gumbel_argmax
from dlm.samplers.confidence import Order, position_confidence
from dlm.samplers.reveal import top_confidence


class BlockStep:
    """step(logits (B, Lb, V), context (B, P + Lb), block_start, masked (B, Lb), step, num_steps, mask_id,
    generator) -> (commit (B, Lb) bool, proposal (B, Lb) long); commit is a subset of ``masked`` with at
    least one position per row that has a mask."""

    def __init__(self, *, policy, order: Order, first_hitting: bool, tokens: TokenSampling, guidance=None) -> None:
        self.policy, self.order, self.first_hitting = policy, order, first_hitting
        self.tokens, self.guidance = tokens, guidance

    def __call__(self, logits: Tensor, context: Tensor, block_start: int, masked: Tensor, step: int,
                 num_steps: int, mask_id: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        b, lb, v = logits.shape
        log_p = self.tokens.log_probs(logits.reshape(b * lb, v), mask_id).view(b, lb, v)
        if self.guidance is not None:
            # the hook sees the undecided block as it stands; renormalise whatever it returns
            log_p = self.guidance(log_p, context.clone(), block_start, mask_id).log_softmax(-1)
        lp = log_p[masked]  # (N, V), row-major over masked positions
        # same draw as TokenSampling.draw, but from the (possibly guided) log-probs
        candidate = lp.argmax(-1) if self.tokens.temperature == 0 else \
            gumbel_argmax(lp, generator=generator, sampling_precision=self.tokens.sampling_precision)
        proposal = torch.full_like(masked, mask_id, dtype=torch.long)
        proposal[masked] = candidate
        if self.first_hitting:
            # uniform among masked positions: the largest of i.i.d. uniform scores
            score = torch.rand(masked.shape, device=masked.device, generator=generator)
            commit = top_confidence(score, masked, torch.ones(b, dtype=torch.long, device=masked.device))
        else:
            conf = torch.full(masked.shape, float("-inf"), device=masked.device)
            conf[masked] = position_confidence(lp, candidate, self.order, generator).float()
            commit = self.policy(conf, masked, step, num_steps) & masked
        return commit, proposal


def eos_lengths(x: Tensor, generated: Tensor, eos_id: int | None) -> Tensor:
    """(B,) tokens up to and including the first generated EOS; the full length when there is none."""
    length = x.shape[1]
    if eos_id is None:
        return torch.full((x.shape[0],), length, dtype=torch.long, device=x.device)
    is_eos = (x == eos_id) & generated
    first = is_eos.long().argmax(-1)
    return torch.where(is_eos.any(-1), first + 1, torch.full_like(first, length))
