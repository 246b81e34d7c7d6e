"""Perplexity: the NELBO upper bound for masked-diffusion models, the exact value for AR models.

For a time-free denoiser the bound is evaluated in its exact "number of masks" form (RADD Thm 2,
FHS Prop. 3.1):  -log p(x) <= NELBO = sum_{k=1}^{n} (1/k) E_{|M|=k}[ sum_{i in M} -log p(x^i | x_{-M}) ],
estimated as n/k * sum_masked with k stratified over {1..n} per sequence. Unlike MDLM's clipped-t
estimator this is unbiased for the full integral and has finite variance. A time-conditioned
denoiser uses the t form (t stratified over [t_min, 1)), as it needs t as an input.

A *scorer* is the per-sequence estimator of one family of models (``Scorer``: ``ExactNLL`` for AR,
``MaskedNELBO`` here, ``BlockNELBO`` in ``block_perplexity.py``); ``evaluate_perplexity`` runs any
of them over a data set, and ``dlm.eval.scorers`` picks one from a model directory's record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dlm.diffusion.forward import mask_exactly_k, mask_tokens
from dlm.diffusion.posterior import masked_token_nll
from dlm.diffusion.schedule import LogLinearSchedule, nelbo_weight
from dlm.errors import NonFiniteError
from dlm.eval.strata import Method, stratified_uniforms
from dlm.nn.attention import padding_mask_to_attn_mask
from dlm.nn.next_token import next_token_nll
from dlm.objectives.masked import target_positions
from dlm.types import ArSoftmax, Denoiser, NoiseSchedule

PerSequence = tuple[Tensor, Tensor | None, Tensor]  # nll (B,), its Monte Carlo variance (B,) or None, tokens (B,)


class Scorer(Protocol):
    """Per-sequence negative log-likelihood (or an upper bound of it) of one family of models.

    ``per_sequence(model, batch, generator)`` -> (nll (B,) float64, variance of that estimate (B,) or None
    when exact, scored tokens (B,)); ``summary()`` the JSON fields that say how (method, t_samples,
    estimator, ...) — every setting of the scorer that changes the number, so results are named by it;
    ``desc`` labels the progress bar; ``stochastic``: the estimate depends on random draws (the seed,
    the batch size and the device then change the number too).
    """

    desc: str
    stochastic: bool

    def per_sequence(self, model: Denoiser, batch: dict[str, Tensor],
                     generator: torch.Generator | None = None) -> PerSequence: ...

    def summary(self) -> dict: ...


def padding_attn_mask(batch: dict[str, Tensor]) -> Tensor | None:
    """The may-attend mask (B, 1, 1, L) of a batch's HF padding mask ``attention_mask`` (None: no padding)."""
    pad = batch.get("attention_mask")
    return None if pad is None else padding_mask_to_attn_mask(pad)


