"""House vocabulary: the result types and protocols every component speaks.

Shapes: B = batch, L = sequence length, V = vocabulary size including the mask token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass
class LossOutput:
    """Scalar training loss plus detached metrics for logging.

    ``loss`` is normalised per target token; ``nll_sum`` / ``num_tokens`` let evaluation
    aggregate exactly across batches (token-weighted, as in MDLM).
    """

    loss: Tensor
    nll_sum: Tensor
    num_tokens: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class SampleOutput:
    """Generated token ids (B, L), network calls spent, wall-clock seconds.

    ``nfe`` counts forward passes (a pass over a subset of rows counts once); ``info`` holds
    sampler diagnostics such as ``row_nfe`` (B,) network evaluations per row and
    ``reveal_times`` (B, L) the diffusion time at which each position was unmasked.
    """

    tokens: Tensor
    nfe: int
    seconds: float
    trajectory: list[Tensor] | None = None
    info: dict = field(default_factory=dict)


@runtime_checkable
class NoiseSchedule(Protocol):
    """t in [0, 1]; t = 1 is fully masked. ``alpha`` is the probability a token is still clean."""

    def alpha(self, t: Tensor) -> Tensor: ...

    def alpha_prime(self, t: Tensor) -> Tensor: ...

    def t_of_alpha(self, alpha: Tensor) -> Tensor: ...


class Denoiser(Protocol):
    """Any backbone: transformer, CNN, converted HF model, test mock.

    Called with token ids (B, L) or soft one-hot probabilities (B, L, V), optional time
    t (B,), returns logits (B, L, V).
    """

    vocab_size: int
    mask_id: int
    time_conditioned: bool

    def __call__(self, tokens_or_probs: Tensor, t: Tensor | None = None, **kwargs) -> Tensor: ...


class Objective(Protocol):
    def __call__(self, model: Denoiser, batch: dict[str, Tensor]) -> LossOutput: ...


class Sampler(Protocol):
    """Stateless between calls; owns its loop."""

    def __call__(
        self,
        model: Denoiser,
        *,
        batch_size: int,
        length: int,
        prompt: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> SampleOutput: ...
