"""TextDataModule: tokenised, packed, on-disk-cached text for training and validation.

The training order is one deterministic stream (seeded permutations of the blocks, epoch after
epoch), sharded over ranks. Position in the stream is derived from ``trainer.global_step``, so a
resumed run continues with exactly the batch it would have seen next, with any number of
re-created iterators and without a stateful dataloader.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from dlm.data.blocks import corpus_blocks


class StreamSampler(Sampler[int]):
    """Indices of an endless stream of seeded permutations; rank r takes every world_size-th one.

    ``consumed()`` is how many indices this rank has already used; ``num_samples`` is the
    number this rank will use over the whole run (the run is one Lightning epoch).

    Phases (a curriculum): ``n`` may be a list of part sizes of a concatenated dataset with ``starts`` the
    global stream positions at which each part takes over (``starts[0] == 0``, increasing). Part k is read
    as its own stream of seeded permutations from ``starts[k]`` on, its indices offset by the sizes of the
    parts before it. Because a position decides its phase, a resumed run continues in the right phase. One
    part (the default) is exactly the plain stream.
    """

    def __init__(self, n: int | Sequence[int], *, num_samples: int, seed: int, rank: int, world_size: int,
                 consumed: Callable[[], int] = lambda: 0, starts: Sequence[int] = (0,)) -> None:
        sizes = [n] if isinstance(n, int) else list(n)
        if 0 in sizes:
            raise ValueError("the training split has no rows: use a longer corpus or a smaller data.seq_len")
        if len(starts) != len(sizes) or starts[0] != 0 or any(a >= b for a, b in itertools.pairwise(starts)):
            raise ValueError(f"stream phases need one increasing start per part from 0; got starts={list(starts)} "
                             f"for {len(sizes)} parts")
        self.sizes, self.starts = sizes, list(starts)
        self.offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        self.num_samples, self.seed = num_samples, seed
        self.rank, self.world_size, self.consumed = rank, world_size, consumed

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        start = self.consumed()
        pos = start * self.world_size + self.rank  # position in the global stream
        current, perm = None, None
        for _ in range(start, self.num_samples):
            k = bisect.bisect_right(self.starts, pos) - 1
            e, i = divmod(pos - self.starts[k], self.sizes[k])
            if (k, e) != current:
                current = (k, e)
                perm = torch.randperm(self.sizes[k], generator=torch.Generator().manual_seed(self.seed + e))
            yield self.offsets[k] + int(perm[i])
            pos += self.world_size


class StreamDataModule(L.LightningDataModule):
    """Loaders shared by every dlm data module: ``setup`` fills ``self.datasets["train" | "eval"]``;
    training reads the resumable seeded stream, validation a disjoint shard per rank. Subclasses set
    ``batch_size``, ``eval_batch_size``, ``seed`` and ``num_workers``."""

    datasets: dict
    phase_steps: tuple[int, ...] = ()  # a curriculum: datasets["train"] a ConcatDataset, see stream_loader

    def train_dataloader(self):
        return stream_loader(self.datasets["train"], self.trainer, batch_size=self.batch_size, seed=self.seed,
                             num_workers=self.num_workers, phase_steps=self.phase_steps)

    def val_dataloader(self):
        return shard_loader(self.datasets["eval"], self.trainer, batch_size=self.eval_batch_size,
                            num_workers=self.num_workers)


class TextDataModule(StreamDataModule):
    def __init__(self, *, tokenizer, source: str, seq_len: int, mode: str = "wrap", eval_source: str | None = None,
                 text_field: str | None = None, streaming: bool = False, detokenizer: str | None = None,
                 train_split: str = "train", eval_split: str = "validation", cache_dir: str = ".cache/dlm",
                 batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int = 0,
                 max_train_tokens: int | None = None, max_eval_tokens: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.source, self.seq_len, self.mode = source, seq_len, mode
        # a local file is its own split: validation on a different file needs eval_source
        self.eval_source = eval_source
        self.text_field, self.streaming = text_field, streaming
        self.detokenizer = detokenizer
        self.splits = {"train": train_split, "eval": eval_split}
        self.cache_dir = Path(cache_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.max_tokens = {"train": max_train_tokens, "eval": max_eval_tokens}
        self.seed = seed
        self.datasets: dict = {}

    def blocks(self, which: str):
        source = self.eval_source if which == "eval" and self.eval_source else self.source
        return corpus_blocks(
            source=source, split=self.splits[which], tokenizer=self.tokenizer, seq_len=self.seq_len,
            mode=self.mode, text_field=self.text_field, streaming=self.streaming, detokenizer=self.detokenizer,
            cache_dir=self.cache_dir, max_tokens=self.max_tokens[which],
        )

    def prepare_data(self):
        # rank 0 tokenises and writes the cache; the other ranks memory-map it in setup()
        for which in ("train", "eval"):
            self.blocks(which)

    def setup(self, stage: str | None = None):
        for which in ("train", "eval"):
            if which not in self.datasets:
                self.datasets[which] = self.blocks(which)


def stream_loader(dataset, trainer, *, batch_size: int, seed: int, num_workers: int = 0,
                  phase_steps: Sequence[int] = ()) -> DataLoader:
    """The training loader: this rank's share of the resumable seeded stream, for the whole run.

    ``phase_steps`` (a curriculum): ``dataset`` is a ``ConcatDataset`` of ``len(phase_steps) + 1`` parts and
    part k + 1 takes over at optimiser step ``phase_steps[k]`` (on every rank at once)."""
    t = trainer
    if t.max_steps is None or t.max_steps <= 0:
        raise ValueError("trainer.max_steps must be set (> 0): training runs are counted in steps")
    per_step = t.accumulate_grad_batches * batch_size  # rows per optimiser step on one rank
    sizes: int | list[int] = len(dataset)
    if phase_steps:
        sizes = [len(part) for part in dataset.datasets]
        if len(sizes) != len(phase_steps) + 1:
            raise ValueError(f"a curriculum of {len(phase_steps) + 1} phases needs as many dataset parts, "
                             f"got {len(sizes)}")
    sampler = StreamSampler(
        sizes, num_samples=t.max_steps * per_step, seed=seed, rank=t.global_rank, world_size=t.world_size,
        consumed=lambda: t.global_step * per_step, starts=[0, *(s * per_step * t.world_size for s in phase_steps)],
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
                      persistent_workers=num_workers > 0)


def shard_loader(dataset, trainer, *, batch_size: int, num_workers: int = 0) -> DataLoader:
    """The validation loader: each rank scores a disjoint shard; the module all-gathers sums."""
    idx = list(range(trainer.global_rank, len(dataset), trainer.world_size))
    return DataLoader(torch.utils.data.Subset(dataset, idx), batch_size=batch_size, num_workers=num_workers)
