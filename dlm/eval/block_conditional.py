"""Score of a continuation given a context under a block-diffusion model: the block NELBO of the continuation.

A block model factorises p(x) = prod_b p(x^b | x^{<b}) over blocks of ``block_size`` positions counted from
the row's first token (the last block may be short, as in ``BlockSampler``'s canvas), each factor bounded
by a masked-diffusion NELBO (BD3-LM Eq. 6). For a ``Span`` row (context, then continuation c) the context
is never masked nor scored: with B_c the blocks holding continuation tokens, C_b = b's continuation tokens
and n_b = |C_b|,

    -log p(c | ctx) <= sum_{b in B_c} sum_{k=1}^{n_b} (1/k) E_{|M|=k, M in C_b}[ sum_{i in M}
                                                        -log p(c^i | x^b_{-M}, x^{<b}) ],

each block's context tokens (a block straddling the boundary) held clean beside the clean earlier blocks.
It is ``dlm.eval.block_perplexity.block_nelbo_per_sequence`` with ``targets`` = the continuation: per block
k_b ~ U{1..n_b} stratified over the samples, weight n_b / k_b (a time-conditioned model: the t form, one t
per block over [t_min, 1)). With a one-token context and a row of whole blocks the draws are dlm-eval-ppl's
for a ``keep_first_token`` row (same generator: same draws, same numbers up to float rounding, as the output
head runs at every token here); with block size 1 the bound has no variance and is the exact left-to-right
NLL. The model's own ``block_size`` and ``shift_logits`` are used (as dlm-eval-ppl's ``BlockNELBO``).
``is_greedy``: greedy block decoding (``BlockSampler(order="max_prob", temperature=0)``: block by block,
one token per call, the most probable token at the most confident masked position) reproduces c.
Seeding and batching as in ``dlm.eval.conditional``: each span's draws from a CPU generator seeded by its
``seed``; rows batched only with rows of the same length. Shapes: a span's row (L,) = context + continuation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dlm.diffusion.schedule import LogLinearSchedule
from dlm.errors import ConfigError
from dlm.eval.block_perplexity import BlockDraw, block_draw_nll, block_nelbo_draws
from dlm.eval.conditional import Draws, Span, SpanScore, monte_carlo_span_scores
from dlm.eval.strata import Method
from dlm.nn.block_mask import block_ids_fixed, segment_ids
from dlm.samplers.block import BlockSampler
from dlm.types import Denoiser, NoiseSchedule, Sampler


def span_layout(length: int, block_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """(positions, block_ids, doc_ids), each (1, length) long, of one row holding one document: blocks of
    ``block_size`` from position 0, the last one possibly short (``block_layout`` for rows of any length)."""
    positions = torch.arange(length)[None]
    return positions, block_ids_fixed(positions, block_size), torch.zeros_like(positions)


def block_conditional_draws(span: Span, *, block_size: int, mask_id: int, num_samples: int, method: Method,
                            time_conditioned: bool, schedule: NoiseSchedule, t_min: float) -> Draws:
    """The ``num_samples`` corrupted copies of one span, drawn from a CPU generator seeded with ``span.seed``:
    (xt (S, L), masked (S, L) bool, weight (S, L), t (S, L) or None), in ``block_nelbo_draws``' order for a
    one-row batch whose targets are the continuation."""
    generator = torch.Generator().manual_seed(span.seed)
    x0 = torch.tensor([span.ids], dtype=torch.long)  # (1, L)
    _, block_ids, doc_ids = span_layout(x0.shape[1], block_size)
    targets = torch.zeros_like(x0, dtype=torch.bool)
    targets[:, len(span.context):] = True
    draws = list(block_nelbo_draws(x0, segment_ids(block_ids, doc_ids), targets, mask_id=mask_id,
                                   time_conditioned=time_conditioned, num_samples=num_samples, method=method,
                                   schedule=schedule, t_min=t_min, generator=generator))
    return (torch.cat([d.xt for d in draws]), torch.cat([d.masked for d in draws]),
            torch.cat([d.weight for d in draws]), torch.cat([d.t for d in draws]) if time_conditioned else None)


def greedy_block_decoder(n: int) -> Sampler:
    """Greedy block decoding of n tokens after a prompt (the model's block size; block by block, one token per
    call: the most probable token at the most confident masked position)."""
    return BlockSampler(order="max_prob", temperature=0.0)


@torch.no_grad()
def block_span_scores(model: Denoiser, spans: Sequence[Span], *, num_samples: int = 32, method: Method = "mc",
                      schedule: NoiseSchedule | None = None, t_min: float = 1e-3, batch_size: int = 8,
                      greedy: bool = True) -> list[SpanScore]:
    """The block conditional NELBO (module docstring) of every span under a block model (``model.block_size``,
    ``model.shift_logits``), ``num_samples`` stratified draws each; ``batch_size`` rows (one draw of one
    span each) per [x_t ; x_0] pass. ``greedy``: also run greedy block decoding for ``is_greedy``."""
    if model.block_size is None:
        raise ConfigError(f"block_span_scores needs a block-diffusion model (model.attention='block_causal' with a "
                          f"block_size); got attention={model.attention!r}: score it with masked_span_scores")
    if model.shift_logits and any(s.continuation and not s.context for s in spans):
        raise ConfigError("this model reads token i from output i - 1 (shift_logits), so a continuation needs at "
                          "least one context token (e.g. BOS)")
    schedule = schedule or LogLinearSchedule()
    block_size = int(model.block_size)

    def draw(span: Span) -> Draws:
        return block_conditional_draws(span, block_size=block_size, mask_id=model.mask_id, num_samples=num_samples,
                                       method=method, time_conditioned=model.time_conditioned, schedule=schedule,
                                       t_min=t_min)

    def draw_nll(x0: Tensor, draws: Draws) -> Tensor:
        xt, masked, weight, t = draws
        positions, block_ids, doc_ids = (a.expand(x0.shape[0], -1).to(x0.device)
                                         for a in span_layout(x0.shape[1], block_size))
        # the head at every token, as a masked model's full forward: a row's bits do not depend on its batch
        return block_draw_nll(model, BlockDraw(xt, masked, t, weight), x0, positions=positions, block_ids=block_ids,
                              doc_ids=doc_ids, shift_logits=model.shift_logits, head_at=torch.ones_like(masked))

    return monte_carlo_span_scores(model, spans, draw=draw, draw_nll=draw_nll, num_samples=num_samples,
                                   batch_size=batch_size, greedy=greedy_block_decoder if greedy else None)
