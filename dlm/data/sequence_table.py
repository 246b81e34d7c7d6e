"""Labelled sequences shared by the DNA/protein loaders and the oracle trainer: letters + one value per row.

A ``SequenceTable`` is what ``dlm.data.gb1.load_gb1`` and ``dlm.data.mpra_table.load_mpra_table`` return
and what ``dlm.rewards.oracle_fit.fit_oracle`` reads: ``sequences`` (N strings over ``alphabet``),
``values`` (N floats), ``rows`` (each sequence's 0-based data row in its source, so an oracle can
record exactly which rows it was trained on) and ``source`` (a line saying where they came from).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dlm.errors import ConfigError


@dataclass(frozen=True)
class SequenceTable:
    sequences: list[str]
    values: list[float]
    rows: list[int]
    alphabet: str
    source: str

    def __post_init__(self) -> None:
        if not (len(self.sequences) == len(self.values) == len(self.rows)):
            raise ValueError("sequences, values and rows must have one entry per row")

    def __len__(self) -> int:
        return len(self.sequences)


def check_letters(sequence: str, *, alphabet: str, where: str, length: int | None = None) -> str:
    """``sequence`` if every character is in ``alphabet`` (and it has ``length`` letters), else a
    ConfigError naming the character, ``where`` (record / row) and the 1-based position."""
    if length is not None and len(sequence) != length:
        raise ConfigError(f"{where}: sequence has {len(sequence)} letters, the design space needs {length}; "
                          "fix the row or the configured length")
    allowed = set(alphabet)
    for pos, ch in enumerate(sequence):
        if ch not in allowed:
            raise ConfigError(f"{where}: {ch!r} at position {pos + 1} (1-based) is not in the alphabet "
                              f"{alphabet!r}; fix or drop that row")
    return sequence


def select_rows(n: int, row_range: Sequence[float] | None, key: str) -> range:
    """Rows ``[floor(a·n), floor(b·n))`` of a table of ``n`` rows for ``row_range=(a, b)`` (contiguous
    parts, e.g. the two halves of a table for two disjoint oracles); all rows when None."""
    if row_range is None:
        return range(n)
    a, b = (float(x) for x in row_range)
    if not 0.0 <= a < b <= 1.0:
        raise ConfigError(f"{key}={list(row_range)} must be [start, stop] fractions with 0 <= start < stop <= 1, "
                          "e.g. [0.0, 0.5] for the first half")
    return range(int(a * n), int(b * n))
