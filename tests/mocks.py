"""Test doubles, in one place: mock denoisers with known outputs (oracle, uniform, a random deterministic
network, bigram AR, exact conditionals; block and causal variants), classifiers and a fake block sampler."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlm.io.record import Family
from dlm.types import DENOISER_ATTRIBUTES, SampleOutput


class MockDenoiser(nn.Module):
    """The denoiser contract (``dlm.types.Denoiser``) for mocks: declared attributes with the defaults of a
    time-free bidirectional model, and ``logits_at`` answered by gathering the full output."""

    time_conditioned = False
    attention = "bidirectional"
    block_size = None
    max_seq_len = None
    shift_logits = False

    def __call__(self, *args, logits_at: Tensor | None = None, **kwargs):
        out = super().__call__(*args, **kwargs)
        if logits_at is None:
            return out
        return out.gather(1, logits_at[..., None].expand(-1, -1, out.shape[-1]))


class OracleDenoiser(MockDenoiser):
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
        if xt.shape[0] == x0.shape[0] and bool(((xt == self.mask_id) | (xt == x0)).all()):
            target = x0
        else:  # a subset of rows, or repeated rows (particles, candidates): find each row's sequence by its
            # visible tokens
            agree = ((xt[:, None] == self.mask_id) | (xt[:, None] == x0[None])).all(-1)
            index = agree.float().argmax(-1)
            if xt.shape[0] == x0.shape[0]:  # a row no stored sequence agrees with (a proposal unrelated to the
                # canvas): its own row, by position
                index = torch.where(agree.any(-1), index, torch.arange(xt.shape[0], device=xt.device))
            target = x0[index]
        logits = torch.full((*xt.shape, self.vocab_size), -1e4)
        return logits.scatter(-1, target[..., None], 1e4)


class UniformDenoiser(MockDenoiser):
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


class RandomDenoiser(MockDenoiser):
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


class BigramAR(MockDenoiser):
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

    family = Family.MASKED  # the typed record the runner reads (dlm.io.record)
    shift_logits = False

    def __init__(self, objective, n: int) -> None:
        self.objective, self.n, self.calls = objective, n, 0

    def __call__(self, model, batch, generator=None):
        out = self.objective(model, batch, generator)
        if generator is None:  # training calls only; validation passes its own generator
            self.calls += 1
            if self.calls >= self.n:
                out.loss = out.loss * float("nan")
        return out


class ExactDenoiser(MockDenoiser):
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
        for name in DENOISER_ATTRIBUTES:
            setattr(self, name, getattr(inner, name))

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


class CachedContext(MockDenoiser):
    """Block-structured wrapper of a full-canvas mock: the "KV cache" holds the committed token ids.

    A store_cache call appends its tokens (as layer-0 keys (B, 1, n, 1)) and positions; every call
    evaluates ``inner`` on [cached tokens ; new tokens] (masks appended up to ``pad_to``) and returns
    the rows of the new tokens. So a sampler's cache bookkeeping (what it prefilled and committed,
    at which positions) decides what the inner model sees, exactly like a real KV cache.
    """

    attention = "block_causal"
    n_layers = 1

    def __init__(self, inner: nn.Module, block_size: int, pad_to: int | None = None) -> None:
        super().__init__()
        self.inner, self.block_size, self.pad_to = inner, block_size, pad_to
        self.vocab_size, self.mask_id = inner.vocab_size, inner.mask_id
        self.time_conditioned = inner.time_conditioned

    def forward(self, tokens: Tensor, t=None, *, positions=None, attn_mask=None,
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
        return out


# ---------------------------------------------------------------- block diffusion (BD3-LM / SDAR objective)
class BlockOracle(MockDenoiser):
    """Knows x0 (B, L): output j of [x_t ; x_0] (B, 2L) puts all mass on x0[j] (x0[j + 1] when ``shifted``)."""

    time_conditioned = False
    attention = "block_causal"

    def __init__(self, x0: Tensor, shifted: bool = False, *, vocab_size: int, mask_id: int) -> None:
        super().__init__()
        self.x0, self.shifted, self.mask_id, self.vocab_size = x0, shifted, mask_id, vocab_size
        self.calls: list[Tensor] = []

    def forward(self, inputs: Tensor, t: Tensor | None = None, **_) -> Tensor:
        self.calls.append(inputs)
        target = torch.cat([self.x0, self.x0], 1)
        if self.shifted:
            target = torch.roll(target, -1, dims=1)
        return torch.full((*inputs.shape, self.vocab_size), -1e4).scatter(-1, target[..., None], 1e4)


class Uniform(UniformDenoiser):
    """UniformDenoiser standing in for a block model; records every input it is called with."""

    attention = "block_causal"

    def __init__(self, k: int, vocab_size: int, mask_id: int) -> None:
        super().__init__(k, vocab_size, mask_id)
        self.calls: list[Tensor] = []

    def forward(self, inputs: Tensor, t: Tensor | None = None, **_) -> Tensor:
        self.calls.append(inputs)
        return super().forward(inputs, t)


# ---------------------------------------------------------------- autoregressive
class NextTokenOracle(MockDenoiser):
    """Causal oracle: output i puts all mass on x0[i + 1] (the last output on x0[-1]): AR loss exactly 0."""

    time_conditioned = False
    attention = "causal"

    def __init__(self, x0: Tensor, vocab_size: int, mask_id: int) -> None:
        super().__init__()
        self.register_buffer("x0", x0)
        self.vocab_size, self.mask_id = vocab_size, mask_id
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, t: Tensor | None = None, **_) -> Tensor:
        target = torch.cat([self.x0[:, 1: x.shape[1]], self.x0[:, x.shape[1] - 1: x.shape[1]]], 1)
        return torch.full((*x.shape, self.vocab_size), -1e4).scatter(-1, target[..., None], 1e4)


class CausalUniform(UniformDenoiser):
    """Uniform over the first K real tokens, declared causal (an AR model): every next token costs log K."""

    attention = "causal"


# ---------------------------------------------------------------- sequence classifiers (guidance)
class OracleClassifier(nn.Module):
    """Knows each row's label (B,): class logits (B, C) with all mass on it, whatever the input."""

    def __init__(self, labels: Tensor, n_classes: int, vocab_size: int, mask_id: int) -> None:
        super().__init__()
        self.register_buffer("labels", labels)
        self.n_classes, self.vocab_size, self.mask_id = n_classes, vocab_size, mask_id
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, tokens_or_probs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        logits = torch.full((tokens_or_probs.shape[0], self.n_classes), -1e4)
        return logits.scatter(-1, self.labels[:, None], 1e4)


