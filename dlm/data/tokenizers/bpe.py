"""Byte-level BPE trained locally with the ``tokenizers`` library, wrapped as an ``HFTokenizer``.

Special tokens: ``<|endoftext|>`` (id 0, used as BOS and EOS, as in GPT-2) and ``[MASK]`` (id 1, a
real vocabulary entry, so ``mask_id`` comes from the vocabulary and ``vocab_size`` is exactly the
trained size). Byte-level means every string is representable: no [UNK], and
``decode(encode(text)) == text``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from dlm.data.corpus import LOCAL_SUFFIXES, corpus_key, load_documents
from dlm.data.tokenizer import SPEC_FILE, Tokenizer, fingerprint_of, load_tokenizer
from dlm.data.tokenizers.hf import GPT2_EOT, HFTokenizer
from dlm.errors import ConfigError

MASK_TOKEN = "[MASK]"
SPECIAL_TOKENS = (GPT2_EOT, MASK_TOKEN)
NUM_BYTES = 256  # the byte-level alphabet is always in the vocabulary
FORMAT_VERSION = 1  # bump when training changes, so cached tokenizers are retrained


def train_bpe(
    texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2, name: str | None = None
) -> HFTokenizer:
    """Train a byte-level BPE with ``vocab_size`` entries (256 bytes + 2 specials + merges).

    Fewer entries result when the texts do not contain enough pairs seen ``min_frequency`` times.
    ``texts`` is consumed once, streaming.
    """
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    smallest = NUM_BYTES + len(SPECIAL_TOKENS) + 1
    if vocab_size < smallest:
        raise ConfigError(
            f"tokenizer.vocab_size={vocab_size} is too small for byte-level BPE: it needs the 256 bytes, "
            f"{len(SPECIAL_TOKENS)} special tokens and at least one merge; use >= {smallest}"
        )
    rust = RustTokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rust.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=rust, bos_token=GPT2_EOT, eos_token=GPT2_EOT, mask_token=MASK_TOKEN
    )
    return HFTokenizer.from_transformers(hf, name=name or f"bpe-{vocab_size}", add_mask_token=False)


def load_or_train_bpe(
    *,
    source: str,
    vocab_size: int,
    cache_dir: str | Path,
    min_frequency: int = 2,
    text_field: str | None = None,
    max_documents: int | None = None,
) -> Tokenizer:
    """The BPE trained on ``load_documents(source, "train")``, trained once and cached.

    Cached under ``<cache_dir>/tokenizers/bpe-<vocab_size>-<key>/`` where the key covers the
    corpus identity (``corpus_key``), ``vocab_size``, ``min_frequency`` and ``max_documents``.
    The directory appears only when complete (temp dir + rename).
    """
    key = fingerprint_of(
        {
            "corpus": corpus_key(source, "train", text_field=text_field),
            "vocab_size": vocab_size,
            "min_frequency": min_frequency,
            "max_documents": max_documents,
            "format": FORMAT_VERSION,
        }
    )
    root = Path(cache_dir) / "tokenizers"
    final = root / f"bpe-{vocab_size}-{key[:16]}"
    if (final / SPEC_FILE).is_file():
        return load_tokenizer(final)
    docs = load_documents(source, "train", text_field=text_field)
    if max_documents is not None:
        docs = itertools.islice(docs, max_documents)
    label = Path(source).stem if Path(source).suffix in LOCAL_SUFFIXES else source
    tokenizer = train_bpe(docs, vocab_size, min_frequency=min_frequency, name=f"bpe-{vocab_size}-{label}")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        tokenizer.save(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / SPEC_FILE).is_file():  # not a concurrent writer that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(final)
