"""Tokenized, packed blocks cached on disk and memory-mapped.

Layout of ``<cache_dir>/<key>/``::

    ids.u16.npy | ids.u32.npy   (N, L) token ids; uint16 whenever every id fits
    attention_mask.npy          (N, L) uint8, pad mode only
    meta.json                   key parts, counts, tokenizer name

``key`` is the sha1 of the key parts, the tokenizer fingerprint, the row length, mode, detokenizer,
``max_tokens`` and the format version. The directory is written under a temporary name and
renamed when complete, so a crash leaves nothing that looks like a cache; a second call with
the same key memory-maps the files and never calls ``documents_fn``.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from dlm.data.packing import iter_padded_blocks, iter_wrapped_blocks
from dlm.data.tokenizer import Tokenizer, fingerprint_of
from dlm.errors import CheckpointError, ConfigError

FORMAT_VERSION = 1  # bump when the layout or the packing rules change
META_FILE = "meta.json"
MASK_FILE = "attention_mask.npy"
Mode = Literal["wrap", "pack", "pad"]
MODES = ("wrap", "pack", "pad")
# the modes whose rows end with an [EOS] slot (wrap: every row; pad: the longest documents): a model trained on
# them never saw text in the last position, so a scorer's rows should leave it out
EOS_SLOT: dict[str, bool] = {"wrap": True, "pack": False, "pad": True}
_ENCODE_BATCH = 256  # documents per encode_batch call (HF tokenizers parallelise inside one call)
_WRITE_ROWS = 1024  # rows buffered per disk write


class TokenBlocks(Dataset):
    """Rows of a token cache: ``{"input_ids": (L,) long}`` plus ``"attention_mask": (L,) long`` in pad mode.

    The arrays are opened lazily with ``np.load(mmap_mode="r")`` and dropped when pickled, so
    DataLoader workers (fork or spawn) each map the file instead of copying the data.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        path = self.directory / META_FILE
        try:
            self.meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            # caches written before the rename name the row length "block_size"
            self.seq_len = int(self.meta["seq_len"] if "seq_len" in self.meta else self.meta["block_size"])
            self.num_tokens = int(self.meta["num_tokens"])
            self._num_blocks = int(self.meta["num_blocks"])
            self._ids_file, self._has_mask = self.meta["ids_file"], self.meta["mode"] == "pad"
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"token cache {path} is missing or corrupt ({err!r}); delete {self.directory} to rebuild it"
            ) from err
        self._ids: np.ndarray | None = None
        self._mask: np.ndarray | None = None

    @property
    def ids(self) -> np.ndarray:
        """All rows (N, L), memory-mapped (uint16 or uint32)."""
        if self._ids is None:
            self._ids = self._open(self._ids_file)
            if self._has_mask:
                self._mask = self._open(MASK_FILE)
        return self._ids

    def _open(self, name: str) -> np.ndarray:
        path = self.directory / name
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise CheckpointError(
                f"token cache file {path} is missing or corrupt ({err}); delete {self.directory} to rebuild it"
            ) from err
        if arr.shape != (self._num_blocks, self.seq_len):
            raise CheckpointError(
                f"token cache file {path} has shape {arr.shape}, meta.json says {(self._num_blocks, self.seq_len)}; "
                f"delete {self.directory} to rebuild it"
            )
        return arr

    def __len__(self) -> int:
        return self._num_blocks

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(self.ids[i].astype(np.int64))
        if self._mask is None:
            # wrap/pack rows are all real tokens: no mask, so attention keeps its fused no-mask kernel
            return {"input_ids": ids}
        return {"input_ids": ids, "attention_mask": torch.from_numpy(self._mask[i].astype(np.int64))}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ids": None, "_mask": None}


def cache_key(
    *,
    key_parts: dict[str, Any],
    tokenizer: Tokenizer,
    seq_len: int,
    mode: str,
    detokenizer: Callable[[str], str] | None = None,
    max_tokens: int | None = None,
) -> str:
    """sha1 naming the cache directory; everything that changes the rows is in it."""
    return fingerprint_of(
        {
            "key_parts": key_parts,
            "tokenizer": tokenizer.fingerprint(),
            # hashed under the row length's former name: renaming the field would change every key and
            # re-tokenize every existing cache (hours for OpenWebText) for no change in the rows
            "block_size": seq_len,
            "mode": mode,
            "detokenizer": None
            if detokenizer is None
            else getattr(detokenizer, "__qualname__", repr(detokenizer)),
            "max_tokens": max_tokens,
            "format": FORMAT_VERSION,
        }
    )


