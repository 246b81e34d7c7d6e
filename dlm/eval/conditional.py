"""Scores of a continuation given a context: exact for AR models, the conditional NELBO bound for masked diffusion.

A ``Span`` is one scored row: ``context`` ids (C,) followed by ``continuation`` ids (n,), C + n <= the
model's context. Context tokens are never masked and never scored.

* AR (exact):  -log p(c | ctx) = sum_j -log p(c_j | ctx, c_<j), normalised as the model's ``ar_softmax``
  says (``dlm.objectives.ar.next_token_nll``); ``is_greedy``: every c_j is the argmax of its row.
* Masked diffusion (RADD Thm 2 / FHS Prop. 3.1 with the context held clean):
      -log p(c | ctx) <= sum_{k=1}^{n} (1/k) E_{|M|=k, M in cont}[ sum_{i in M} -log p(c^i | ctx, c_{-M}) ],
  estimated as n/k * sum_masked with k stratified over {1..n} (``dlm.eval.strata``); a time-conditioned
  denoiser uses the t form (t stratified over [t_min, 1), weight -alpha'(t) / (1 - alpha(t))). This is
  ``dlm.eval.perplexity.nelbo_per_sequence`` with the scored set restricted to the continuation: with a
  one-token context the draws are its draws for a ``keep_first_token`` row, one generator per row.
  ``is_greedy``: a greedy any-order decode (commit the most probable token at the most confident masked
  position, one per step: ``ConfidenceSampler(order="max_prob", temperature=0)``) reproduces c.

Block diffusion: ``dlm.eval.block_conditional`` (the block NELBO of the continuation), on the same Monte Carlo
skeleton (``monte_carlo_span_scores``: per-span draws, same-length batches, ``greedy_hits``).

Reproducibility: every span carries its own ``seed``; its Monte Carlo draws come from a CPU generator
seeded with it, in the same order whatever else is scored, so a span's number does not depend on the
batch it is scored in or on the device. Rows are batched only with rows of the same length (no
padding): a padded row's attention sums over more keys and rounds differently in the last bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dlm.diffusion.forward import mask_exactly_k, mask_tokens
from dlm.diffusion.posterior import masked_token_nll
from dlm.diffusion.schedule import LogLinearSchedule, nelbo_weight
from dlm.eval.strata import Method, stratified_uniforms
from dlm.nn.next_token import next_token_nll
from dlm.samplers.confidence import ConfidenceSampler
from dlm.types import ArSoftmax, Denoiser, NoiseSchedule, Sampler


@dataclass(frozen=True)
class Span:
    """One scored row: ``context`` (never masked, never scored) then ``continuation`` (scored); ``seed``
    seeds this span's own Monte Carlo draws."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]
    seed: int = 0

    @property
    def ids(self) -> tuple[int, ...]:
        return self.context + self.continuation


@dataclass(frozen=True)
class SpanScore:
    """nll: -log p(continuation | context) (exact) or its NELBO estimate; variance: the Monte Carlo variance
    of that estimate (0 when exact); tokens: continuation length; is_greedy: greedy decoding gives it."""

    nll: float
    variance: float
    tokens: int
    is_greedy: bool


def same_length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of ``lengths`` in batches of at most ``batch_size`` rows of one length each (longest first,
    then by index): no padding, so a row's logits are the same bits in any batch."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and lengths[batches[-1][0]] == lengths[i]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _device(model: Denoiser) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def ar_span_scores(model: Denoiser, spans: Sequence[Span], *, ar_softmax: ArSoftmax,
                   batch_size: int = 8) -> list[SpanScore]:
    """Exact -log p(continuation | context) of an AR model for every span (contexts of >= 1 token)."""
    out = [SpanScore(nll=0.0, variance=0.0, tokens=0, is_greedy=True)] * len(spans)  # empty continuations
    device = _device(model)
    scored = [i for i, s in enumerate(spans) if s.continuation]
    for batch in same_length_batches([len(spans[i].ids) for i in scored], batch_size):
        idx = [scored[j] for j in batch]
        x = torch.tensor([spans[i].ids for i in idx], dtype=torch.long, device=device)  # (B, L)
        logits = model(x, None)
        nll = next_token_nll(logits, x, model.mask_id, ar_softmax)  # (B, L-1): -log p(x_{j+1} | x_<=j)
        rows = logits[:, :-1].float()
        if ar_softmax == "without_mask":  # the argmax over the rows the distribution is defined on
            rows[..., model.mask_id] = float("-inf")
        hit = rows.argmax(-1) == x[:, 1:]  # (B, L-1)
        for b, i in enumerate(idx):
            n = len(spans[i].continuation)
            out[i] = SpanScore(nll=float(nll[b, -n:].double().sum()), variance=0.0, tokens=n,
                               is_greedy=bool(hit[b, -n:].all()))
    return out


