"""Turning tokenized documents into fixed-length rows of ``seq_len`` tokens: wrapping (packing) and padding.

Pure numpy. The ``iter_*`` generators consume documents lazily and hold only the current
partial row (plus the current document), so the token-cache builder streams corpora of any size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from dlm.errors import ConfigError


def iter_wrapped_blocks(
    docs: Iterable[Sequence[int]], seq_len: int, *, bos_id: int | None, eos_id: int | None
) -> Iterator[np.ndarray]:
    """Rows (seq_len,) int64 of the concatenated document stream.

    Every document gets ``eos_id`` appended (when given) and the documents are concatenated.
    - ``bos_id`` given (MDLM ``_group_texts``): the stream is cut into pieces of
      ``seq_len - 2`` and each row is ``[BOS] + piece + [EOS]`` (``seq_len - 1`` and no
      trailing EOS when ``eos_id`` is None). A row's final EOS is added even when the piece
      already ends with a document's EOS, exactly as MDLM does.
    - ``bos_id`` None (SEDD/RADD ``group_texts``): rows are plain ``seq_len`` chunks.
    The remainder shorter than one piece is dropped. Unlike SEDD/RADD, which drop a remainder
    per ``datasets.map`` batch of 1000 documents, the stream here is global.
    """
    frame = [] if bos_id is None else [bos_id]
    tail = [] if bos_id is None or eos_id is None else [eos_id]
    piece = seq_len - len(frame) - len(tail)
    if piece < 1:
        raise ConfigError(
            f"data.seq_len={seq_len} leaves no room for text next to the {len(frame) + len(tail)} "
            "special tokens of each row; use a larger data.seq_len"
        )
    head_arr, tail_arr = np.asarray(frame, dtype=np.int64), np.asarray(tail, dtype=np.int64)
    eos = np.asarray([] if eos_id is None else [eos_id], dtype=np.int64)
    buf = np.empty(0, dtype=np.int64)
    for doc in docs:
        # buf is shorter than one piece here, so this concatenation is O(piece + document)
        buf = np.concatenate([buf, np.asarray(doc, dtype=np.int64), eos])
        n = len(buf) // piece
        for k in range(n):
            yield np.concatenate([head_arr, buf[k * piece : (k + 1) * piece], tail_arr])
        buf = buf[n * piece :]


def wrap(
    docs: Iterable[Sequence[int]], seq_len: int, *, bos_id: int | None, eos_id: int | None
) -> np.ndarray:
    """All rows of ``iter_wrapped_blocks`` as one (N, seq_len) int64 array."""
    rows = list(iter_wrapped_blocks(docs, seq_len, bos_id=bos_id, eos_id=eos_id))
    return np.stack(rows) if rows else np.empty((0, seq_len), dtype=np.int64)


def iter_padded_blocks(
    docs: Iterable[Sequence[int]],
    seq_len: int,
    *,
    bos_id: int | None,
    eos_id: int | None,
    pad_id: int | None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One (ids (L,), attention_mask (L,)) pair per document: ``[BOS] doc [EOS]``, padded.

    A long document is truncated inside, keeping its BOS and EOS (as HF ``truncation=True`` with
    special tokens does, MDLM's LM1B setting). ``attention_mask`` is 1 on real tokens, 0 on pads.
    """
    if pad_id is None:
        raise ConfigError("data.mode=pad needs a tokenizer with a pad token (pad_id is None); use mode=wrap")
    head = [] if bos_id is None else [bos_id]
    tail = [] if eos_id is None else [eos_id]
    room = seq_len - len(head) - len(tail)
    if room < 1:
        raise ConfigError(
            f"data.seq_len={seq_len} leaves no room for text next to BOS/EOS; use a larger one"
        )
    for doc in docs:
        body = np.asarray(doc, dtype=np.int64)[:room]
        real = np.concatenate([np.asarray(head, dtype=np.int64), body, np.asarray(tail, dtype=np.int64)])
        ids = np.full(seq_len, pad_id, dtype=np.int64)
        ids[: len(real)] = real
        mask = np.zeros(seq_len, dtype=np.int64)
        mask[: len(real)] = 1
        yield ids, mask


def pad(
    docs: Iterable[Sequence[int]],
    seq_len: int,
    *,
    bos_id: int | None,
    eos_id: int | None,
    pad_id: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """All of ``iter_padded_blocks``: ids (N, L) int64 and attention_mask (N, L) int64."""
    pairs = list(iter_padded_blocks(docs, seq_len, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id))
    if not pairs:
        empty = np.empty((0, seq_len), dtype=np.int64)
        return empty, empty.copy()
    ids, masks = zip(*pairs, strict=True)
    return np.stack(ids), np.stack(masks)
