"""DNA design metrics against data (DRAKES' evaluation, research note §2.9): how much designs look like the
*top* sequences of the data, by 3-mer composition and by transcription-factor motif content.

``dlm-design`` reports them when the model writes DNA and a reference is given (``reference.path``,
``dlm.eval.design_reference``); ``reference_metrics`` returns the block:

  kmer_pearson_top    Pearson r between the 64-dim 3-mer frequency vectors of the designs and of the top
                      windows. A vector pools every overlapping 3-mer of every sequence of its set, read on the
                      forward strand only (the reverse complement is not added: designs are written in one
                      orientation, and a strand bias is part of what is compared). DRAKES' 3-mer correlation
                      (``oracle.cal_highexp_kmers``; they rescale counts by the set sizes, which leaves r unchanged).
  kmer_pearson_all    the same against *all* reference windows: the part of kmer_pearson_top that is plain genome
                      composition (A/T richness, CpG depletion make any two genomic sets correlate at r ≈ 0.9),
                      so "closer to the top windows than to the data" reads kmer_pearson_top > kmer_pearson_all.
  motif_pearson_top   Pearson r between the per-motif mean hit counts (M,) of the designs and of the top windows:
                      hits(x, m) = #windows of either strand of x scoring >= min_m + f·(max_m − min_m) of motif m's
                      log-odds range (f = ``min_score_fraction``, 0.8; ``dlm.rewards.pwm.PWMHitCount`` per motif),
                      mean over the set's sequences, for every motif of the reference's motif file (default the 4
                      shipped liver factors; JASPAR 2022 CORE non-redundant has 1,956).
  motif_spearman_top  Spearman ρ of the same two vectors (DRAKES' JASPAR correlation: Spearman of per-motif hit
                      counts over 1,956 JASPAR motifs with gReLU's scanner).

The top windows are the ``top_fraction`` of the reference windows with the highest value (the evaluation oracle's,
or a table's measured column), ties kept in data order. A correlation with a constant vector is 0 (``pearson``).

Shapes: B designs, L length, N reference windows, K alphabet size (letters are ids 0..K-1,
``dlm.data.tokenizers.bio``), M motifs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dlm.rewards.correlation import pearson, spearman
from dlm.rewards.pwm import PWMHitCount

# a window score equal to the threshold up to float32 rounding counts as a hit (as PWMHitCount counts)
HIT_SLACK = 1e-4


def kmer_counts(tokens: Tensor, *, k: int, alphabet_size: int) -> Tensor:
    """Counts (K^k,) float64 of every k-mer over all windows of all rows (B, L); windows holding a non-letter
    id (>= K) are skipped. k-mer index: Σ_i id_i K^(k−1−i) (first letter most significant: ACG = 0·16 + 1·4 + 2)."""
    windows = tokens.unfold(1, k, 1).reshape(-1, k)  # (B·(L−k+1), k)
    windows = windows[(windows < alphabet_size).all(-1)]
    powers = alphabet_size ** torch.arange(k - 1, -1, -1, device=tokens.device)
    return torch.bincount((windows * powers).sum(-1), minlength=alphabet_size ** k).double()


def kmer_pearson(designs: Tensor, reference: Tensor, *, k: int = 3, alphabet_size: int = 4) -> float:
    """Pearson r between the pooled k-mer count vectors (K^k,) of designs (B, L) and reference (R, L'); counts
    or frequencies give the same r (Pearson is scale-free)."""
    return pearson(kmer_counts(designs, k=k, alphabet_size=alphabet_size),
                   kmer_counts(reference, k=k, alphabet_size=alphabet_size))


def top_sequences(tokens: Tensor, values: Tensor, *, fraction: float) -> Tensor:
    """The rows (≥ 1) of tokens (N, L) whose value (N,) is in the top ``fraction`` (DRAKES: top 0.1 % of HepG2
    activity): ceil(fraction · N) rows, highest first, equal values in row order (a stable sort: hit counts tie)."""
    n = max(1, math.ceil(fraction * values.numel()))
    return tokens[values.double().argsort(descending=True, stable=True)[:n]]


def motif_counts(tokens: Tensor, hits: PWMHitCount) -> Tensor:
    """Per-motif hit counts (B, M) of sequences (B, L) of letter ids: windows of either strand scoring at least
    the motif's threshold, the counting of ``PWMHitCount`` kept per motif instead of weighted and summed.
    A non-letter id (a special token left in a design) is read as T."""
    onehot = torch.nn.functional.one_hot(tokens.clamp(max=len(hits.alphabet) - 1), len(hits.alphabet)).float()
    per_motif = [(s >= thr - HIT_SLACK).flatten(1).sum(-1) for thr, s in zip(hits.thresholds, hits.scores(onehot),
                                                                               strict=True)]
    return torch.stack(per_motif, -1).double()


def mean_motif_counts(tokens: Tensor, hits: PWMHitCount, *, batch_size: int = 512) -> Tensor:
    """Mean over sequences (B, L) of the per-motif hit counts: (M,) float64 (chunked: M motifs x B rows of
    scores at once would be large for the 1,956 JASPAR motifs)."""
    total = torch.zeros(len(hits.motifs), dtype=torch.float64)
    for start in range(0, tokens.shape[0], batch_size):
        total += motif_counts(tokens[start:start + batch_size], hits).sum(0)
    return total / max(1, tokens.shape[0])


def motif_correlations(designs: Tensor, reference: Tensor, hits: PWMHitCount) -> dict[str, float]:
    """Pearson r and Spearman ρ between the per-motif mean hit counts (M,) of designs (B, L) and reference (R, L')."""
    a, b = mean_motif_counts(designs, hits), mean_motif_counts(reference, hits)
    return {"pearson": pearson(a, b), "spearman": spearman(a, b)}


def reference_metrics(designs: Tensor, windows: Tensor, values: Tensor, *, top_fraction: float,
                      hits: PWMHitCount) -> dict[str, float | int]:
    """The block of the module docstring for designs (B, L) against reference windows (N, L) valued (N,)."""
    top = top_sequences(windows, values, fraction=top_fraction)
    motifs = motif_correlations(designs, top, hits)
    return {"kmer_pearson_top": kmer_pearson(designs, top), "kmer_pearson_all": kmer_pearson(designs, windows),
            "motif_pearson_top": motifs["pearson"], "motif_spearman_top": motifs["spearman"],
            "reference_windows": int(windows.shape[0]), "reference_top_windows": int(top.shape[0]),
            "reference_top_value_min": float(values.double().sort(descending=True).values[top.shape[0] - 1]),
            "motifs": len(hits.motifs)}
