"""Sequence-design metrics (issue 13; DRAKES' evaluation, research note §2.9): pure functions of designs.

Every number of ``dlm-design``'s summary that is a statistic of the designed sequences (B, L) is defined here;
the exact distributions of an enumerable design space (GB1: 20^4 sequences) are ``dlm.eval.design_exact``.

  reward_stats         median / mean (± standard error) of the *evaluation* oracle's values, and the fraction
                       above a threshold (DRAKES' Pred-Activity = median; ATAC-Acc and %(ddG > 0) = fractions)
  app_log_lik          App-Log-Lik: a Monte Carlo lower bound on log p_pre(x) under the pretrained model, the
                       negative NELBO of ``dlm.eval.perplexity`` (estimate, with its standard error per sequence)
  design_diversity     mean pairwise Hamming distance / L and the unique fraction (``dlm.objectives.drakes``)
  kmer_pearson         DRAKES' 3-mer correlation: Pearson r of k-mer count vectors, designs vs reference
  motif_spearman       DRAKES' JASPAR correlation: Spearman ρ of per-motif hit counts, designs vs reference
  top_sequences        the reference set of both correlations: the top fraction of the data by value
  share_in             the share of designs inside a set of cells (GB1: the measured top 1 %)
  top_fraction_cells   that set: the cells whose measured value is in the top ``fraction`` of the measured ones

Shapes: B designs, L length, K alphabet size (letters are ids 0..K-1, ``dlm.data.tokenizers.bio``), V the
model vocabulary (K letters + special tokens), M motifs, C = K^L cells of an enumerable space.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dlm.eval.perplexity import nelbo_per_sequence
from dlm.objectives.drakes import diversity
from dlm.rewards.correlation import pearson, spearman
from dlm.rewards.pwm import PWMHitCount
from dlm.types import Denoiser, NoiseSchedule

# a window score equal to the threshold up to float32 rounding counts as a hit (as PWMHitCount counts)
HIT_SLACK = 1e-4


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


def kmer_counts(tokens: Tensor, *, k: int, alphabet_size: int) -> Tensor:
    """Counts (K^k,) float64 of every k-mer over all windows of all rows (B, L); windows holding a non-letter
    id (>= K) are skipped. k-mer index: Σ_i id_i K^(k−1−i) (first letter most significant)."""
    windows = tokens.unfold(1, k, 1).reshape(-1, k)  # (B·(L−k+1), k)
    windows = windows[(windows < alphabet_size).all(-1)]
    powers = alphabet_size ** torch.arange(k - 1, -1, -1, device=tokens.device)
    return torch.bincount((windows * powers).sum(-1), minlength=alphabet_size ** k).double()


def kmer_pearson(designs: Tensor, reference: Tensor, *, k: int = 3, alphabet_size: int = 4) -> float:
    """Pearson r between the k-mer count vectors of designs (B, L) and reference (R, L') (DRAKES' 3-mer
    correlation, ``oracle.cal_highexp_kmers``; their reference counts are rescaled by the sample sizes, which
    leaves Pearson's r unchanged)."""
    return pearson(kmer_counts(designs, k=k, alphabet_size=alphabet_size),
                   kmer_counts(reference, k=k, alphabet_size=alphabet_size))


def top_sequences(tokens: Tensor, values: Tensor, *, fraction: float) -> Tensor:
    """The rows (≥ 1) of tokens (N, L) whose value (N,) is in the top ``fraction`` (DRAKES: top 0.1 % of HepG2
    activity): ceil(fraction · N) rows, highest first."""
    n = max(1, math.ceil(fraction * values.numel()))
    return tokens[values.double().argsort(descending=True)[:n]]


def motif_counts(tokens: Tensor, hits: PWMHitCount) -> Tensor:
    """Per-motif hit counts (B, M) of designs (B, L) (letters only): windows of either strand scoring at least
    the motif's threshold, the counting of ``PWMHitCount`` kept per motif instead of weighted and summed."""
    onehot = torch.nn.functional.one_hot(tokens.clamp(max=len(hits.alphabet) - 1), len(hits.alphabet)).float()
    per_motif = [(s >= thr - HIT_SLACK).flatten(1).sum(-1) for thr, s in zip(hits.thresholds, hits.scores(onehot),
                                                                               strict=True)]
    return torch.stack(per_motif, -1).double()


def motif_spearman(designs: Tensor, reference: Tensor, hits: PWMHitCount) -> float:
    """Spearman ρ between total per-motif hit counts (M,) of designs and of reference (DRAKES' JASPAR motif
    correlation, there over 1,956 JASPAR motifs with gReLU's scanner; here over the reward's motifs)."""
    return spearman(motif_counts(designs, hits).sum(0), motif_counts(reference, hits).sum(0))


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
