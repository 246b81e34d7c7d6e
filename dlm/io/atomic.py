"""The one atomic writer: every output (model directories, HF exports, sample files, eval JSON,
run summaries) is written under a temporary sibling name and renamed onto its path when complete.

A crash, an exception or Ctrl-C leaves the previous file or directory (or nothing) in place and
no temporary behind: readers never see a half-written output (DESIGN §7). The temporary lives in
the destination's folder, so the final ``os.replace`` is a rename on one file system. A directory
replacing an existing one is swapped in with one ``renameat2(RENAME_EXCHANGE)`` call (Linux), so
even a SIGKILL at that moment leaves a complete directory, old or new, at the path (a kill can leave
the old one under a dot-name beside it, never a partial one under the final name).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
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
        _publish(tmp, path, replaces_dir=replaces_dir)
    except BaseException:
        discard(tmp)
        raise


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """libc's renameat2 (Linux, glibc >= 2.28), or None where the C library has no such symbol."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        return libc.renameat2
    except (OSError, AttributeError, TypeError):
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (renameat2 RENAME_EXCHANGE); False where unsupported."""
    fn = _renameat2()
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _publish(tmp: Path, path: Path, *, replaces_dir: bool) -> None:
    """Put the finished ``tmp`` at ``path``. A file: ``os.replace``. A directory over an existing one:
    exchanged in one call where the OS allows (the old one, now at ``tmp``, is then removed); elsewhere
    the old one is renamed aside first, then removed."""
    if replaces_dir and path.is_dir() and not path.is_symlink():
        if _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        os.replace(path, aside / path.name)
        os.replace(tmp, path)
        shutil.rmtree(aside, ignore_errors=True)
        return
    os.replace(tmp, path)


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
