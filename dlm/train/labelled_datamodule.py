"""LabelledDataModule: (input_ids, attention_mask, labels) batches for classifier training.

Selected by ``conf/data/labelled.yaml`` (``_target_``). Rows are built in memory by
``dlm.data.labelled`` (labelled sets are small next to pre-training corpora); the training order is
the same resumable seeded stream as ``TextDataModule``'s (``StreamSampler``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from dlm.data.labelled import labelled_rows, load_labelled
from dlm.errors import ConfigError
from dlm.train.datamodule import StreamDataModule


class RowDataset(Dataset):
    """Index i -> {key: tensor[i]} over equally long tensors."""

    def __init__(self, rows: dict[str, torch.Tensor]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows["labels"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.rows.items()}


class LabelledDataModule(StreamDataModule):
    """``source`` / ``eval_source``: .jsonl files or a hub dataset (then ``train_split`` / ``eval_split``)."""

    def __init__(self, *, tokenizer, source: str, seq_len: int, eval_source: str | None = None,
                 text_field: str = "text", label_field: str = "label", classes: Sequence[str] | None = None,
                 n_classes: int | None = None, train_split: str = "train", eval_split: str = "validation",
                 batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int = 0,
                 seed: int = 0) -> None:
        super().__init__()
        if classes is not None and n_classes is not None and len(classes) != n_classes:
            raise ConfigError(f"data.classes names {len(classes)} classes but model.n_classes={n_classes}; "
                              "make them agree")
        self.tokenizer, self.seq_len = tokenizer, seq_len
        self.sources = {"train": source, "eval": eval_source or source}
        self.splits = {"train": train_split, "eval": eval_split}
        self.fields = dict(text_field=text_field, label_field=label_field,
                           classes=list(classes) if classes is not None else None, n_classes=n_classes)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.datasets: dict[str, RowDataset] = {}

    def setup(self, stage: str | None = None):
        for which in ("train", "eval"):
            if which not in self.datasets:
                texts, labels = load_labelled(self.sources[which], self.splits[which], **self.fields)
                self.datasets[which] = RowDataset(labelled_rows(texts, labels, tokenizer=self.tokenizer,
                                                                length=self.seq_len))
