"""Gosai-style MPRA tables: one DNA sequence and HepG2 / K562 / SK-N-SH activities per row.

DRAKES' DNA task reads ``gosai_all.csv`` (columns ``seq, hepg2, k562, sknsh``; 200-bp enhancers with
measured activity in three cell lines). ``load_mpra_table`` reads any such table: ``.csv``, ``.tsv``
(tab-separated) or either gzipped, with configurable column names, and returns one activity column
as a ``SequenceTable``. Rows are chosen by a split column (``split_column`` + ``split_values``, e.g.
a chromosome column with ``[chr1, ..., chr11]`` as DRAKES' fine-tuning oracle) or by a contiguous
``row_range`` of fractions (``[0, 0.5]`` and ``[0.5, 1]``: two disjoint halves for two oracles).
Sequences are upper-cased; any other character than the alphabet, or a length other than
``length``, is refused naming the row and the position.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Sequence
from pathlib import Path

from dlm.data.sequence_table import SequenceTable, check_letters, select_rows
from dlm.errors import ConfigError

GOSAI_COLUMNS = ("seq", "hepg2", "k562", "sknsh")


def _open_text(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rt", encoding="utf-8", newline="")


def _delimiter(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    if suffixes[-1:] == [".tsv"] or suffixes[-1:] == [".txt"]:
        return "\t"
    if suffixes[-1:] == [".csv"]:
        return ","
    raise ConfigError(f"{path}: a table must be .csv, .tsv or .txt (tab-separated), optionally .gz")


def load_mpra_table(path: str | Path, *, sequence_column: str = "seq", value_column: str = "hepg2",
                    split_column: str | None = None, split_values: Sequence[str] | None = None,
                    row_range: Sequence[float] | None = None, alphabet: str = "ACGT",
                    length: int | None = None) -> SequenceTable:
    """Sequences and ``value_column`` of the selected rows (module docstring). Rows are numbered from 1
    after the header in messages; ``SequenceTable.rows`` holds 0-based data rows."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"path={p} does not exist; give a .csv/.tsv table with a sequence column")
    if (split_column is None) != (split_values is None):
        raise ConfigError("split_column and split_values go together: name the column and the values to keep")
    with _open_text(p) as f:
        reader = csv.DictReader(f, delimiter=_delimiter(p))
        columns = list(reader.fieldnames or [])
        needed = [sequence_column, value_column] + ([split_column] if split_column else [])
        missing = [c for c in needed if c not in columns]
        if missing:
            raise ConfigError(f"{p} has no column(s) {missing}; columns: {columns}; set sequence_column / "
                              "value_column / split_column")
        rows = list(reader)
    keep = set(map(str, split_values)) if split_values is not None else None
    sequences, values, kept = [], [], []
    for i in select_rows(len(rows), row_range, "row_range"):
        r = rows[i]
        if keep is not None and (r[split_column] or "").strip() not in keep:
            continue
        where = f"{p.name} row {i + 1}"
        sequences.append(check_letters((r[sequence_column] or "").strip().upper(), alphabet=alphabet, where=where,
                                       length=length))
        try:
            values.append(float(r[value_column]))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: {value_column}={r[value_column]!r} is not a number") from err
        kept.append(i)
    if not sequences:
        raise ConfigError(f"{p}: the selection (split_values={split_values}, row_range={row_range}) keeps no row")
    return SequenceTable(sequences, values, kept, alphabet, f"{p.name} ({value_column})")
