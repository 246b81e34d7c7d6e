"""``data=needle``: synthetic needle-in-a-haystack rows (``dlm.data.needle``) for dlm-train.

Rows are ``[BOS] document [EOS]`` of exactly ``seq_len`` tokens under ``tokenizer=char``, generated on
demand from a seed per document: ``num_train_docs`` training documents (a random needle depth each
unless ``depth`` is set) and ``num_eval_docs`` validation documents from a disjoint seed stream. The
training order is the resumable seeded stream shared by every dlm data module (``StreamSampler``).
``answer_only_fraction`` > 0: rows carry ``prompt_mask`` and that share of them are answer-only (SFT) rows
for ``objective.sft=true`` (``dlm.data.needle.NeedleRows``; the same rule in both splits).
"""

from __future__ import annotations

from dlm.data.needle import NeedleRows, NeedleTask, check_answer_only_fraction
from dlm.train.datamodule import StreamDataModule


class NeedleDataModule(StreamDataModule):
    """Needle rows for training and validation; ``max_*_tokens`` cap the document counts (quick runs)."""

    def __init__(self, *, tokenizer, seq_len: int = 128, num_pairs: int = 4, key_len: int = 2, value_len: int = 3,
                 num_queries: int = 1, depth: float | None = None, answer_only_fraction: float = 0.0,
                 num_train_docs: int = 100_000, num_eval_docs: int = 256,
                 batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 0,
                 max_train_tokens: int | None = None, max_eval_tokens: int | None = None) -> None:
        super().__init__()
        self.task = NeedleTask.for_row(seq_len, num_pairs=num_pairs, key_len=key_len, value_len=value_len,
                                       num_queries=num_queries)
        self.tokenizer, self.depth = tokenizer, depth
        self.answer_only_fraction = check_answer_only_fraction(answer_only_fraction)  # at build time
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.counts = {"train": _capped(num_train_docs, max_train_tokens, seq_len),
                       "eval": _capped(num_eval_docs, max_eval_tokens, seq_len)}
        self.datasets: dict[str, NeedleRows] = {}

    def setup(self, stage: str | None = None) -> None:
        for which, count in self.counts.items():
            if which not in self.datasets:
                self.datasets[which] = NeedleRows(self.task, self.tokenizer, split=which, num_docs=count,
                                                  seed=self.seed, depth=self.depth,
                                                  answer_only_fraction=self.answer_only_fraction)


def _capped(num_docs: int, max_tokens: int | None, seq_len: int) -> int:
    """At most ceil(max_tokens / seq_len) documents (``debug=tiny``); ``num_docs`` when None."""
    return num_docs if max_tokens is None else min(num_docs, max(1, -(-max_tokens // seq_len)))
