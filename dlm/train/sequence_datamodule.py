"""Data modules for DNA / protein base models: rows of exactly ``seq_len`` letters, no BOS, no padding.

Selected by a data config's ``_target_`` (``conf/data/dna_genome.yaml``, ``conf/data/gb1.yaml``).
A designed sequence is all letters: a row is the sequence itself, ``{"input_ids": (seq_len,) long}``
with ids ``0..K-1`` (letters first, ``dlm.data.tokenizers.bio``). Because there is no BOS, the
masked objective must be allowed to mask position 0: train with ``objective.keep_first_token=false``
(with ``true`` the first letter would never be learnt nor designed). Rows are built in memory
(200-bp windows of a few Mb, or 149k 4-letter variants); the training order is the resumable seeded
stream shared by every dlm data module (``StreamSampler``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.utils.data import Dataset

from dlm.data.fasta import NPolicy, fasta_windows, read_fasta
from dlm.data.gb1 import GB1_LENGTH, load_gb1
from dlm.data.synthetic_genome import synthetic_genome
from dlm.data.tokenizers.bio import LetterTokenizer
from dlm.errors import ConfigError
from dlm.train.datamodule import StreamDataModule

Which = Literal["train", "eval"]


class LetterRows(Dataset):
    """Index i -> {"input_ids": ids[i]} over an (N, seq_len) long tensor."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i]}


def encode_rows(sequences: list[str], *, tokenizer, alphabet: str, seq_len: int) -> torch.Tensor:
    """(N, seq_len) ids of equally long letter sequences; refuses a tokenizer of another alphabet."""
    if not isinstance(tokenizer, LetterTokenizer) or tokenizer.letters != alphabet:
        raise ConfigError(f"this data is over {alphabet!r} but the tokenizer is {type(tokenizer).__name__}; set "
                          f"tokenizer={'dna' if alphabet == 'ACGT' else 'protein'}")
    ids = torch.tensor(tokenizer.encode_batch(sequences), dtype=torch.long)
    if ids.shape[1] != seq_len:  # a loader bug, never user input: every row is cut to seq_len upstream
        raise ValueError(f"rows of {ids.shape[1]} letters, expected {seq_len}")
    return ids


def capped(sequences: list[str], max_tokens: int | None, seq_len: int) -> list[str]:
    """The first ceil(max_tokens / seq_len) rows (quick runs, ``debug=tiny``); all when None."""
    return sequences if max_tokens is None else sequences[: max(1, -(-max_tokens // seq_len))]


class LetterRowsDataModule(StreamDataModule):
    """Shared loaders; subclasses give ``sequences(which)`` and ``alphabet``."""

    alphabet: str

    def __init__(self, *, tokenizer, seq_len: int, batch_size: int = 32, eval_batch_size: int | None = None,
                 num_workers: int = 0, seed: int = 0, max_train_tokens: int | None = None,
                 max_eval_tokens: int | None = None) -> None:
        super().__init__()
        self.tokenizer, self.seq_len = tokenizer, seq_len
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.max_tokens = {"train": max_train_tokens, "eval": max_eval_tokens}
        self.datasets: dict[str, LetterRows] = {}

    def sequences(self, which: Which) -> list[str]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        for which in ("train", "eval"):
            if which not in self.datasets:
                seqs = capped(self.sequences(which), self.max_tokens[which], self.seq_len)
                self.datasets[which] = LetterRows(encode_rows(seqs, tokenizer=self.tokenizer, alphabet=self.alphabet,
                                                              seq_len=self.seq_len))


class FastaWindowsDataModule(LetterRowsDataModule):
    """``seq_len``-bp windows of a FASTA file (``dlm.data.fasta``: N/case policy, contiguous held-out tail
    of every record). ``path=None``: a seeded synthetic genome of ``synthetic_length`` bases
    (``dlm.data.synthetic_genome``), so the config runs on a machine without a genome file."""

    alphabet = "ACGT"

    def __init__(self, *, path: str | None = None, seq_len: int = 200, stride: int | None = None,
                 policy: NPolicy = "refuse", n_as: str | None = None, eval_fraction: float = 0.1,
                 synthetic_length: int = 330_000, **kwargs) -> None:
        super().__init__(seq_len=seq_len, **kwargs)
        self.path, self.stride, self.policy, self.n_as = path, stride, policy, n_as
        self.eval_fraction, self.synthetic_length = eval_fraction, synthetic_length
        self._records = None

    def sequences(self, which: Which) -> list[str]:
        if self._records is None:
            self._records = (read_fasta(self.path) if self.path is not None
                             else [synthetic_genome(self.synthetic_length, seed=0)])
        return fasta_windows(self._records, seq_len=self.seq_len, split=which, eval_fraction=self.eval_fraction,
                             stride=self.stride, policy=self.policy, n_as=self.n_as)


class GB1DataModule(LetterRowsDataModule):
    """The 4-site variants of the measured GB1 library (``dlm.data.gb1``). Validation reads every
    ``eval_every``-th data row. ``holdout=False`` (default) trains on every measured variant, validation rows
    included: the target is the library's own distribution (the natural prior), not generalisation beyond
    it, so validation is in-sample; ``holdout=True`` removes the validation rows from training.
    ``path=None``: the shipped zip."""

    alphabet = "ACDEFGHIKLMNPQRSTVWY"

    def __init__(self, *, path: str | None = None, seq_len: int = GB1_LENGTH, eval_every: int = 20,
                 holdout: bool = False, **kwargs) -> None:
        if seq_len != GB1_LENGTH:
            raise ConfigError(f"data.seq_len={seq_len} but GB1 variants have {GB1_LENGTH} letters; set "
                              f"data.seq_len={GB1_LENGTH} (and a model.max_seq_len >= {GB1_LENGTH})")
        if eval_every < 2:
            raise ConfigError(f"data.eval_every={eval_every} must be >= 2 (every n-th row is held out)")
        super().__init__(seq_len=seq_len, **kwargs)
        self.path, self.eval_every, self.holdout = path, eval_every, holdout
        self._table = None

    def sequences(self, which: Which) -> list[str]:
        if self._table is None:
            self._table = load_gb1(self.path)
        if which == "train" and not self.holdout:
            return list(self._table.sequences)
        heldout = which == "eval"
        return [s for i, s in enumerate(self._table.sequences) if (i % self.eval_every == 0) == heldout]