def build_or_load_blocks(
    *,
    documents_fn: Callable[[], Iterable[str]],
    tokenizer: Tokenizer,
    seq_len: int,
    mode: Mode,
    cache_dir: str | Path,
    key_parts: dict[str, Any],
    detokenizer: Callable[[str], str] | None = None,
    max_tokens: int | None = None,
    show_progress: bool = True,
) -> TokenBlocks:
    """Load the cached blocks for this key, or tokenize ``documents_fn()`` and cache them.

    ``mode``: "wrap" = MDLM rows ``[BOS] piece [EOS]``; "pack" = SEDD/RADD plain chunks of the
    EOS-separated stream (no BOS); "pad" = one padded ``[BOS] doc [EOS]`` row per document.
    ``seq_len``: tokens per row. ``max_tokens`` stops after ``ceil(max_tokens / seq_len)`` rows (quick runs;
    part of the key).
    """
    if mode not in MODES:
        raise ConfigError(f"data.mode={mode!r} is unknown; valid: {', '.join(MODES)}")
    if seq_len < 2:
        raise ConfigError(f"data.seq_len={seq_len} must be at least 2")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"max_tokens={max_tokens} must be positive, or null for the whole corpus")
    if mode == "pad" and tokenizer.pad_id is None:
        raise ConfigError(
            f"data.mode=pad needs a pad token, and tokenizer {tokenizer.name} has none; use data.mode=wrap"
        )
    key = cache_key(
        key_parts=key_parts, tokenizer=tokenizer, seq_len=seq_len, mode=mode,
        detokenizer=detokenizer, max_tokens=max_tokens,
    )  # fmt: skip
    root = Path(cache_dir)
    final = root / key
    if (final / META_FILE).is_file():
        return TokenBlocks(final)
    if final.exists():
        raise CheckpointError(
            f"token cache {final} exists but has no {META_FILE}; delete that directory to rebuild it"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        meta = _write_blocks(
            tmp, documents_fn(), tokenizer=tokenizer, seq_len=seq_len, mode=mode,
            detokenizer=detokenizer, max_tokens=max_tokens, show_progress=show_progress,
        )  # fmt: skip
        meta["key_parts"] = key_parts
        (tmp / META_FILE).write_text(
            json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
        )
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / META_FILE).is_file():  # not another rank that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TokenBlocks(final)


def _write_blocks(
    directory: Path,
    documents: Iterable[str],
    *,
    tokenizer: Tokenizer,
    seq_len: int,
    mode: Mode,
    detokenizer: Callable[[str], str] | None,
    max_tokens: int | None,
    show_progress: bool,
) -> dict[str, Any]:
    # every id is < vocab_size, so uint16 holds any vocabulary of up to 2**16 entries
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    ids_file = f"ids.u{dtype.itemsize * 8}.npy"
    max_rows = None if max_tokens is None else math.ceil(max_tokens / seq_len)
    progress = tqdm(
        desc=f"tokenizing ({tokenizer.name})", unit="tok", unit_scale=True, disable=not show_progress
    )
    num_read = 0

    def token_lists() -> Iterator[list[int]]:
        nonlocal num_read
        for ids in _encode_stream(documents, tokenizer, detokenizer):
            num_read += len(ids)
            progress.update(len(ids))
            yield ids

    if mode == "pad":
        rows: Iterator[Any] = iter_padded_blocks(
            token_lists(),
            seq_len,
            bos_id=tokenizer.bos_id,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
        )
    else:
        bos_id = tokenizer.bos_id if mode == "wrap" else None
        rows = iter_wrapped_blocks(token_lists(), seq_len, bos_id=bos_id, eos_id=tokenizer.eos_id)
    rows = itertools.islice(rows, max_rows)
    ids_out = _NpyRowWriter(directory / ids_file, dtype, seq_len)
    mask_out = _NpyRowWriter(directory / MASK_FILE, np.dtype(np.uint8), seq_len) if mode == "pad" else None
    num_real = 0
    try:
        while chunk := list(itertools.islice(rows, _WRITE_ROWS)):
            if mask_out is None:
                ids_out.append(np.stack(chunk))
            else:
                masks = np.stack([m for _, m in chunk])
                ids_out.append(np.stack([r for r, _ in chunk]))
                mask_out.append(masks)
                num_real += int(masks.sum())
    finally:
        progress.close()
        ids_out.close()
        if mask_out is not None:
            mask_out.close()
    if ids_out.rows == 0:
        raise ConfigError(
            f"the corpus gave no row of data.seq_len={seq_len} tokens ({num_read} tokens read); "
            "use a longer corpus or a smaller data.seq_len"
        )
    num_tokens = num_real if mode == "pad" else ids_out.rows * seq_len
    return {
        "seq_len": seq_len, "mode": mode, "num_blocks": ids_out.rows, "num_tokens": num_tokens,
        "ids_file": ids_file, "dtype": dtype.name, "tokenizer": tokenizer.name,
        "tokenizer_fingerprint": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size,
        "max_tokens": max_tokens, "format": FORMAT_VERSION,
    }  # fmt: skip


