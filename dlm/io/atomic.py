"""The one atomic writer: every output (model directories, HF exports, sample files, eval JSON,
run summaries) is written under a temporary sibling name and renamed onto its path when complete.

A crash, an exception or Ctrl-C leaves the previous file or directory (or nothing) in place and
no temporary behind: readers never see a half-written output (DESIGN §7). The temporary lives in
the destination's folder, so the final ``os.replace`` is a rename on one file system.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def _staged(path: Path, make: Callable[[Path], Path], discard: Callable[[Path], None], *,
            replaces_dir: bool = False) -> Iterator[Path]:
    """The shared temp + rename logic: yield ``make(folder)``, rename it onto ``path`` if the block
    completes, ``discard`` it otherwise. ``replaces_dir``: an existing directory at ``path`` is
    removed first (``os.replace`` cannot replace a non-empty directory); a file writer never does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make(path.parent)
    try:
        yield tmp
        if replaces_dir and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling directory; it replaces ``path`` only if the block completes."""
    path = Path(path)

    def make(folder: Path) -> Path:
        return Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=folder))

    with _staged(path, make, lambda tmp: shutil.rmtree(tmp, ignore_errors=True), replaces_dir=True) as tmp:
        yield tmp


@contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[str]]:
    """A UTF-8 text handle on a temporary file beside ``path``, renamed onto it on success."""
    path = Path(path)

    def make(folder: Path) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        return Path(name)

    with _staged(path, make, lambda tmp: tmp.unlink(missing_ok=True)) as tmp, \
            open(tmp, "w", encoding="utf-8") as f:
        yield f


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` to ``path``, atomically."""
    with atomic_file(path) as f:
        f.write(text)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON with sorted keys, atomically."""
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def write_jsonl_atomic(path: str | Path, records: Iterable[dict]) -> None:
    """One JSON object per line, atomically."""
    with atomic_file(path) as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
