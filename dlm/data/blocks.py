"""One split of one corpus as fixed-length token blocks, cached on disk (training and evaluation)."""

from __future__ import annotations

from pathlib import Path

from dlm.data.corpus import TRAIN_KEYS, SourceKeys, corpus_key, load_documents
from dlm.data.detokenizers import get_detokenizer
from dlm.data.token_cache import build_or_load_blocks


def corpus_blocks(*, source: str, split: str, tokenizer, seq_len: int, mode: str = "wrap",
                  text_field: str | None = None, streaming: bool = False, detokenizer: str | None = None,
                  cache_dir: str | Path = ".cache/dlm", max_tokens: int | None = None,
                  keys: SourceKeys = TRAIN_KEYS):
    """TokenBlocks of ``split`` of ``source`` (a conf/data corpus name, a hub name or a local file).

    Documents pass through the named detokenizer before tokenisation (zero-shot WikiText/PTB/LM1B
    text is stored pre-tokenised). The cache key covers every argument that changes the ids. ``keys``:
    the calling command's option names, for error messages (``dlm.data.corpus.SourceKeys``).
    """
    detok = get_detokenizer(detokenizer)

    def documents():
        for doc in load_documents(source, split, text_field=text_field, streaming=streaming, keys=keys):
            yield detok(doc)

    return build_or_load_blocks(
        documents_fn=documents, tokenizer=tokenizer, seq_len=seq_len, mode=mode, cache_dir=cache_dir,
        key_parts={**corpus_key(str(source), split, text_field=text_field), "detokenizer": detokenizer},
        max_tokens=max_tokens,
    )
