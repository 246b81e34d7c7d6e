"""Where documents come from: the embedded pydoc corpus, local files, or named hub datasets.

``load_documents(source, split)`` validates eagerly (unknown names, bad splits and missing files
fail at the call, before any compute) and returns a lazy iterable of strings, one per document,
so a corpus larger than memory streams through the token-cache builder. Messages name the options
of the command in use (``SourceKeys``): dlm-train's ``data.source`` / ``data.text_field``,
dlm-eval-ppl's ``data=``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlm.data.hub_reach import datasets_offline_unless_reachable
from dlm.errors import ConfigError, OfflineError

SPLITS = ("train", "validation", "test")
LOCAL_SUFFIXES = (".txt", ".jsonl")
PYDOC = "pydoc"
PYDOC_HELDOUT_EVERY = 20  # topics 0, 20, 40, 60 (sorted by key) are held out


@dataclass(frozen=True)
class HFDataset:
    """A hub dataset: repo, config, our split -> ``datasets`` split expression, text column.

    ``char_range`` cuts one long string per split by character offsets (text8 is one 100M-char
    row); ``chunk_chars`` then cuts it into documents of that many characters.
    """

    path: str
    config: str | None
    splits: Mapping[str, str]
    text_column: str = "text"
    revision: str | None = None
    char_range: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    chunk_chars: int | None = None


@dataclass(frozen=True)
class SourceKeys:
    """How the command in use spells its data options, so a message's fix is one the command accepts.

    ``source``: the key taking a corpus name or a local file; ``text_field``: the key naming a .jsonl
    file's text field (None: the command has none and reads the field "text").
    """

    source: str
    text_field: str | None

    def text_field_fix(self) -> str:
        return (f"set {self.text_field} to the field holding the text" if self.text_field
                else f"{self.source}= reads the field \"text\" of a .jsonl file: put the text there")

    def local_files_fix(self) -> str:
        jsonl = (f"{self.source}=/path/to/file.jsonl with {self.text_field}=<field>" if self.text_field
                 else f"{self.source}=/path/to/file.jsonl (text in the field \"text\")")
        return (f"Use local files instead: {self.source}=/path/to/file.txt (documents separated by two empty "
                f"lines, or one per line) or {jsonl}.")


TRAIN_KEYS = SourceKeys(source="data.source", text_field="data.text_field")  # dlm-train's data config
EVAL_PPL_KEYS = SourceKeys(source="data", text_field=None)  # dlm-eval-ppl data=<name or local file>

_SAME = {s: s for s in SPLITS}
HF_DATASETS: dict[str, HFDataset] = {
    # OpenWebText has only a train split; MDLM holds out its last 100k documents for validation
    "openwebtext": HFDataset(
        "Skylion007/openwebtext",
        None,
        {"train": "train[:-100000]", "validation": "train[-100000:]", "test": "train[-100000:]"},
    ),
    "wikitext2": HFDataset("Salesforce/wikitext", "wikitext-2-raw-v1", _SAME),
    "wikitext103": HFDataset("Salesforce/wikitext", "wikitext-103-raw-v1", _SAME),
    # the original "lm1b" is a loading script, which datasets>=4 no longer runs; this is a parquet copy
    # with train and test only (MDLM evaluates LM1B on test)
    "lm1b": HFDataset("dvruette/lm1b", None, {"train": "train", "validation": "test", "test": "test"}),
    # one 100M-character string; the standard 90M/5M/5M split, in MDLM's 256-character documents
    "text8": HFDataset(
        "afmck/text8",
        None,
        {s: "train" for s in SPLITS},
        char_range={
            "train": (0, 90_000_000),
            "validation": (90_000_000, 95_000_000),
            "test": (95_000_000, 100_000_000),
        },
        chunk_chars=256,
    ),
    # a script dataset: its parquet conversion is what datasets>=4 can read
    "ptb": HFDataset(
        "ptb-text-only/ptb_text_only",
        "penn_treebank",
        _SAME,
        text_column="sentence",
        revision="refs/convert/parquet",
    ),
    # an evaluation set: only the test split exists
    "lambada": HFDataset("EleutherAI/lambada_openai", "default", {"validation": "test", "test": "test"}),
}


def load_documents(
    source: str, split: str, *, text_field: str | None = None, streaming: bool = False,
    keys: SourceKeys = TRAIN_KEYS,
) -> Iterable[str]:
    """Documents of ``split`` from ``source``.

    - ``"pydoc"``: the English reference documentation shipped inside every CPython install
      (``pydoc_data.topics``: 79 topics, ~465 KB of real prose with code samples), one document
      per topic sorted by key. It is the offline default: present on any machine with Python,
      nothing to download. Splits are by document: every 20th topic (indices 0, 20, 40, 60) is
      held out as "validation" and also serves as "test"; "train" is the other 75.
    - a local ``.txt`` file: documents are separated by two empty lines ("\\n\\n\\n"); a file
      without any such separator has one document per non-blank line. ``.jsonl``: one JSON
      object per line, text in ``text_field`` (default "text", as in LAMBADA's jsonl).
      A local file *is* the split you ask for (no carving): pass one file per split.
    - a name in ``HF_DATASETS`` (openwebtext, wikitext2, wikitext103, lm1b, text8, ptb, lambada),
      loaded with ``datasets.load_dataset(..., streaming=streaming)``.
    ``keys``: the option names of the calling command, used in error messages.
    """
    if source == PYDOC:
        _check_split(source, split, SPLITS)
        return _pydoc_documents(split, keys)
    path = Path(source).expanduser()
    if path.suffix in LOCAL_SUFFIXES:
        return _local_documents(path, text_field, keys)
    if source in HF_DATASETS:
        return _hub_documents(source, HF_DATASETS[source], split, text_field, streaming, keys)
    if path.exists():
        return _local_documents(path, text_field, keys)  # names the supported suffixes
    raise ConfigError(
        f"{keys.source}={source!r} is not a known corpus; valid names: "
        f"{', '.join([PYDOC, *HF_DATASETS])}; a local .txt or .jsonl path also works"
    )


def corpus_key(source: str, split: str, *, text_field: str | None = None) -> dict[str, Any]:
    """What identifies the documents of ``(source, split)``, for cache keys.

    pydoc topics change between Python versions; a local file is identified by its absolute
    path, size and modification time, so editing it invalidates caches built from it.
    """
    key: dict[str, Any] = {"source": source, "split": split, "text_field": text_field}
    if source == PYDOC:
        key["python"] = list(sys.version_info[:2])
    elif Path(source).expanduser().is_file():
        path = Path(source).expanduser().resolve()
        stat = path.stat()
        key.update(source=str(path), size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    return key


def _check_split(source: str, split: str, valid: Iterable[str]) -> None:
    valid = list(valid)
    if split not in valid:
        raise ConfigError(f"{source} has no split {split!r}; valid splits: {', '.join(valid)}")


def _pydoc_documents(split: str, keys: SourceKeys) -> Iterator[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError as err:  # some distro Pythons strip it; say what to use instead
        raise ConfigError(
            f"this Python has no pydoc_data module, so {keys.source}=pydoc is unavailable; "
            f"use a local file instead: {keys.source}=/path/to/file.txt"
        ) from err
    keys = sorted(topics)
    heldout = split != "train"
    return iter([topics[k] for i, k in enumerate(keys) if (i % PYDOC_HELDOUT_EVERY == 0) == heldout])


def _local_documents(path: Path, text_field: str | None, keys: SourceKeys) -> Iterator[str]:
    if path.suffix not in LOCAL_SUFFIXES:
        raise ConfigError(
            f"{keys.source}={path} has suffix {path.suffix!r}; local files must be .txt or .jsonl"
        )
    if not path.is_file():
        raise ConfigError(f"{keys.source}={path} does not exist; give an existing .txt or .jsonl file")
    if path.suffix == ".jsonl":
        return _jsonl_documents(path, text_field or "text", keys)
    return _txt_documents(path, by_blank_pairs=_contains(path, "\n\n\n"))


def _contains(path: Path, needle: str, chunk: int = 1 << 20) -> bool:
    """Whether ``needle`` occurs in the text file, reading it in chunks (memory O(chunk))."""
    tail = ""
    with open(path, encoding="utf-8") as f:
        while block := f.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-(len(needle) - 1) :]
    return False


def _txt_documents(path: Path, *, by_blank_pairs: bool) -> Iterator[str]:
    """Documents split on two empty lines (``by_blank_pairs``), else one per non-blank line."""
    with open(path, encoding="utf-8") as f:
        if not by_blank_pairs:
            for line in f:
                if line.strip():
                    yield line.rstrip("\n")
            return
        lines: list[str] = []
        empty_run = 0
        for line in f:
            empty_run = empty_run + 1 if line == "\n" else 0
            lines.append(line)
            if empty_run == 2:  # "\n\n\n" in the file: the document before it is complete
                doc = "".join(lines).strip("\n")
                if doc:
                    yield doc
                lines = []
        doc = "".join(lines).strip("\n")
        if doc:
            yield doc


def _jsonl_documents(path: Path, text_field: str, keys: SourceKeys) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(
                    f"{path}:{line_no} is not valid JSON ({err.msg}); expected one object per line"
                ) from err
            if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
                fields = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise ConfigError(
                    f"{path}:{line_no} has no string field {text_field!r} (fields: {fields}); "
                    f"{keys.text_field_fix()}"
                )
            yield row[text_field]


_SLICE = re.compile(r"^(\w+)\[(-?\d*):(-?\d*)\]$")


def _load_split(datasets, spec: HFDataset, expr: str, sliced: re.Match | None, streaming: bool, source: str):
    """``datasets.load_dataset`` of one split expression (``train``, ``train[:1000]``)."""
    if streaming and sliced:
        # datasets cannot slice a split while streaming: stream the whole split, then skip/take
        ds = datasets.load_dataset(spec.path, spec.config, split=sliced.group(1), streaming=True,
                                   revision=spec.revision)
        return _slice_stream(ds, source, expr, sliced)
    return datasets.load_dataset(spec.path, spec.config, split=expr, streaming=streaming, revision=spec.revision)


def _hub_documents(
    source: str, spec: HFDataset, split: str, text_field: str | None, streaming: bool, keys: SourceKeys
) -> Iterator[str]:
    _check_split(source, split, spec.splits)
    import datasets  # ~1 s to import: only when a hub corpus is asked for

    expr = spec.splits[split]
    sliced = _SLICE.match(expr)
    try:
        with datasets_offline_unless_reachable():
            ds = _load_split(datasets, spec, expr, sliced, streaming, source)
    except OSError as err:  # ConnectionError, DatasetNotFoundError and friends are all OSErrors
        raise OfflineError(
            f"could not load dataset {source!r} ({spec.path}, split {expr!r}) from the Hugging Face hub: the hub is "
            f"unreachable (offline?) or no longer serves it, and it is not in the local HF cache ({err}). "
            f"{keys.local_files_fix()} "
            "HF_HUB_OFFLINE=1 uses the HF cache only, without network retries."
        ) from err
    column = text_field or spec.text_column
    if ds.column_names is not None and column not in ds.column_names:
        raise ConfigError(
            f"{source} ({spec.path}) has no column {column!r}; columns: {', '.join(ds.column_names)}; "
            "set data.text_field to one of them"
        )
    texts = (text for batch in ds.iter(batch_size=1000) for text in batch[column])
    if split in spec.char_range:
        texts = _cut_characters(texts, spec.char_range[split])
    if spec.chunk_chars:
        texts = _chunks(texts, spec.chunk_chars)
    return texts


def _slice_stream(ds: Any, source: str, expr: str, sliced: re.Match) -> Any:
    start, stop = (int(g) if g else None for g in sliced.group(2, 3))
    if (start is not None and start < 0) or (stop is not None and stop < 0):
        info = ds.info.splits.get(sliced.group(1)) if ds.info.splits else None
        if info is None or not info.num_examples:
            raise ConfigError(
                f"{source} split {expr!r} counts from the end, but the hub does not say how many rows the split "
                "has, so it cannot be streamed; set data.streaming=false"
            )
        start, stop = slice(start, stop).indices(info.num_examples)[:2]
    start = start or 0
    ds = ds.skip(start) if start else ds
    return ds.take(stop - start) if stop is not None else ds


def _cut_characters(texts: Iterable[str], char_range: tuple[int, int]) -> Iterator[str]:
    start, stop = char_range
    yield "".join(texts)[start:stop]


def _chunks(texts: Iterable[str], size: int) -> Iterator[str]:
    for text in texts:
        for i in range(0, len(text), size):
            yield text[i : i + size]
