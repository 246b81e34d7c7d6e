"""Labelled sequences for classifiers (classifier guidance): documents with a class, as padded token rows.

``load_labelled(source, split, ...)`` reads (text, class index) pairs from a local ``.jsonl`` (one object
per line, text in ``text_field``, class in ``label_field``) or a hub dataset with those two columns.
``labelled_rows`` turns them into fixed-width rows

    input_ids      (N, length) long   [BOS] text ... (truncated), then padding
    attention_mask (N, length) long   1 = token, 0 = padding
    labels         (N,)        long   class index in [0, n_classes)

A label is either an int class index or, when ``classes`` names the classes, one of those names
(``classes=[negative, positive]`` maps "positive" -> 1). Every label is checked before training starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from dlm.data.hub_reach import datasets_offline_unless_reachable
from dlm.errors import ConfigError, OfflineError


def class_index(value: object, classes: Sequence[str] | None, n_classes: int | None, where: str) -> int:
    """The class index of one raw label (an int index, or a name from ``classes``)."""
    if classes is not None:
        names = [str(c) for c in classes]
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ConfigError(f"{where}: label {value!r} is neither a class name nor an index; classes: {names}")
        if isinstance(value, str):
            if value not in names:
                raise ConfigError(f"{where}: label {value!r} is not one of data.classes={names}")
            return names.index(value)
        n_classes = len(names)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: label {value!r} is not an integer class index; string labels need "
                          "data.classes=[name0, name1, ...] to map them to indices")
    if n_classes is not None and not 0 <= value < n_classes:
        raise ConfigError(f"{where}: label {value} is outside [0, {n_classes}); check data.label_field or "
                          "model.n_classes")
    if value < 0:
        raise ConfigError(f"{where}: label {value} is negative; class indices start at 0")
    return value


def load_labelled(source: str, split: str, *, text_field: str = "text", label_field: str = "label",
                  classes: Sequence[str] | None = None, n_classes: int | None = None
                  ) -> tuple[list[str], list[int]]:
    """(texts, class indices) of ``split`` of ``source``: a local .jsonl (used as is for any split)
    or a hub dataset name (``datasets.load_dataset(source, split=split)``)."""
    path = Path(source).expanduser()
    if path.suffix == ".jsonl" or path.exists():
        if path.suffix != ".jsonl":
            raise ConfigError(f"data.source={source} must be a .jsonl file (one object per line with "
                              f"{text_field!r} and {label_field!r})")
        if not path.is_file():
            raise ConfigError(f"data.source={source} does not exist; give an existing .jsonl file")
        rows = _jsonl_rows(path)
    else:
        rows = _hub_rows(source, split, text_field, label_field)
    texts, labels = [], []
    for where, row in rows:
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str) or label_field not in row:
            fields = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ConfigError(f"{where} needs a string field {text_field!r} and a field {label_field!r} "
                              f"(fields: {fields}); set data.text_field / data.label_field")
        texts.append(row[text_field])
        labels.append(class_index(row[label_field], classes, n_classes, where))
    if not texts:
        raise ConfigError(f"data.source={source} split {split!r} holds no labelled rows")
    return texts, labels


def _jsonl_rows(path: Path) -> Iterable[tuple[str, object]]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{line_no}", json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{line_no} is not valid JSON ({err.msg}); expected one object per line") from err


def _hub_rows(source: str, split: str, text_field: str, label_field: str) -> Iterable[tuple[str, object]]:
    import datasets

    try:
        with datasets_offline_unless_reachable():
            ds = datasets.load_dataset(source, split=split)
    except OSError as err:
        raise OfflineError(f"could not load labelled dataset {source!r} split {split!r} from the Hugging Face hub "
                           f"({err}); use a local file: data.source=/path/to/file.jsonl") from err
    missing = {text_field, label_field} - set(ds.column_names)
    if missing:
        raise ConfigError(f"{source} has no column(s) {sorted(missing)}; columns: {ds.column_names}; set "
                          "data.text_field / data.label_field")
    for i, row in enumerate(ds.select_columns([text_field, label_field])):
        yield f"{source}[{split}][{i}]", row


def labelled_rows(texts: Sequence[str], labels: Sequence[int], *, tokenizer, length: int) -> dict[str, Tensor]:
    """Padded rows (see module docstring): [BOS] (when the tokenizer has one) + text, cut to ``length``.

    Padding uses the pad id (else EOS, else 0); its value never matters because attention and the
    classifier's pooling both skip positions with attention_mask 0.
    """
    if length < 2:
        raise ConfigError(f"data.seq_len={length} must be >= 2 for labelled rows")
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    pad = next((i for i in (tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)
    ids = torch.full((len(texts), length), pad, dtype=torch.long)
    attention = torch.zeros((len(texts), length), dtype=torch.long)
    for r, toks in enumerate(tokenizer.encode_batch(list(texts))):
        row = (bos + toks)[:length]
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[r, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": attention, "labels": torch.tensor(list(labels), dtype=torch.long)}