def nelbo_draw(model: Denoiser, x0: Tensor, eligible: Tensor, u: Tensor, *, schedule: NoiseSchedule,
               t_min: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """One stratified draw of the NELBO's corruption: (xt (B, L), masked (B, L), t (B,) or None, weight (B,)).

    ``u`` (B,) in [0, 1) from ``stratified_uniforms``. Time-conditioned model: t = t_min + (1 - t_min) u,
    each eligible token masked w.p. 1 - alpha(t), weight w(t) = -alpha'(t) / (1 - alpha(t)) (MDLM Eq. 10).
    Time-free: exactly k = floor(u n) + 1 of the n eligible tokens masked, weight n / k (RADD Thm 2), and
    t = None. Any integrand f(xt) summed with these weights estimates the same integral over t.
    """
    n = eligible.sum(-1)
    if model.time_conditioned:
        t = (t_min + (1.0 - t_min) * u).float()
        xt, masked = mask_tokens(x0, 1.0 - schedule.alpha(t), model.mask_id, eligible=eligible, generator=generator)
        return xt, masked, t, nelbo_weight(schedule, t)
    k = torch.minimum((u * n.double()).floor().long() + 1, n.clamp(min=1))
    xt, masked = mask_exactly_k(x0, k, model.mask_id, eligible=eligible, generator=generator)
    return xt, masked, None, n.float() / k.float()


@torch.no_grad()
def nelbo_per_sequence(
    model: Denoiser,
    batch: dict[str, Tensor],
    *,
    num_samples: int = 32,
    method: Method = "mc",
    schedule: NoiseSchedule | None = None,
    t_min: float = 1e-3,
    keep_first_token: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sequence NELBO estimates (B,), their variance of the mean (B,), and token counts (B,)."""
    schedule = schedule or LogLinearSchedule()
    x0 = batch["input_ids"]
    eligible = target_positions(batch, keep_first_token)
    attn_mask = padding_attn_mask(batch)
    n = eligible.sum(-1)
    draws = []
    for s in range(num_samples):
        u = stratified_uniforms(x0.shape[0], s, num_samples, method, x0.device, generator)
        xt, masked, t, weight = nelbo_draw(model, x0, eligible, u, schedule=schedule, t_min=t_min,
                                           generator=generator)
        logits = model(xt, t, attn_mask=attn_mask)
        draws.append(weight * masked_token_nll(logits, x0, masked, model.mask_id).sum(-1))
    d = torch.stack(draws).double()  # (S, B)
    var_of_mean = d.var(0, unbiased=True) / num_samples if num_samples > 1 else torch.zeros_like(d[0])
    return d.mean(0), var_of_mean, n


@torch.no_grad()
def ar_nll_per_sequence(model: Denoiser, batch: dict[str, Tensor], *,
                        softmax: ArSoftmax) -> tuple[Tensor, Tensor]:
    """Exact per-sequence NLL (B,) over targets 1..L-1 and the target counts (B,), normalised over the
    rows ``softmax`` says (``dlm.objectives.ar.next_token_nll``)."""
    x0, attention_mask = batch["input_ids"], batch.get("attention_mask")
    nll = next_token_nll(model(x0, None, attn_mask=padding_attn_mask(batch)), x0, model.mask_id, softmax)
    targets = torch.ones_like(nll, dtype=torch.bool) if attention_mask is None else attention_mask[:, 1:].bool()
    return (nll * targets).sum(-1).double(), targets.sum(-1)


class ExactNLL:
    """AR models: the exact next-token NLL over targets 1..L-1 (no estimator, no variance), with the
    softmax normalised as the model's distribution is defined (``ar_softmax``: "full" for a converted
    HF model, equal to ``transformers``' perplexity; "without_mask" for dlm's AR objective)."""

    desc = "eval ppl (ar)"
    stochastic = False

    def __init__(self, *, ar_softmax: ArSoftmax) -> None:
        self.ar_softmax = ar_softmax

    @classmethod
    def for_model(cls, model: Denoiser, *, ar_softmax: ArSoftmax | None = None, **_settings) -> ExactNLL:
        """Monte Carlo settings (num_samples, method, ...) do not apply to an exact score; ``ar_softmax``
        (the model directory's record) is required."""
        if ar_softmax is None:
            raise ValueError("an AR model's exact NLL needs ar_softmax (its model directory's record says it)")
        return cls(ar_softmax=ar_softmax)

    def per_sequence(self, model: Denoiser, batch: dict[str, Tensor],
                     generator: torch.Generator | None = None) -> PerSequence:
        nll, n = ar_nll_per_sequence(model, batch, softmax=self.ar_softmax)
        return nll, None, n

    def summary(self) -> dict:
        return {"method": "exact", "t_samples": 1, "estimator": "exact", "ar_softmax": self.ar_softmax}


class MaskedNELBO:
    """Masked-diffusion models: the NELBO bound (module docstring), ``num_samples`` stratified draws per
    sequence; ``keep_first_token`` conditions on position 0 (the AR model's targets exactly)."""

    desc = "eval ppl (diffusion)"
    stochastic = True

    def __init__(self, *, num_samples: int = 32, method: Method = "mc", schedule: NoiseSchedule | None = None,
                 t_min: float = 1e-3, keep_first_token: bool = True) -> None:
        self.num_samples, self.method, self.schedule = num_samples, method, schedule
        self.t_min, self.keep_first_token = t_min, keep_first_token

    @classmethod
    def for_model(cls, model: Denoiser, *, ar_softmax: ArSoftmax | None = None, **settings) -> MaskedNELBO:
        """``settings``: the constructor's; ``ar_softmax`` describes AR models only."""
        return cls(**settings)

    def per_sequence(self, model: Denoiser, batch: dict[str, Tensor],
                     generator: torch.Generator | None = None) -> PerSequence:
        return nelbo_per_sequence(model, batch, num_samples=self.num_samples, method=self.method,
                                  schedule=self.schedule, t_min=self.t_min, keep_first_token=self.keep_first_token,
                                  generator=generator)

    def summary(self) -> dict:
        return {"method": "nelbo_bound", "t_samples": self.num_samples, "estimator": self.method}


def evaluate_perplexity(
    model: Denoiser,
    batches: Iterable[dict[str, Tensor]],
    scorer: Scorer,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    total: int | None = None,
) -> dict:
    """Token-weighted perplexity over ``batches``: exp(sum nll / sum tokens), nll from ``scorer``.

    One generator seeded with ``seed`` drives every Monte Carlo draw. Returns a JSON-able dict: nll,
    nll_stderr (Monte Carlo error, 0 for exact scores), ppl, tokens, sequences, seconds, plus the
    scorer's ``summary()`` (method ``nelbo_bound`` or ``exact``, t_samples, estimator, ...).
    """
    generator = torch.Generator(device=device).manual_seed(seed)

    def score(batch: dict[str, Tensor]) -> PerSequence:
        return scorer.per_sequence(model, batch, generator)

    totals = accumulate_nll(model, batches, score, desc=scorer.desc, device=device, total=total)
    return {**totals, **scorer.summary()}


def accumulate_nll(model: nn.Module, batches: Iterable[dict[str, Tensor]], score, *, desc: str,
                   device: torch.device | str, total: int | None = None) -> dict:
    """Token-weighted totals of ``score(batch) -> (nll per sequence (B,), its variance (B,) or None,
    tokens per sequence (B,))`` over ``batches``, with the model in eval mode; returns nll,
    nll_stderr, ppl, tokens, sequences, seconds. A NaN or inf score stops the evaluation
    (``NonFiniteError`` naming the rows): a perplexity of NaN is not a result."""
    was_training = model.training
    model.eval()
    nll_sum, var_sum, tokens, sequences = 0.0, 0.0, 0, 0
    start = time.perf_counter()
    for batch in tqdm(batches, desc=desc, total=total, dynamic_ncols=True):
        per_seq, var, n = score({k: v.to(device) for k, v in batch.items()})
        batch_nll, batch_var = per_seq.sum().item(), 0.0 if var is None else var.sum().item()
        if not (math.isfinite(batch_nll) and math.isfinite(batch_var)):  # one sync per batch, as .item() above
            raise non_finite_scores(per_seq, var, first_row=sequences, desc=desc)
        nll_sum += batch_nll
        var_sum += batch_var
        tokens += int(n.sum().item())
        sequences += per_seq.numel()
    model.train(was_training)
    if tokens == 0:
        raise ValueError("evaluation data produced no target tokens; check data.seq_len and the split")
    nll = nll_sum / tokens
    return {"nll": nll, "nll_stderr": math.sqrt(var_sum) / tokens, "ppl": math.exp(nll), "tokens": tokens,
            "sequences": sequences, "seconds": time.perf_counter() - start}


def non_finite_scores(per_seq: Tensor, var: Tensor | None, *, first_row: int, desc: str) -> NonFiniteError:
    """The error for a batch whose per-sequence NLL (B,) or its variance (B,) is not finite: it names the
    rows of the evaluation data (counted from 0) and the first bad value."""
    bad = ~torch.isfinite(per_seq) | (torch.zeros_like(per_seq, dtype=torch.bool) if var is None
                                      else ~torch.isfinite(var))
    rows = [first_row + int(i) for i in bad.nonzero().flatten().tolist()]
    i = rows[0] - first_row
    what = f"NLL {per_seq[i].item()}" if not math.isfinite(per_seq[i].item()) else f"variance {var[i].item()}"
    shown = ", ".join(map(str, rows[:8])) + (", ..." if len(rows) > 8 else "")
    return NonFiniteError(f"{desc}: the model's score is not finite ({what}) on row(s) {shown} of the evaluation "
                          "data: its logits hold NaN/inf on these inputs (overflow in a low precision, or "
                          "corrupt weights); nothing was written")
