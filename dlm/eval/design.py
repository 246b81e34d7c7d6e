"""Sequence-design metrics (issue 13; DRAKES' evaluation, research note §2.9): pure functions of designs.

Every number of ``dlm-design``'s summary that is a statistic of the designed sequences (B, L) is defined here;
the exact distributions of an enumerable design space (GB1: 20^4 sequences) are ``dlm.eval.design_exact``, the
DNA comparisons with the top windows of the data (3-mer and JASPAR motif correlations) ``dlm.eval.design_dna_metrics``.

  reward_stats         median / mean (± standard error) of the *evaluation* oracle's values, and the fraction
                       above a threshold (DRAKES' Pred-Activity = median; ATAC-Acc and %(ddG > 0) = fractions)
  app_log_lik          App-Log-Lik: a Monte Carlo lower bound on log p_pre(x) under the pretrained model, the
                       negative NELBO of ``dlm.eval.perplexity`` (estimate, with its standard error per sequence)
  design_diversity     mean pairwise Hamming distance / L and the unique fraction (``dlm.objectives.drakes``)
  share_in             the share of designs inside a set of cells (GB1: the measured top 1 %)
  top_fraction_cells   that set: the cells whose measured value is in the top ``fraction`` of the measured ones

Shapes: B designs, L length, K alphabet size (letters are ids 0..K-1, ``dlm.data.tokenizers.bio``), V the
model vocabulary (K letters + special tokens), C = K^L cells of an enumerable space.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dlm.eval.perplexity import nelbo_per_sequence
from dlm.objectives.drakes import diversity
from dlm.types import Denoiser, NoiseSchedule


def reward_stats(values: Tensor, *, threshold: float | None = None) -> dict[str, float | None]:
    """median, mean, its standard error s/√n and ``fraction_above`` (share of values > threshold; None without
    one) of the evaluation oracle's values (B,). The median is DRAKES' headline (Pred-Activity, Pred-ddG)."""
    v = values.double().flatten()
    n = v.numel()
    se = float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else None
    return {"median_reward": float(v.median()) if n else None, "mean_reward": float(v.mean()) if n else None,
            "mean_reward_se": se, "threshold": threshold,
            "fraction_above": None if threshold is None or not n else float((v > threshold).double().mean())}


@torch.no_grad()
def app_log_lik(model: Denoiser, tokens: Tensor, *, schedule: NoiseSchedule, num_samples: int = 16,
                batch_size: int = 256, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """App-Log-Lik of designs (B, L) under the pretrained ``model``: (estimate (B,), its variance (B,)) float64.

    DRAKES (notes §2.9) reports the median over designs of a one-sample estimate of the discrete-time ELBO
    Σ_steps Σ_masked ((m_t − m_s)/m_t) log p_pre(x0 | x_t). Here it is −NELBO of ``nelbo_per_sequence`` with
    ``num_samples`` stratified draws per sequence: for a time-free denoiser the number-of-masks form
    Σ_k (1/k) E_{|M|=k}[Σ_{i∈M} log p(x^i | x_{−M})] (RADD Thm 2), for a time-conditioned one MDLM's t-integral.
    Both are lower bounds on log p_pre(x); more draws lower the variance, not the bias. No BOS: every position
    of a design is scored (DNA / protein rows are letters only)."""
    est, var = [], []
    for start in range(0, tokens.shape[0], batch_size):
        chunk = tokens[start:start + batch_size]
        nelbo, v, _ = nelbo_per_sequence(model, {"input_ids": chunk}, num_samples=num_samples, method="mc",
                                         schedule=schedule, keep_first_token=False, generator=generator)
        est.append(-nelbo)
        var.append(v)
    return torch.cat(est).double(), torch.cat(var).double()


def design_diversity(tokens: Tensor) -> dict[str, float]:
    """hamming = mean over ordered pairs i ≠ j of Hamming(x_i, x_j) / L; unique_fraction = distinct rows / B."""
    d = diversity(tokens)
    return {"hamming": float(d["hamming"]), "unique_fraction": float(d["unique_fraction"])}


def top_fraction_cells(cells: Tensor, values: Tensor, *, num_cells: int, fraction: float = 0.01) -> Tensor:
    """Boolean (C,) marking the measured cells (index (N,)) whose value (N,) ranks in the top ``fraction``:
    the ceil(fraction · N) highest (GB1: the 1,494 fittest of 149,361 measured variants)."""
    n = max(1, math.ceil(fraction * values.numel()))
    top = torch.zeros(num_cells, dtype=torch.bool)
    top[cells[values.double().argsort(descending=True)[:n]]] = True
    return top


def share_in(cells: Tensor, members: Tensor) -> float:
    """Share of designs (cell indices (B,); −1 = outside the space) that fall in ``members`` (C,) bool."""
    inside = cells >= 0
    hit = torch.zeros_like(cells, dtype=torch.bool)
    hit[inside] = members[cells[inside]]
    return float(hit.double().mean())