def _encode_stream(
    documents: Iterable[str], tokenizer: Tokenizer, detokenizer: Callable[[str], str] | None
) -> Iterator[list[int]]:
    docs = iter(documents)
    done = 0  # documents encoded so far
    while batch := list(itertools.islice(docs, _ENCODE_BATCH)):
        if detokenizer is not None:
            batch = [detokenizer(d) for d in batch]
        try:
            encoded = tokenizer.encode_batch(batch)
        except ConfigError as err:
            # a strict alphabet (DNA, protein) names the character and its position in the text;
            # add which document of the corpus holds it
            raise ConfigError(f"document {done + _first_refused(batch, tokenizer) + 1} of the corpus (counting "
                              f"from 1, in file order): {err}") from err
        done += len(batch)
        yield from encoded


def _first_refused(batch: list[str], tokenizer: Tokenizer) -> int:
    """Index in ``batch`` of the first document ``tokenizer`` refuses (only called after a refusal)."""
    for i, doc in enumerate(batch):
        try:
            tokenizer.encode(doc)
        except ConfigError:
            return i
    return 0


class _NpyRowWriter:
    """Appends (k, L) row blocks to a ``.npy`` file whose row count is known only at the end.

    A memory map (``open_memmap``) needs the shape up front; a streaming corpus has no known
    length. So the header is written for a placeholder row count of the widest size, rows are
    streamed after it, and ``close`` rewrites the header in place, space-padded to the same
    length (the ``.npy`` format allows header padding; numpy pads the same way).
    """

    _PLACEHOLDER_ROWS = 10**15

    def __init__(self, path: Path, dtype: np.dtype, row_len: int) -> None:
        self.path, self.dtype, self.row_len, self.rows = path, dtype, row_len, 0
        self._f: BinaryIO = open(path, "wb")  # noqa: SIM115  # closed in close()
        self._header_len = len(self._header(self._PLACEHOLDER_ROWS))
        self._f.write(self._header(self._PLACEHOLDER_ROWS))

    def _header(self, rows: int) -> bytes:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buf,
            {
                "descr": np.lib.format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": (rows, self.row_len),
            },
        )
        return buf.getvalue()

    def append(self, block: np.ndarray) -> None:
        if block.max(initial=0) > np.iinfo(self.dtype).max or block.min(initial=0) < 0:
            raise ValueError(f"{self.path.name}: ids outside [0, {np.iinfo(self.dtype).max}]")
        self._f.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += len(block)

    def close(self) -> None:
        if self._f.closed:
            return
        header = self._header(self.rows)
        pad = self._header_len - len(header)  # >= 0: fewer digits than the placeholder
        if pad:
            # format 1.0: magic (6) + version (2) + uint16 header length (2) + header ending in "\n"
            header = (
                header[:8] + struct.pack("<H", self._header_len - 10) + header[10:-1] + b" " * pad + b"\n"
            )
        self._f.seek(0)
        self._f.write(header)
        self._f.close()
