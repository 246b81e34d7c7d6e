"""Best-of-N: draw N samples per output row from a base sampler, keep the one of highest reward.

    x^(1..N) ~ p_base,   x = x^(j*),  j* = argmax_j r(x^(j))   (ties: the first)

The simplest inference-time design baseline (SVDD / DRAKES compare against it). Its law is the
max-of-N order statistic of r under p_base, not p exp(r/α)/Z: it has no temperature and, as N grows,
concentrates on the best sequences p_base reaches. The base sampler runs once on B·N rows (row b·N + j
is candidate j of output row b; a prompt is repeated N times), then one batched reward call scores them.
N = 1 is the base sampler bit for bit. ``nfe`` is the base sampler's; ``aux_calls["reward"]`` = 1 (plus
the base's auxiliary calls); ``info["rewards"]`` (B, N) holds every candidate's reward and
``info["best_index"]`` (B,) the kept one. Shapes: B output rows, N candidates, L length, V vocabulary.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.errors import ConfigError
from dlm.rewards.protocol import RewardModel
from dlm.samplers.canvas import model_device
from dlm.samplers.reward_value import check_reward_length, place_reward, score
from dlm.samplers.row_generators import Generator, RowGenerators
from dlm.types import Denoiser, SampleOutput, Sampler


class BestOfNSampler:
    """Sampler(model, batch_size=, length=, prompt=, generator=) -> SampleOutput (module docstring).
    ``base``: any sampler of the model; ``reward``: a ``dlm.rewards.RewardModel``; ``num_candidates`` N >= 1."""

    def __init__(self, *, base: Sampler, reward: RewardModel, num_candidates: int = 8) -> None:
        if int(num_candidates) != num_candidates or num_candidates < 1:
            raise ConfigError(f"sampler.num_candidates={num_candidates} must be an integer >= 1 (1 = the base sampler)")
        self.base, self.reward, self.num_candidates = base, reward, int(num_candidates)
        self.extends_context = base.extends_context

    def check_model(self, model: Denoiser) -> None:
        self.base.check_model(model)

    def __call__(self, model: Denoiser, *, batch_size: int, length: int, prompt: Tensor | None = None,
                 generator: Generator = None) -> SampleOutput:
        n = self.num_candidates
        if n == 1:
            return self.base(model, batch_size=batch_size, length=length, prompt=prompt, generator=generator)
        if isinstance(generator, RowGenerators) and len(generator) != batch_size * n:
            raise ConfigError(f"sampler=best_of_n runs {batch_size * n} base rows (batch_size x num_candidates): pass "
                              "one torch.Generator or that many RowGenerators")
        check_reward_length(self.reward, length)
        self.check_model(model)
        start = time.perf_counter()
        place_reward(self.reward, model_device(model))
        if prompt is not None and prompt.dim() == 2:
            prompt = prompt.repeat_interleave(n, 0)
        out = self.base(model, batch_size=batch_size * n, length=length, prompt=prompt, generator=generator)
        rewards = score(self.reward, F.one_hot(out.tokens, model.vocab_size).float(),
                        where="best-of-N candidates").view(batch_size, n)
        best = rewards.argmax(-1)  # (B,): the first of tied maxima
        pick = torch.arange(batch_size, device=best.device) * n + best
        info = {key: value[pick] for key, value in out.info.items() if key in ("row_nfe", "reveal_times")}
        info |= {"rewards": rewards, "best_index": best, "candidates": out.tokens.view(batch_size, n, length)}
        aux = dict(out.aux_calls)
        aux["reward"] = aux.get("reward", 0) + 1
        return SampleOutput(tokens=out.tokens[pick], nfe=out.nfe, seconds=time.perf_counter() - start,
                            trajectory=None if out.trajectory is None else [c[pick] for c in out.trajectory],
                            info=info, aux_calls=aux)
