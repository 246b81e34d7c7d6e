"""``data=needle``: synthetic needle-in-a-haystack rows (``dlm.data.needle``) for dlm-train.

Rows are ``[BOS] document [EOS]`` of exactly ``seq_len`` tokens under ``tokenizer=char``, generated on
demand from a seed per document: ``num_train_docs`` training documents (a random needle depth each
unless ``depth`` is set) and ``num_eval_docs`` validation documents from a disjoint seed stream. The
training order is the resumable seeded stream shared by every dlm data module (``StreamSampler``).
``answer_only_fraction`` > 0: rows carry ``prompt_mask`` and that share of them are answer-only (SFT) rows
for ``objective.sft=true`` (``dlm.data.needle.NeedleRows``; the same rule in both splits).

Curriculum: ``curriculum_pairs`` > 0 trains the first ``curriculum_steps`` optimiser steps on documents
with that many pairs (same length and everything else; their own seed stream), then on ``num_pairs``.
Validation always uses ``num_pairs``. The switch is a function of the stream position
(``StreamSampler`` phases), so it happens at the same step on every rank and in a resumed run. Why: the
retrieval circuit forms in a jump whose arrival depends on the initialisation; a warm-up with fewer
distractors (with 2 heads: ``experiment=needle_demo``) made it form for every seed tried, and it carries
over to the full task (benchmarks/notes/long.md).
"""

from __future__ import annotations

from torch.utils.data import ConcatDataset

from dlm.data.needle import NeedleRows, NeedleTask, check_answer_only_fraction
from dlm.errors import ConfigError
from dlm.train.datamodule import StreamDataModule


class NeedleDataModule(StreamDataModule):
    """Needle rows for training and validation; ``max_*_tokens`` cap the document counts (quick runs)."""

    def __init__(self, *, tokenizer, seq_len: int = 128, num_pairs: int = 4, key_len: int = 2, value_len: int = 3,
                 num_queries: int = 1, depth: float | None = None, answer_only_fraction: float = 0.0,
                 curriculum_pairs: int | None = None, curriculum_steps: int = 0,
                 num_train_docs: int = 100_000, num_eval_docs: int = 256,
                 batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 0,
                 max_train_tokens: int | None = None, max_eval_tokens: int | None = None) -> None:
        super().__init__()
        self.task = NeedleTask.for_row(seq_len, num_pairs=num_pairs, key_len=key_len, value_len=value_len,
                                       num_queries=num_queries)
        self.curriculum_task = _curriculum_task(seq_len, curriculum_pairs, curriculum_steps, num_pairs=num_pairs,
                                                key_len=key_len, value_len=value_len, num_queries=num_queries)
        self.phase_steps = (curriculum_steps,) if self.curriculum_task else ()
        self.tokenizer, self.depth = tokenizer, depth
        self.answer_only_fraction = check_answer_only_fraction(answer_only_fraction)  # at build time
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.counts = {"train": _capped(num_train_docs, max_train_tokens, seq_len),
                       "eval": _capped(num_eval_docs, max_eval_tokens, seq_len)}
        self.datasets: dict[str, NeedleRows | ConcatDataset] = {}  # train: warm-up + task with a curriculum

    def setup(self, stage: str | None = None) -> None:
        for which, count in self.counts.items():
            if which not in self.datasets:
                self.datasets[which] = self.rows(self.task, which, count)
        if self.curriculum_task and not isinstance(self.datasets["train"], ConcatDataset):
            warm = self.rows(self.curriculum_task, "train-curriculum", self.counts["train"])
            self.datasets["train"] = ConcatDataset([warm, self.datasets["train"]])

    def rows(self, task: NeedleTask, split: str, count: int) -> NeedleRows:
        """``count`` documents of ``task`` from the seed stream of ``split``, with this module's row settings."""
        return NeedleRows(task, self.tokenizer, split=split, num_docs=count, seed=self.seed, depth=self.depth,
                          answer_only_fraction=self.answer_only_fraction)


def _curriculum_task(seq_len: int, pairs: int | None, steps: int, **shape: int) -> NeedleTask | None:
    """The warm-up phase's task (``pairs`` pairs, the rest of ``shape``), or None without a curriculum;
    refuses a half-set or out-of-range curriculum naming the key."""
    if not pairs and not steps:
        return None
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or not pairs:
        raise ConfigError(f"needle curriculum_pairs={pairs!r} / curriculum_steps={steps!r}: set both (a positive "
                          "pair count for the first curriculum_steps >= 1 steps) or neither")
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs >= shape["num_pairs"]:
        raise ConfigError(f"needle curriculum_pairs={pairs} must be below num_pairs={shape['num_pairs']}: the "
                          "warm-up trains on fewer distractors than the task")
    try:
        return NeedleTask.for_row(seq_len, **{**shape, "num_pairs": pairs})
    except ConfigError as err:
        raise ConfigError(f"needle curriculum_pairs={pairs}: {err}") from None


def _capped(num_docs: int, max_tokens: int | None, seq_len: int) -> int:
    """At most ceil(max_tokens / seq_len) documents (``debug=tiny``); ``num_docs`` when None."""
    return num_docs if max_tokens is None else min(num_docs, max(1, -(-max_tokens // seq_len)))
