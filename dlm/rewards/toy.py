"""Closed-form rewards for tests and demos, differentiable in the (B, L, V) input.

GC content (DNA): mean over positions of P(C) + P(G) (ids 1 and 2 of "ACGT"), in [0, 1].
k-mer count: sum over windows of prod_j P(x_{i+j} = kmer_j), the expected number of occurrences of
the k-mer under independent positions; exact on one-hots (an integer count).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from dlm.errors import ConfigError
from dlm.rewards.protocol import letter_probs

DNA = "ACGT"


class GCContent:
    """Fraction of G/C: (B, L, V) -> (B,)."""

    alphabet = DNA
    differentiable = True

    def __init__(self, length: int | None = None) -> None:
        self.length = length

    def __call__(self, probs: Tensor) -> Tensor:
        p = letter_probs(probs, self.alphabet)
        return (p[..., 1] + p[..., 2]).float().mean(-1)

    def save(self, directory: Path) -> dict:  # closed form: the arguments rebuild it (reward_dir)
        return {"_target_": "dlm.rewards.toy.GCContent", "length": self.length}


class KmerCount:
    """Expected count of ``kmer`` under the per-position probabilities: (B, L, V) -> (B,)."""

    differentiable = True

    def __init__(self, kmer: str, alphabet: str = DNA, length: int | None = None) -> None:
        bad = [c for c in kmer if c not in alphabet]
        if not kmer or bad:
            raise ConfigError(f"reward.kmer={kmer!r} must be a non-empty word over {alphabet!r}"
                              + (f" ({bad[0]!r} is not)" if bad else ""))
        self.kmer, self.alphabet, self.length = kmer, alphabet, length
        self._ids = [alphabet.index(c) for c in kmer]

    def __call__(self, probs: Tensor) -> Tensor:
        p = letter_probs(probs, self.alphabet).float()
        n = p.shape[1] - len(self._ids) + 1
        if n <= 0:
            return p.new_zeros(p.shape[0])
        windows = torch.ones(p.shape[0], n, dtype=p.dtype, device=p.device)
        for j, letter in enumerate(self._ids):
            windows = windows * p[:, j:j + n, letter]
        return windows.sum(-1)

    def save(self, directory: Path) -> dict:  # closed form: the arguments rebuild it (reward_dir)
        return {"_target_": "dlm.rewards.toy.KmerCount", "kmer": self.kmer, "alphabet": self.alphabet,
                "length": self.length}
