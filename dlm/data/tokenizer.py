"""The tokenizer protocol every data path speaks, and saving/loading tokenizer directories.

A saved tokenizer directory holds whatever files the tokenizer needs plus ``dlm_tokenizer.json``::

    {"target": "dlm.data.tokenizers.char:CharTokenizer", "kwargs": {...}, "path_kwargs": [...]}

``load_tokenizer`` rebuilds it as ``target(**kwargs)``; kwargs named in ``path_kwargs`` hold paths
relative to the directory (an HF tokenizer points at the files saved next to the spec), so a
model directory can be moved or copied and still loads with no network.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dlm.errors import CheckpointError

SPEC_FILE = "dlm_tokenizer.json"


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> ids. ``vocab_size`` includes the mask token and is the model's embedding size."""

    vocab_size: int  # including [MASK]
    mask_id: int  # always a valid id < vocab_size
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    name: str  # short description, e.g. "char-ascii", "gpt2"

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; no special tokens are added."""
        ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``; HF tokenizers run it in parallel in Rust."""
        ...

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str: ...

    def save(self, directory: str | Path) -> None:
        """Write every file needed to rebuild the tokenizer, plus ``dlm_tokenizer.json``."""
        ...

    def fingerprint(self) -> str:
        """Stable sha1 over vocabulary, merges and special ids: the token-cache key."""
        ...


def fingerprint_of(payload: Any) -> str:
    """sha1 of the canonical JSON of ``payload`` (sorted keys, so dict order never matters)."""
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


def write_tokenizer_spec(
    directory: str | Path,
    tokenizer: object,
    *,
    kwargs: dict[str, Any],
    path_kwargs: Sequence[str] = (),
) -> None:
    """Write ``dlm_tokenizer.json`` for ``type(tokenizer)(**kwargs)``; atomic (temp file + rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cls = type(tokenizer)
    spec = {
        "target": f"{cls.__module__}:{cls.__qualname__}",
        "kwargs": kwargs,
        "path_kwargs": list(path_kwargs),
    }
    tmp = directory / f".{SPEC_FILE}.tmp"
    tmp.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, directory / SPEC_FILE)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Rebuild the tokenizer saved in ``directory`` by ``Tokenizer.save``.

    Only targets inside the ``dlm.`` package are imported: a spec file is data, and an arbitrary
    ``module:callable`` in it would be code execution from a downloaded checkpoint.
    """
    directory = Path(directory)
    path = directory / SPEC_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: {directory} is not a saved dlm tokenizer directory "
            "(write one with tokenizer.save(directory))"
        )
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        target, kwargs = spec["target"], dict(spec.get("kwargs", {}))
        path_kwargs = list(spec.get("path_kwargs", []))
        module_name, _, attr = target.partition(":")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(
            f"{path} is corrupt ({err!r}); re-save the tokenizer with tokenizer.save()"
        ) from err
    if not module_name.startswith("dlm.") or not attr:
        raise CheckpointError(
            f"{path} names target {target!r}; only 'dlm.<module>:<Class>' tokenizers may be loaded"
        )
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(
            f"{path} names target {target!r}, which does not exist in this dlm version"
        ) from err
    for key in path_kwargs:
        if key not in kwargs:
            raise CheckpointError(f"{path} is corrupt: path_kwargs names {key!r}, which is not in kwargs")
        kwargs[key] = str(directory / kwargs[key])
    return cls(**kwargs)
