"""FASTA records -> fixed-length windows for a DNA base model, with an explicit policy for N and case.

Genome FASTA files carry two things a model must not see silently: ``N`` (unknown base, e.g. gaps
and centromeres) and lower case (soft-masked repeats, still real bases). ``policy`` decides:

    refuse  every character must be an upper-case letter of the alphabet; anything else (``n``,
            ``N``, ``a``, IUPAC codes) raises a ConfigError naming the character, the record and
            the 1-based position. The default: nothing is changed behind the user's back.
    drop    lower case is upper-cased (soft-masking is an annotation, not uncertainty); a window
            containing ``N`` is dropped; any other character is refused as above.
    map     lower case is upper-cased; ``N`` is refused unless ``n_as`` names the letter to write
            instead (``n_as=A``: every N becomes A, which biases the data: use it knowingly).

Windows are ``seq_len`` letters every ``stride`` letters (default ``stride = seq_len``: no overlap);
a record's trailing partial window is dropped. Validation is held out as a *contiguous* region: the
last ``eval_fraction`` of every record (``split="eval"``), cut before windowing, so no training window
shares a base with an evaluation window. Random windows of one genome would leak: neighbouring and
overlapping windows are near-copies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dlm.errors import ConfigError

NPolicy = Literal["refuse", "drop", "map"]
Split = Literal["train", "eval"]
POLICIES = ("refuse", "drop", "map")


@dataclass(frozen=True)
class FastaRecord:
    name: str  # the header's first word
    sequence: str  # as in the file, line breaks removed


def read_fasta(path: str | Path) -> list[FastaRecord]:
    """All records of a FASTA file (``>name description`` then sequence lines); refuses a file with no
    record or text before the first header."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.path={path} does not exist; give an existing FASTA file")
    records: list[FastaRecord] = []
    name, lines = None, []
    with open(path, encoding="ascii", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if line.startswith(">"):
                if name is not None:
                    records.append(FastaRecord(name, "".join(lines)))
                name, lines = (line[1:].split() or [f"record{len(records) + 1}"])[0], []
            elif line:
                if name is None:
                    raise ConfigError(f"{path}:{line_no} has sequence before the first '>' header; is it a FASTA file?")
                lines.append(line)
    if name is not None:
        records.append(FastaRecord(name, "".join(lines)))
    if not records:
        raise ConfigError(f"{path} holds no FASTA record (no line starting with '>')")
    return records


def clean_sequence(record: FastaRecord, *, alphabet: str = "ACGT", policy: NPolicy = "refuse",
                   n_as: str | None = None) -> str:
    """The record's sequence after ``policy`` (module docstring); under ``drop`` N stays in, for
    ``windows`` to drop. Errors name the character, the record and the 1-based position."""
    if policy not in POLICIES:
        raise ConfigError(f"data.policy={policy!r}; valid: {', '.join(POLICIES)}")
    if n_as is not None and (policy != "map" or n_as not in alphabet or len(n_as) != 1):
        raise ConfigError(f"data.n_as={n_as!r} needs data.policy=map and one letter of {alphabet!r}")
    seq = record.sequence if policy == "refuse" else record.sequence.upper()
    if policy == "map" and n_as is not None:
        seq = seq.replace("N", n_as)
    allowed = set(alphabet) | ({"N"} if policy == "drop" else set())
    bad = next((i for i, ch in enumerate(seq) if ch not in allowed), None)
    if bad is not None:
        ch = record.sequence[bad]
        if ch.upper() not in "N" + alphabet:  # an IUPAC code, a digit, ...: no policy reads it
            fix = f"only {alphabet} (and N under drop/map) are read; fix the file"
        elif policy == "refuse":  # lower case or N
            fix = "set data.policy=drop (drop windows with N, upper-case the rest) or data.policy=map"
        else:  # map without n_as, on an N
            fix = "set data.n_as=<letter> to write N as that letter, or data.policy=drop"
        raise ConfigError(f"FASTA record {record.name!r} has {ch!r} at position {bad + 1} (1-based), refused by "
                          f"data.policy={policy}; {fix}")
    return seq


def windows(sequence: str, *, seq_len: int, stride: int | None = None) -> Iterator[str]:
    """Windows of ``seq_len`` letters starting every ``stride`` letters; those containing N are skipped
    (``clean_sequence`` only leaves N in under policy=drop)."""
    stride = stride or seq_len
    if seq_len <= 0 or stride <= 0:
        raise ConfigError(f"data.seq_len={seq_len} and data.stride={stride} must be positive")
    for start in range(0, len(sequence) - seq_len + 1, stride):
        piece = sequence[start:start + seq_len]
        if "N" not in piece:
            yield piece


def heldout_region(sequence: str, *, split: Split, eval_fraction: float) -> str:
    """The contiguous part of one record for ``split``: the first ``1 - eval_fraction`` for train, the
    rest for eval."""
    if not 0.0 < eval_fraction < 1.0:
        raise ConfigError(f"data.eval_fraction={eval_fraction} must lie in (0, 1)")
    cut = int(round(len(sequence) * (1.0 - eval_fraction)))
    return sequence[:cut] if split == "train" else sequence[cut:]


def fasta_windows(records: list[FastaRecord], *, seq_len: int, split: Split = "train", eval_fraction: float = 0.1,
                  stride: int | None = None, alphabet: str = "ACGT", policy: NPolicy = "refuse",
                  n_as: str | None = None) -> list[str]:
    """Windows of ``split`` over every record (module docstring); refuses a split with no window."""
    if split not in ("train", "eval"):
        raise ConfigError(f"split={split!r}; valid: train, eval")
    out = []
    for record in records:
        seq = clean_sequence(record, alphabet=alphabet, policy=policy, n_as=n_as)
        region = heldout_region(seq, split=split, eval_fraction=eval_fraction)
        out.extend(windows(region, seq_len=seq_len, stride=stride))
    if not out:
        total = sum(len(r.sequence) for r in records)
        raise ConfigError(f"the {split} region of {len(records)} FASTA record(s) ({total} letters in all) holds no "
                          f"{seq_len}-letter window; lower data.seq_len or change data.eval_fraction")
    return out
