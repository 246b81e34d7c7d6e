"""House vocabulary: the result types and protocols every component speaks.

Shapes: B = batch, L = sequence length, V = vocabulary size including the mask token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

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
    ``trajectory`` (when a sampler is asked to record it): the canvas (B, L) after every step; then
    ``info["step_log_probs"]`` holds, per step, the log-probability (B, L) of each token committed
    at that step under the distribution it was drawn from (0 where nothing was committed).
    ``aux_calls``: forward calls of networks other than the denoiser, by name (EDLM: ``{"energy": n}``,
    one call per batched energy evaluation); ``seconds`` includes them.
    """

    tokens: Tensor
    nfe: int
    seconds: float
    trajectory: list[Tensor] | None = None
    info: dict = field(default_factory=dict)
    aux_calls: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class NoiseSchedule(Protocol):
    """t in [0, 1]; t = 1 is fully masked. ``alpha`` is the probability a token is still clean."""

    def alpha(self, t: Tensor) -> Tensor: ...

    def alpha_prime(self, t: Tensor) -> Tensor: ...

    def t_of_alpha(self, alpha: Tensor) -> Tensor: ...


Attention = Literal["bidirectional", "causal", "block_causal"]

# How an AR model's next-token distribution is normalised (model.json ``ar_softmax``, kind "ar" only):
#   "full"          softmax over every row of the output head, mask row included: a converted HF causal
#                   LM whose mask sits on one of its own rows (a spare row or a token), exactly as
#                   ``transformers`` normalises it;
#   "without_mask"  the mask column is removed before the softmax: dlm's AR objective trains this way
#                   (``dlm.objectives.ar``; scored by ``dlm.nn.next_token.next_token_nll``), and a HF model whose mask row dlm-convert appended has no
#                   such row, so its distribution is over the others.
# dlm-train and dlm-convert write it; exact perplexity and judges read it, so a model is always scored
# the way its distribution is defined.
ArSoftmax = Literal["full", "without_mask"]


@runtime_checkable
class AttentionCache(Protocol):
    """What a backbone reads and writes of a key/value cache (``dlm.cache.kv.KVCache`` today).

    ``length`` tokens are held at absolute RoPE ``positions`` (S,); ``extend`` returns the held keys /
    values of ``layer`` followed by this call's (B, H_kv, S + n, D) and keeps the new ones when
    ``store``; ``commit_positions`` records the positions of what was just stored.
    """

    @property
    def length(self) -> int: ...

    @property
    def positions(self) -> Tensor | None: ...

    def extend(self, layer: int, k: Tensor, v: Tensor, *, store: bool) -> tuple[Tensor, Tensor]: ...

    def commit_positions(self, positions: Tensor) -> None: ...


@runtime_checkable
class Denoiser(Protocol):
    """Any backbone a sampler or evaluator runs: transformer, CNN, converted HF model, test mock.

    Everything a sampler or evaluator reads is declared here, so nothing is sniffed:
      vocab_size, mask_id    V (mask token included) and the mask token's id;
      time_conditioned       forward needs t (MDLM); False for RADD's time-free network;
      attention              "bidirectional" (masked diffusion), "causal" (AR), "block_causal" (block diffusion);
      block_size             the diffusion block of a block_causal model, else None;
      max_seq_len            the context: the largest RoPE position + 1 the model accepts;
      shift_logits           token i is predicted at output i - 1 (Dream / Fast-dLLM v2 block models).

    ``__call__(tokens_or_probs, t, *, positions, attn_mask, logits_at, cache, store_cache, return_hidden)``:
    token ids (B, L) long or soft one-hot probabilities (B, L, V) float, time t (B,) or (B, L) (ignored
    when not time-conditioned); ``positions`` (L,) or (B, L) RoPE positions; ``attn_mask`` a boolean
    "may attend" mask broadcastable to (B, H, L, S) (padding: ``dlm.nn.attention.padding_mask_to_attn_mask``);
    ``logits_at`` (B, K) long: return logits (B, K, V) at those positions only; ``cache`` an
    ``AttentionCache`` whose tokens every query may see, extended when ``store_cache``;
    ``return_hidden``: the final hidden states (B, L, dim) instead of logits. Returns logits (B, L, V).
    """

    vocab_size: int
    mask_id: int
    time_conditioned: bool
    attention: Attention
    block_size: int | None
    max_seq_len: int | None
    shift_logits: bool

    def __call__(self, tokens_or_probs: Tensor, t: Tensor | None = None, *, positions: Tensor | None = None,
                 attn_mask: Tensor | None = None, logits_at: Tensor | None = None,
                 cache: AttentionCache | None = None, store_cache: bool = False,
                 return_hidden: bool = False) -> Tensor: ...


@runtime_checkable
class Shardable(Protocol):
    """A network that says how it is sharded (FSDP2, ``trainer=fsdp``): ``shard_units()`` lists the
    submodules that become one sharding unit each (a transformer's blocks), in forward order; the
    rest (embeddings, head) is sharded with the root. Taken from the model, not from a class list."""

    def shard_units(self) -> list: ...


DENOISER_ATTRIBUTES = ("vocab_size", "mask_id", "time_conditioned", "attention", "block_size", "max_seq_len",
                       "shift_logits")


class RevealPolicy(Protocol):
    """Which masked positions a confidence-ordered sampler commits at a step: confidence (B, L),
    masked (B, L) bool -> commit (B, L) bool. ``required_order``: the score it reads (None: any)."""

    required_order: str | None

    def __call__(self, confidence: Tensor, masked: Tensor, step: int, num_steps: int) -> Tensor: ...


class Objective(Protocol):
    def __call__(self, model: Denoiser, batch: dict[str, Tensor]) -> LossOutput: ...


class Sampler(Protocol):
    """Stateless between calls; owns its loop. ``check_model`` refuses, before any compute, a model the
    sampler cannot decode (wrong attention, shifted logits), naming the sampler that can.
    ``extends_context``: it generates sequences longer than the model's ``max_seq_len`` (strided)."""

    extends_context: bool

    def check_model(self, model: Denoiser) -> None: ...

    def __call__(
        self,
        model: Denoiser,
        *,
        batch_size: int,
        length: int,
        prompt: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> SampleOutput: ...