class UniformClassifier(nn.Module):
    """p(y | x) = 1 / C for every input: cross-entropy exactly log C."""

    def __init__(self, n_classes: int, vocab_size: int, mask_id: int) -> None:
        super().__init__()
        self.n_classes, self.vocab_size, self.mask_id = n_classes, vocab_size, mask_id
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, tokens_or_probs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return torch.zeros(tokens_or_probs.shape[0], self.n_classes) + 0.0 * self.dummy


class LogLinearScore(nn.Module):
    """log p(y=0 | z) = Σ_ℓ W[ℓ, z_ℓ] exactly linear in the one-hot (class 1 gets the negated score)."""

    n_classes = 2
    max_seq_len = None

    def __init__(self, length: int, vocab_size: int, seed: int = 0) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.w = nn.Parameter(torch.randn(length, vocab_size, generator=torch.Generator().manual_seed(seed)))

    def log_prob(self, x: Tensor) -> Tensor:
        z = F.one_hot(x, self.vocab_size).float() if not x.is_floating_point() else x
        s = (z * self.w[: z.shape[1]]).sum((1, 2))
        return torch.stack([s, -s], -1)


class LogisticScore(LogLinearScore):
    """Two-class logistic regression on the one-hot: log p(y | z) = log_softmax([s, -s]), not linear in z."""

    def log_prob(self, x: Tensor) -> Tensor:
        return super().log_prob(x).log_softmax(-1)


class CountZeros(nn.Module):
    """p(y=1 | z) = sigmoid(4 (#zeros − 1.5)): class 1 = "at least two 0 tokens" (masks count as nothing)."""

    vocab_size, n_classes, max_seq_len = 4, 2, None

    def log_prob(self, x: Tensor) -> Tensor:
        z = F.one_hot(x, 4).float() if not x.is_floating_point() else x
        s = 4.0 * (z[..., 0].sum(-1) - 1.5)
        return torch.stack([F.logsigmoid(-s), F.logsigmoid(s)], -1)