def conditional_draws(span: Span, *, mask_id: int, num_samples: int, method: Method,
                      time_conditioned: bool, schedule: NoiseSchedule, t_min: float
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The ``num_samples`` corrupted copies of one span, drawn from a CPU generator seeded with ``span.seed``:
    (xt (S, L), masked (S, L) bool, weight (S,), t (S,) or None). The draw order is
    ``nelbo_per_sequence``'s for a one-row batch: per sample, the stratified u, then the mask."""
    generator = torch.Generator().manual_seed(span.seed)
    x0 = torch.tensor([span.ids], dtype=torch.long)  # (1, L)
    eligible = torch.zeros_like(x0, dtype=torch.bool)
    eligible[:, len(span.context):] = True
    n = eligible.sum(-1)
    xts, maskeds, weights, ts = [], [], [], []
    for s in range(num_samples):
        u = stratified_uniforms(1, s, num_samples, method, "cpu", generator)
        if time_conditioned:
            t = (t_min + (1.0 - t_min) * u).float()
            xt, masked = mask_tokens(x0, 1.0 - schedule.alpha(t), mask_id, eligible=eligible, generator=generator)
            weight = nelbo_weight(schedule, t)
            ts.append(t)
        else:
            k = torch.minimum((u * n.double()).floor().long() + 1, n.clamp(min=1))
            xt, masked = mask_exactly_k(x0, k, mask_id, eligible=eligible, generator=generator)
            weight = n.float() / k.float()
        xts.append(xt)
        maskeds.append(masked)
        weights.append(weight)
    return (torch.cat(xts), torch.cat(maskeds), torch.cat(weights).float(),
            torch.cat(ts) if time_conditioned else None)


Draws = tuple[Tensor | None, ...]  # one span's draws: tensors with a leading sample dimension (S, ...); None: absent
DrawNll = Callable[[Tensor, Draws], Tensor]  # x0 (B, L), a batch of draws (each field (B, ...)) -> estimates (B,)
GreedyDecoder = Callable[[int], Sampler]  # continuation length n -> a greedy decoder of n tokens after a prompt


@torch.no_grad()
def monte_carlo_span_scores(model: Denoiser, spans: Sequence[Span], *, draw: Callable[[Span], Draws],
                            draw_nll: DrawNll, num_samples: int, batch_size: int,
                            greedy: GreedyDecoder | None) -> list[SpanScore]:
    """The Monte Carlo score of every span: ``draw(span)`` gives its ``num_samples`` draws (from its own
    generator), ``draw_nll`` turns a batch of draws into one estimate each; rows (one draw of one span) are
    batched ``batch_size`` at a time with rows of the same length only. nll = mean of a span's estimates,
    variance = their variance of the mean. ``greedy``: the decoder behind ``is_greedy`` (``greedy_hits``;
    None: is_greedy is reported False, nothing is decoded). An empty continuation scores (0, 0, 0, True)."""
    device = _device(model)
    scored = [i for i, s in enumerate(spans) if s.continuation]  # an empty continuation has probability 1
    draws = {i: draw(spans[i]) for i in scored}
    rows = [(i, s) for i in scored for s in range(num_samples)]
    values = {i: torch.zeros(num_samples, dtype=torch.float64) for i in scored}
    for idx in same_length_batches([len(spans[i].ids) for i, _ in rows], batch_size):
        x0 = torch.tensor([spans[rows[r][0]].ids for r in idx], dtype=torch.long, device=device)  # (B, L)
        fields = tuple(None if field is None else
                       torch.stack([draws[rows[r][0]][f][rows[r][1]] for r in idx]).to(device)
                       for f, field in enumerate(draws[rows[idx[0]][0]]))
        nll = draw_nll(x0, fields).double().cpu()
        for b, r in enumerate(idx):
            values[rows[r][0]][rows[r][1]] = nll[b]
    hits = greedy_hits(model, spans, decoder=greedy, batch_size=batch_size) if greedy else [False] * len(spans)
    out = []
    for i, span in enumerate(spans):
        if i not in values:
            out.append(SpanScore(nll=0.0, variance=0.0, tokens=0, is_greedy=True))
            continue
        d = values[i]
        var_of_mean = float(d.var(unbiased=True)) / num_samples if num_samples > 1 else 0.0
        out.append(SpanScore(nll=float(d.mean()), variance=var_of_mean, tokens=len(span.continuation),
                             is_greedy=hits[i]))
    return out


def greedy_any_order(n: int) -> Sampler:
    """The greedy any-order decoder of n tokens: each step commits the most probable token at the most
    confident masked position (``ConfidenceSampler(order="max_prob", temperature=0)``, one token per step)."""
    return ConfidenceSampler(num_steps=n, order="max_prob", temperature=0.0)


@torch.no_grad()
def masked_span_scores(model: Denoiser, spans: Sequence[Span], *, num_samples: int = 32, method: Method = "mc",
                       schedule: NoiseSchedule | None = None, t_min: float = 1e-3, batch_size: int = 8,
                       greedy: bool = True) -> list[SpanScore]:
    """The conditional NELBO (module docstring) of every span, ``num_samples`` stratified draws each;
    ``batch_size`` model rows (one draw of one span each) per forward pass. ``greedy``: also run the greedy
    any-order decode for ``is_greedy`` (False: is_greedy is reported False, no decode is run)."""
    schedule = schedule or LogLinearSchedule()

    def draw(span: Span) -> Draws:
        return conditional_draws(span, mask_id=model.mask_id, num_samples=num_samples, method=method,
                                 time_conditioned=model.time_conditioned, schedule=schedule, t_min=t_min)

    def draw_nll(x0: Tensor, draws: Draws) -> Tensor:
        xt, masked, weight, t = draws
        return weight * masked_token_nll(model(xt, t), x0, masked, model.mask_id).sum(-1)

    return monte_carlo_span_scores(model, spans, draw=draw, draw_nll=draw_nll, num_samples=num_samples,
                                   batch_size=batch_size, greedy=greedy_any_order if greedy else None)


@torch.no_grad()
def greedy_hits(model: Denoiser, spans: Sequence[Span], *, decoder: GreedyDecoder, batch_size: int = 8) -> list[bool]:
    """Whether a greedy decode of each continuation (all masked behind its clean context; ``decoder(n)``, e.g.
    ``greedy_any_order``) reproduces it exactly. Spans are decoded in batches sharing (context length,
    continuation length), so no padding."""
    device = _device(model)
    keys = [(len(s.context), len(s.continuation)) for s in spans]
    hits = [True] * len(spans)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(keys):
        if key[1]:
            groups.setdefault(key, []).append(i)
    for (c, n), members in sorted(groups.items()):
        decode = decoder(n)
        for start in range(0, len(members), batch_size):
            idx = members[start:start + batch_size]
            prompt = torch.tensor([spans[i].context for i in idx], dtype=torch.long, device=device)  # (B, c)
            tokens = decode(model, batch_size=len(idx), length=c + n, prompt=prompt).tokens[:, c:].cpu()
            for b, i in enumerate(idx):
                hits[i] = tokens[b].tolist() == list(spans[i].continuation)
    return hits
