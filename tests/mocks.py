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
        x0 = self.x0[:, : xt.shape[1]]  # windows of a strided sampler see a prefix-length canvas
        if xt.shape[0] == x0.shape[0]:
            target = x0
        else:  # a sampler evaluated a subset of rows: find each row's sequence by its visible tokens
            agree = ((xt[:, None] == self.mask_id) | (xt[:, None] == x0[None])).all(-1)
            target = x0[agree.float().argmax(-1)]
        logits = torch.full((*xt.shape, self.vocab_size), -1e4)
        return logits.scatter(-1, target[..., None], 1e4)


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
        b, n = xt.shape
        if n < self.length:  # shorter canvases (strided windows) are padded with masks
            xt = torch.cat([xt, torch.full((b, self.length - n), self.mask_id, dtype=xt.dtype)], 1)
        h = nn.functional.one_hot(xt, self.vocab_size).float().reshape(b, -1)
        tt = t.reshape(b, 1).float() if (self.time_conditioned and t is not None) else torch.zeros(b, 1)
        h = torch.tanh(torch.cat([h, tt], -1) @ self.w1)
        return (h @ self.w2).reshape(b, self.length, self.vocab_size)[:, :n]


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


class ExactDenoiser(nn.Module):
    """p(x0^i = v | visible tokens) computed by enumeration from a known joint over V^L sequences.

    joint: (V,)*L tensor of probabilities (real tokens 0..V-1; mask id = V). Every sampler driven by
    exact conditionals one token at a time must reproduce ``joint`` exactly.
    """

    time_conditioned = False
    attention = "bidirectional"

    def __init__(self, joint: Tensor) -> None:
        super().__init__()
        self.length, self.real = joint.dim(), joint.shape[0]
        self.vocab_size, self.mask_id = self.real + 1, self.real
        grid = torch.cartesian_prod(*[torch.arange(self.real)] * self.length).reshape(-1, self.length)
        self.register_buffer("seqs", grid)
        self.register_buffer("probs", joint.reshape(-1).double())
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, xt: Tensor, t: Tensor | None = None, **_) -> Tensor:
        visible = xt != self.mask_id  # (B, L)
        consistent = ((self.seqs[None] == xt[:, None]) | ~visible[:, None]).all(-1)  # (B, S)
        w = consistent.double() * self.probs[None]  # (B, S)
        onehot = nn.functional.one_hot(self.seqs, self.real).double()  # (S, L, V)
        cond = torch.einsum("bs,slv->blv", w, onehot)
        cond = cond / cond.sum(-1, keepdim=True)
        logits = torch.full((*xt.shape, self.vocab_size), -1e9, dtype=torch.float64)
        logits[..., : self.real] = torch.log(cond.clamp(min=1e-300))
        return logits.float()


class CountingModel(nn.Module):
    """Wraps a denoiser and counts forward calls (to check a sampler's reported nfe)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0
        for name in ("vocab_size", "mask_id", "time_conditioned", "attention"):
            setattr(self, name, getattr(inner, name))

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


class CachedContext(nn.Module):
    """Block-structured wrapper of a full-canvas mock: the "KV cache" holds the committed token ids.

    A store_cache call appends its tokens (as layer-0 keys (B, 1, n, 1)) and positions; every call
    evaluates ``inner`` on [cached tokens ; new tokens] (masks appended up to ``pad_to``) and returns
    the rows of the new tokens. So a sampler's cache bookkeeping (what it prefilled and committed,
    at which positions) decides what the inner model sees, exactly like a real KV cache.
    """

    attention = "block_causal"
    n_layers = 1
    computes_logits_at = True

    def __init__(self, inner: nn.Module, block_size: int, pad_to: int | None = None) -> None:
        super().__init__()
        self.inner, self.block_size, self.pad_to = inner, block_size, pad_to
        self.vocab_size, self.mask_id = inner.vocab_size, inner.mask_id
        self.time_conditioned = getattr(inner, "time_conditioned", False)

    def forward(self, tokens: Tensor, t=None, *, positions=None, attn_mask=None, logits_at=None,
                cache=None, store_cache: bool = False, return_hidden: bool = False, **_):
        past = cache.read(0) if cache is not None else None
        full = tokens if past is None else torch.cat([past[0][:, 0, :, 0].long(), tokens], 1)
        if cache is not None:
            expected = torch.arange(full.shape[1])[-tokens.shape[1]:]
            assert positions is None or torch.equal(positions.cpu(), expected), "positions must follow the cache"
        if cache is not None and store_cache:
            cache.append(0, tokens.float()[:, None, :, None], tokens.float()[:, None, :, None])
            cache.commit_positions(positions)
        n = full.shape[1]
        if self.pad_to is not None and n < self.pad_to:
            full = torch.cat([full, full.new_full((full.shape[0], self.pad_to - n), self.mask_id)], 1)
        out = self.inner(full, t)[:, n - tokens.shape[1]: n]
        if return_hidden:
            return nn.functional.one_hot(tokens, self.vocab_size).float()
        if logits_at is not None:
            out = out.gather(1, logits_at[..., None].expand(-1, -1, out.shape[-1]))
        return out
