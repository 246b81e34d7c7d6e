"""The GB1 fitness landscape (Wu et al. 2016, as packaged by FLIP): 4-site variants and their fitness.

The zip (``data/gb1/four_mutations_full_data.csv.zip``, shipped) holds one CSV with 149,361 measured
variants of protein G domain B1 at sites V39, D40, G41, V54. Columns read here:

    Variants    the 4 residues at those sites, e.g. "VDGV" (the wild type)
    Fitness     binding fitness relative to the wild type (wild type = 1; 0 = no binding)
    <split>     a FLIP split column (one_vs_rest, two_vs_rest, three_vs_rest, sampled, low_vs_high):
                "train", "test" or empty; FLIP assigns only 8,733 rows (its ``keep`` set)
    <split>_validation   "True" on the train rows FLIP holds out for validation

``load_gb1(split=..., sets=[...])`` selects rows by set: ``train`` (train rows not flagged validation),
``validation``, ``test`` and ``unassigned`` (the 140,628 measured variants the split leaves out).
Two disjoint selections give two disjoint oracles: e.g. a fine-tuning oracle on ``sampled`` /
[train, validation] (scored on [test]) and an evaluation oracle on ``sampled`` / [test, unassigned]
(scored on [train, validation]). The unassigned rows all have fitness < 0.5 (FLIP kept every fitter
variant), so an oracle trained on them alone never sees a good binder. Read with the standard library only.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

from dlm.data.sequence_table import SequenceTable, check_letters
from dlm.errors import ConfigError

PROTEIN = "ACDEFGHIKLMNPQRSTVWY"
GB1_SITES = ("V39", "D40", "G41", "V54")
GB1_LENGTH = 4
GB1_WILD_TYPE = "VDGV"
DEFAULT_GB1_ZIP = Path(__file__).resolve().parents[2] / "data" / "gb1" / "four_mutations_full_data.csv.zip"
GB1_SETS = ("train", "validation", "test", "unassigned")


def gb1_path(path: str | Path | None) -> Path:
    """``path``, or the zip shipped in the repository's ``data/gb1/`` when None."""
    p = Path(path).expanduser() if path is not None else DEFAULT_GB1_ZIP
    if not p.is_file():
        raise ConfigError(f"GB1 table {p} does not exist; pass path=<four_mutations_full_data.csv.zip> "
                          "(shipped in the repository's data/gb1/)")
    return p


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(".csv")]
            if len(names) != 1:
                raise ConfigError(f"{path} must hold exactly one .csv file, holds {z.namelist()}")
            with z.open(names[0]) as f:
                reader = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline=""))
                return list(reader.fieldnames or []), list(reader)
    except zipfile.BadZipFile as err:
        raise ConfigError(f"{path} is not a readable zip ({err}); give FLIP's four_mutations_full_data.csv.zip") from err


def load_gb1(path: str | Path | None = None, *, split: str | None = None,
             sets: Sequence[str] | str | None = None) -> SequenceTable:
    """Variants (4 letters over ``PROTEIN``) and fitness of the selected rows (module docstring).

    ``split=None`` takes every measured variant (``sets`` must then be None); otherwise ``sets`` (one
    name or a list of ``GB1_SETS``) picks rows of that FLIP split column. Bad letters or lengths name
    the row (its 1-based data row) and the position."""
    p = gb1_path(path)
    columns, rows = _rows(p)
    missing = {"Variants", "Fitness"} - set(columns)
    if missing:
        raise ConfigError(f"{p} has no column(s) {sorted(missing)}; columns: {columns}")
    if isinstance(sets, str):
        sets = [sets]
    if split is None:
        if sets is not None:
            raise ConfigError(f"sets={list(sets)} needs split=<a FLIP split column>; split columns: "
                              f"{_split_columns(columns)}")
        chosen = range(len(rows))
    else:
        if split not in columns or split.endswith("_validation") or split in ("Variants", "Fitness"):
            raise ConfigError(f"split={split!r} is not a FLIP split column of {p}; valid: {_split_columns(columns)}")
        wanted = list(sets) if sets is not None else ["train", "validation", "test"]
        unknown = [s for s in wanted if s not in GB1_SETS]
        if unknown or not wanted:
            raise ConfigError(f"sets={wanted} must name some of {', '.join(GB1_SETS)}")
        flag = f"{split}_validation"
        chosen = [i for i, r in enumerate(rows) if _set_of(r, split, flag) in wanted]
    sequences, values, kept = [], [], []
    for i in chosen:
        r = rows[i]
        where = f"{p.name} row {i + 1}"
        sequences.append(check_letters(r["Variants"].strip(), alphabet=PROTEIN, where=where, length=GB1_LENGTH))
        try:
            values.append(float(r["Fitness"]))
        except ValueError as err:
            raise ConfigError(f"{where}: Fitness {r['Fitness']!r} is not a number") from err
        kept.append(i)
    if not sequences:
        raise ConfigError(f"split={split} sets={list(sets or [])} selects no row of {p}")
    what = "all rows" if split is None else f"split={split} sets={list(sets) if sets else 'all'}"
    return SequenceTable(sequences, values, kept, PROTEIN, f"{p.name} ({what})")


def _set_of(row: dict[str, str], split: str, flag: str) -> str:
    value = (row.get(split) or "").strip()
    if not value:
        return "unassigned"
    if value == "train" and (row.get(flag) or "").strip() == "True":
        return "validation"
    return value


def _split_columns(columns: Sequence[str]) -> list[str]:
    return [c for c in columns if f"{c}_validation" in columns]