# ---------------------------------------------------------------- block-size policy (CtrlDiff)
class FakeBlockSampler:
    """Fills the canvas block by block with the token id = chosen block size; ``steps_per_block`` nfe per block.

    Records ``info["block_sizes"]`` and ``info["policy_features"]`` exactly as the block sampler does.
    """

    def __init__(self, policy, steps_per_block: int = 2) -> None:
        self.policy, self.steps_per_block = policy, steps_per_block

    def __call__(self, model, *, batch_size, length, prompt=None, generator=None) -> SampleOutput:
        tokens = torch.zeros(batch_size, length, dtype=torch.long)
        sizes, feats, pos, nfe = [], [], 0, 0
        while pos < length:
            hidden = torch.randn(batch_size, self.policy.dim, generator=generator)
            entropy = torch.rand(batch_size, generator=generator)
            size = self.policy.next_block_size(hidden, entropy, generator=generator)
            sizes.append(size)
            feats.append((hidden, entropy))
            tokens[:, pos: pos + size] = size
            pos += size
            nfe += self.steps_per_block
        return SampleOutput(tokens=tokens, nfe=nfe, seconds=0.0,
                            info={"block_sizes": sizes, "policy_features": feats})


class TableEnergy(nn.Module):
    """An energy E(x0) (N,) from a table over whole sequences: x0 (N, L) with tokens < ``base`` indexes
    ``table`` (base^L,) by its base-``base`` digits (first position most significant). Counts its calls
    and the rows it scored. The EDLM contract (``dlm.models.energy.EnergyModel``): lower = more likely."""

    exact_normaliser = False

    def __init__(self, table: Tensor, *, base: int, vocab_size: int, mask_id: int, time_conditioned: bool = False,
                 sign: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("table", table.double())
        self.base, self.vocab_size, self.mask_id, self.time_conditioned = base, vocab_size, mask_id, time_conditioned
        self.sign, self.calls, self.rows = sign, 0, []

    def forward(self, x0: Tensor, xt: Tensor, t: Tensor, proposal_log_probs: Tensor) -> Tensor:
        self.calls += 1
        self.rows.append(x0.shape[0])
        assert int(x0.max()) < self.base, "the table energy scores tokens below its base only"
        powers = self.base ** torch.arange(x0.shape[1] - 1, -1, -1, device=x0.device)
        return self.sign * self.table[(x0 * powers).sum(-1)].float()


class PairEnergy(nn.Module):
    """A deterministic non-factorised energy on any vocabulary: E = sum_i a[i, x_i] + sum_i b[x_i, x_{i+1}]."""

    exact_normaliser = False
    time_conditioned = False

    def __init__(self, length: int, vocab_size: int, mask_id: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(length, vocab_size, generator=g)
        self.b = torch.randn(vocab_size, vocab_size, generator=g) * 2
        self.vocab_size, self.mask_id, self.calls = vocab_size, mask_id, 0

    def forward(self, x0: Tensor, xt: Tensor, t: Tensor, proposal_log_probs: Tensor) -> Tensor:
        self.calls += 1
        unary = self.a[torch.arange(x0.shape[1])[None], x0].sum(-1)
        return unary + self.b[x0[:, :-1], x0[:, 1:]].sum(-1)


# ---------------------------------------------------------------- rewards (sequence design)
class TableReward:
    """A reward over every sequence of ``alphabet``^L from a table, read as its multilinear extension:
    r(probs) = sum_x table[x] prod_l probs[l, x_l] (exact on one-hots, differentiable, any soft input).
    table: (K,)*L; probs (B, L, V) over the model vocabulary (letters first). ``calls`` counts batched calls."""

    differentiable = True

    def __init__(self, table: Tensor, alphabet: str = "abc") -> None:
        self.table, self.alphabet, self.length = table.double(), alphabet, table.dim()
        self.calls = 0

    def __call__(self, probs: Tensor) -> Tensor:
        self.calls += 1
        p = probs[..., : len(self.alphabet)].double()
        out = self.table[None].expand(p.shape[0], *self.table.shape)
        for pos in range(self.length):  # contract one position at a time: (B, K, ..., K) -> (B, K, ...)
            out = torch.einsum("bk...,bk->b...", out, p[:, pos])
        return out.float()


class LinearReward:
    """r(probs) = sum_l W[l] . probs[l, :K]: linear in the one-hot (first-order guidance is exact for it)."""

    differentiable = True

    def __init__(self, weights: Tensor, alphabet: str = "abc") -> None:
        self.w, self.alphabet, self.length = weights.float(), alphabet, weights.shape[0]

    def __call__(self, probs: Tensor) -> Tensor:
        return (probs[..., : len(self.alphabet)].float() * self.w[: probs.shape[1]]).sum((1, 2))


class ConstantReward:
    """The same reward for every sequence (SMC must then be the base sampler). Not differentiable on purpose."""

    differentiable = False
    length = None

    def __init__(self, value: float = 3.0, alphabet: str = "abc") -> None:
        self.value, self.alphabet = value, alphabet

    def __call__(self, probs: Tensor) -> Tensor:
        return torch.full((probs.shape[0],), self.value)
