"""Genome windows labelled by a reward: a table for training a learned oracle where no measurement exists.

DRAKES trains its two DNA oracles on disjoint halves of the genome (chr1-11 / chr12-22) of a measured
MPRA table. Without measurements (a genome FASTA only), the same structure is available by
distillation: label every ``seq_len``-bp window with a reward r (e.g. the JASPAR liver-factor PWM
score), take a contiguous part of the windows (``row_range`` over the windows in genome order: the
first half for one oracle, the second half for the other), and fit an oracle to it. The learned
oracle is smooth and differentiable; trained on another half, it is an evaluation oracle that shares
no training window with the fine-tuning one. ``path=None``: the seeded synthetic genome of
``data=dna_genome``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dlm.data.fasta import NPolicy, clean_sequence, read_fasta, windows
from dlm.data.sequence_table import SequenceTable, select_rows
from dlm.data.synthetic_genome import synthetic_genome
from dlm.rewards.protocol import RewardModel


def reward_windows(*, reward: RewardModel, path: str | None = None, seq_len: int = 200, stride: int | None = None,
                   row_range: Sequence[float] | None = None, policy: NPolicy = "refuse", n_as: str | None = None,
                   synthetic_length: int = 330_000, batch_size: int = 512) -> SequenceTable:
    """``seq_len`` windows every ``stride`` bases (default: non-overlapping) of the FASTA, in record and
    position order, the ``row_range`` part of them, each valued by ``reward`` on its one-hot (letters
    first, as the model's vocabulary). Overlapping windows multiply the rows of a small genome; windows
    straddling the boundary of two parts share bases (at most seq_len / stride of them)."""
    records = read_fasta(path) if path is not None else [synthetic_genome(synthetic_length, seed=0)]
    alphabet = reward.alphabet
    all_windows = [w for r in records
                   for w in windows(clean_sequence(r, alphabet=alphabet, policy=policy, n_as=n_as), seq_len=seq_len,
                                     stride=stride)]
    rows = list(select_rows(len(all_windows), row_range, "row_range"))
    chosen = [all_windows[i] for i in rows]
    lookup = {c: i for i, c in enumerate(alphabet)}
    values: list[float] = []
    with torch.no_grad():
        for start in range(0, len(chosen), batch_size):
            ids = torch.tensor([[lookup[c] for c in w] for w in chosen[start:start + batch_size]])
            values += reward(torch.nn.functional.one_hot(ids, len(alphabet)).float()).tolist()
    where = path if path is not None else "synthetic genome"
    return SequenceTable(chosen, values, rows, alphabet, f"{where} windows {row_range} valued by {type(reward).__name__}")
