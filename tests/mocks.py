"""Mock denoisers with known outputs: oracle, uniform, a random deterministic network, bigram AR."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class OracleDenoiser(nn.Module):
    """Puts all mass on the stored clean sequence x0 (B, L): the loss must be exactly 0."""

    time_conditioned = False
    attention = "bidirectional"

    def __init__(self, x0: Tensor, vocab_size: int, mask_id: int) -> None:
        super().__init__()
        self.register_buffer("x0", x0)
        self.vocab_size, self.mask_id = vocab_size, mask_id
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, xt: Tensor, t: Tensor | None = None, **_) -> Tensor:
        logits = torch.full((*xt.shape, self.vocab_size), -1e4)
        return logits.scatter(-1, self.x0[: xt.shape[0], :, None], 1e4)


class UniformDenoiser(nn.Module):
    """Uniform over the first K real tokens: NELBO = n log K per sequence."""

    time_conditioned = False
    attention = "bidirectional"

    def __init__(self, k: int, vocab_size: int, mask_id: int) -> None:
        super().__init__()
        self.k, self.vocab_size, self.mask_id = k, vocab_size, mask_id
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, xt: Tensor, t: Tensor | None = None, **_) -> Tensor:
        logits = torch.full((*xt.shape, self.vocab_size), float("-inf"))
        logits[..., : self.k] = 0.0
        return logits


class RandomDenoiser(nn.Module):
    """A fixed random function of the whole input (B, L) -> logits (B, L, V); bidirectional.

    Its conditionals are arbitrary (not those of one joint), which is what a trained network
    gives, so identities that must hold for *any* denoiser are tested against it.
    """

    attention = "bidirectional"

    def __init__(self, length: int, vocab_size: int, mask_id: int, *, hidden: int = 32, seed: int = 0,
                 time_conditioned: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vocab_size, self.mask_id, self.length = vocab_size, mask_id, length
        self.time_conditioned = time_conditioned
        self.w1 = nn.Parameter(torch.randn(length * vocab_size + 1, hidden, generator=g))
        self.w2 = nn.Parameter(torch.randn(hidden, length * vocab_size, generator=g) * 0.5)

    def forward(self, xt: Tensor, t: Tensor | None = None, **_) -> Tensor:
        b = xt.shape[0]
        h = nn.functional.one_hot(xt, self.vocab_size).float().reshape(b, -1)
        tt = t.reshape(b, 1).float() if (self.time_conditioned and t is not None) else torch.zeros(b, 1)
        h = torch.tanh(torch.cat([h, tt], -1) @ self.w1)
        return (h @ self.w2).reshape(b, self.length, self.vocab_size)


class BigramAR(nn.Module):
    """Causal mock: logits at position i depend on x_i only (a bigram table)."""

    time_conditioned = False
    attention = "causal"

    def __init__(self, vocab_size: int, mask_id: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vocab_size, self.mask_id = vocab_size, mask_id
        self.table = nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g))

    def forward(self, x: Tensor, t: Tensor | None = None, **_) -> Tensor:
        return self.table[x]


class NaNAfter:
    """Objective wrapper whose loss turns NaN from call ``n`` on (tests the NaN guard)."""

    model_kind = "diffusion"

    def __init__(self, objective, n: int) -> None:
        self.objective, self.n, self.calls = objective, n, 0

    def __call__(self, model, batch, generator=None):
        out = self.objective(model, batch, generator)
        if generator is None:  # training calls only; validation passes its own generator
            self.calls += 1
            if self.calls >= self.n:
                out.loss = out.loss * float("nan")
        return out
