"""Tokenizer files: where a model directory's tokenizer is stored and how it is read back.

A tokenizer writes its own files (``Tokenizer.save``: vocabulary, merges, HF files, plus
``dlm_tokenizer.json``, see ``dlm.data.tokenizer``); this module is where the rest of dlm saves and
finds them, so storage has one home. Inside a model directory the files live in ``tokenizer/``.
"""

from __future__ import annotations

from pathlib import Path

from dlm.data.tokenizer import SPEC_FILE, Tokenizer
from dlm.data.tokenizer import load_tokenizer as _read_tokenizer_dir
from dlm.errors import CheckpointError
from dlm.io.hub import resolve_model_path

TOKENIZER_DIR = "tokenizer"  # inside a model directory


def save_tokenizer(tokenizer: Tokenizer, directory: str | Path) -> None:
    """Write every file ``tokenizer`` needs into ``directory`` (inside an atomic writer's temp dir)."""
    tokenizer.save(Path(directory))


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Rebuild a tokenizer saved in ``directory`` (only ``dlm.*`` tokenizer classes are built)."""
    return _read_tokenizer_dir(directory)


def tokenizer_of(path: str | Path, *, key: str = "tokenizer_from") -> Tokenizer:
    """The tokenizer of a model directory (``<path>/tokenizer/``) or of a saved tokenizer directory; a
    Hugging Face Hub id of either is fetched first (``dlm.io.hub``)."""
    path = resolve_model_path(path, marker=None)
    for candidate in (path / TOKENIZER_DIR, path):
        if (candidate / SPEC_FILE).is_file():
            return load_tokenizer(candidate)
    raise CheckpointError(f"{key}={path} holds no dlm tokenizer ({SPEC_FILE} in it or in its {TOKENIZER_DIR}/); "
                          "give a model directory written by dlm-train or dlm-convert")
