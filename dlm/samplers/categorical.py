"""Categorical sampling with Gumbel-max, float64 by default.

Why float64: with float32 uniforms u <= 1 - 2^-24 the Gumbel noise -log(-log u) is truncated at
~16.6, which lowers the effective temperature and, over many steps, biases which positions unmask
first (Zheng et al. 2024, §4.4 of the research notes). float64 pushes the truncation to ~36.7.
``sampling_precision="float32"`` reproduces the artifact on purpose and is named so nobody picks it by
accident.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Precision = Literal["float64", "float32"]


def filter_logits(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """Temperature, top-k and nucleus (top-p) filtering; logits (..., V) -> filtered logits."""
    if temperature <= 0:
        raise ValueError(f"sampler.temperature={temperature} must be > 0 (use top_k=1 for greedy)")
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def gumbel_argmax(logits: Tensor, *, generator: torch.Generator | None = None,
                  sampling_precision: Precision = "float64") -> Tensor:
    """One draw from softmax(logits) per row; logits (..., V) -> ids (...) long."""
    if sampling_precision == "float64":
        u = torch.rand(logits.shape, device=logits.device, dtype=torch.float64, generator=generator)
        # tiny floor keeps log finite; at float64 it is below the smallest nonzero rand output
        g = -torch.log(-torch.log(u.clamp(min=1e-300)))
        return (logits.double() + g).argmax(-1)
    if sampling_precision == "float32":
        # the reference codebases' exact rule: argmax(p / (1e-10 - log(u + 1e-10))) in float32
        u = torch.rand(logits.shape, device=logits.device, dtype=torch.float32, generator=generator)
        p = logits.float().softmax(-1)
        return (p / (1e-10 - torch.log(u + 1e-10))).argmax(-1)
    raise ValueError(f"sampler.sampling_precision={sampling_precision!r}; valid: 'float64', 'float32'")


class TokenSampling:
    """How a sampler draws a token from p_theta(x0 | xt): temperature, top-k, top-p, Gumbel precision.

    ``draw(logits)`` removes the mask column (SUBS: the denoiser never predicts [MASK]) before
    filtering; logits (N, V) -> ids (N,). temperature = 0 means greedy (argmax).
    """

    def __init__(self, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 sampling_precision: Precision = "float64") -> None:
        if temperature < 0:
            raise ValueError(f"sampler.temperature={temperature} must be >= 0 (0 = greedy)")
        if sampling_precision not in ("float64", "float32"):
            raise ValueError(f"sampler.sampling_precision={sampling_precision!r}; valid: 'float64', 'float32'")
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.sampling_precision = sampling_precision

    def log_probs(self, logits: Tensor, mask_id: int) -> Tensor:
        """Filtered, tempered log-probabilities over the real vocabulary (float32), (N, V)."""
        logits = logits.float().index_fill(-1, torch.tensor([mask_id], device=logits.device), float("-inf"))
        if self.temperature > 0:
            logits = filter_logits(logits, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return logits.log_softmax(-1)

    def draw(self, logits: Tensor, mask_id: int, generator: torch.Generator | None = None) -> Tensor:
        log_p = self.log_probs(logits, mask_id)
        if self.temperature == 0:
            return log_p.argmax(-1)
        return gumbel_argmax(log_p, generator=generator, sampling_precision=self.sampling_precision)
