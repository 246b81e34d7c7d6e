"""Perplexity: the NELBO upper bound for diffusion models, the exact value for AR models.

For a time-free denoiser the bound is evaluated in its exact "number of masks" form (RADD Thm 2,
FHS Prop. 3.1):  -log p(x) <= NELBO = sum_{k=1}^{n} (1/k) E_{|M|=k}[ sum_{i in M} -log p(x^i | x_{-M}) ],
estimated as n/k * sum_masked with k stratified over {1..n} per sequence. Unlike MDLM's clipped-t
estimator this is unbiased for the full integral and has finite variance. A time-conditioned
denoiser uses the t form (t stratified over [t_min, 1)), as it needs t as an input.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dlm.diffusion.forward import mask_exactly_k, mask_tokens
from dlm.diffusion.posterior import masked_token_nll
from dlm.diffusion.schedule import LogLinearSchedule, nelbo_weight
from dlm.objectives.ar import next_token_nll
from dlm.objectives.masked import target_positions
from dlm.types import Denoiser, NoiseSchedule

Method = Literal["mc", "quadrature"]


def _strata(b: int, s: int, num_samples: int, method: Method, device, generator) -> Tensor:
    """u in [s/S, (s+1)/S) per row: random (mc) or the midpoint (quadrature); (B,) float64."""
    if method == "quadrature":
        u = torch.full((b,), 0.5, dtype=torch.float64, device=device)
    elif method == "mc":
        u = torch.rand(b, dtype=torch.float64, device=device, generator=generator)
    else:
        raise ValueError(f"method={method!r}; valid: 'mc', 'quadrature'")
    return (s + u) / num_samples


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
    n = eligible.sum(-1)
    draws = []
    for s in range(num_samples):
        u = _strata(x0.shape[0], s, num_samples, method, x0.device, generator)
        if model.time_conditioned:
            t = (t_min + (1.0 - t_min) * u).float()
            xt, masked = mask_tokens(x0, 1.0 - schedule.alpha(t), model.mask_id, eligible=eligible,
                                     generator=generator)
            weight = nelbo_weight(schedule, t)
        else:
            k = torch.minimum((u * n.double()).floor().long() + 1, n.clamp(min=1))
            xt, masked = mask_exactly_k(x0, k, model.mask_id, eligible=eligible, generator=generator)
            t, weight = None, n.float() / k.float()
        logits = model(xt, t, attention_mask=batch.get("attention_mask"))
        draws.append(weight * masked_token_nll(logits, x0, masked, model.mask_id).sum(-1))
    d = torch.stack(draws).double()  # (S, B)
    var_of_mean = d.var(0, unbiased=True) / num_samples if num_samples > 1 else torch.zeros_like(d[0])
    return d.mean(0), var_of_mean, n


@torch.no_grad()
def ar_nll_per_sequence(model: Denoiser, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Exact per-sequence NLL (B,) over targets 1..L-1 and the target counts (B,)."""
    x0, attention_mask = batch["input_ids"], batch.get("attention_mask")
    nll = next_token_nll(model(x0, None, attention_mask=attention_mask), x0, model.mask_id)
    targets = torch.ones_like(nll, dtype=torch.bool) if attention_mask is None else attention_mask[:, 1:].bool()
    return (nll * targets).sum(-1).double(), targets.sum(-1)


def evaluate_perplexity(
    model: Denoiser,
    batches: Iterable[dict[str, Tensor]],
    *,
    kind: Literal["diffusion", "ar"],
    num_samples: int = 32,
    method: Method = "mc",
    schedule: NoiseSchedule | None = None,
    t_min: float = 1e-3,
    keep_first_token: bool = True,
    seed: int = 0,
    device: torch.device | str = "cpu",
    total: int | None = None,
) -> dict:
    """Token-weighted perplexity over ``batches``: exp(sum nll / sum tokens).

    Returns a JSON-able dict: nll, nll_stderr (Monte Carlo error, 0 for AR), ppl, tokens,
    sequences, method (``nelbo_bound`` or ``exact``), t_samples, estimator, seconds.
    """
    generator = torch.Generator(device=device).manual_seed(seed)

    def score(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None, Tensor]:
        if kind == "ar":
            per_seq, n = ar_nll_per_sequence(model, batch)
            return per_seq, None, n
        return nelbo_per_sequence(model, batch, num_samples=num_samples, method=method, schedule=schedule,
                                  t_min=t_min, keep_first_token=keep_first_token, generator=generator)

    totals = accumulate_nll(model, batches, score, desc=f"eval ppl ({kind})", device=device, total=total)
    return {**totals, "method": "exact" if kind == "ar" else "nelbo_bound",
            "t_samples": 1 if kind == "ar" else num_samples, "estimator": "exact" if kind == "ar" else method}


def accumulate_nll(model, batches: Iterable[dict[str, Tensor]], score, *, desc: str, device: torch.device | str,
                   total: int | None = None) -> dict:
    """Token-weighted totals of ``score(batch) -> (nll per sequence (B,), its variance (B,) or None,
    tokens per sequence (B,))`` over ``batches``, with the model in eval mode; returns nll,
    nll_stderr, ppl, tokens, sequences, seconds."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    nll_sum, var_sum, tokens, sequences = 0.0, 0.0, 0, 0
    start = time.perf_counter()
    for batch in tqdm(batches, desc=desc, total=total, dynamic_ncols=True):
        per_seq, var, n = score({k: v.to(device) for k, v in batch.items()})
        nll_sum += per_seq.sum().item()
        var_sum += 0.0 if var is None else var.sum().item()
        tokens += int(n.sum().item())
        sequences += per_seq.numel()
    if was_training and hasattr(model, "train"):
        model.train()
    if tokens == 0:
        raise ValueError("evaluation data produced no target tokens; check data.block_size and the split")
    nll = nll_sum / tokens
    return {"nll": nll, "nll_stderr": math.sqrt(var_sum) / tokens, "ppl": math.exp(nll), "tokens": tokens,
            "sequences": sequences, "seconds": time.perf_counter() - start}
