"""The data DNA designs are compared with (``dlm-design reference.path=<FASTA | table>``): which sequences, and
how they are ranked to find the "top" ones of ``dlm.eval.design_dna_metrics``.

``load_reference`` (the ``reference`` node of ``conf/design/design.yaml``) checks every input when the config is
built and returns a ``DesignReference`` (None without a path); ``DesignReference.rows(length)`` reads the data
for the designed length, before any design is drawn. The file's extension decides what it is:

  FASTA  (.fa .fasta .fna)   every non-overlapping ``length``-bp window of every record, in genome order
         (``dlm.data.fasta``: ``policy`` / ``n_as`` decide N and lower case), the ``row_range`` part of them.
         A genome has no measurement, so the windows are ranked by the **evaluation oracle** of the job, the
         function that scores the designs: "top windows" and "good designs" share one yardstick.
  table  (.csv .tsv .txt, optionally .gz)   ``sequence_column`` and the measured ``value_column`` of a Gosai-style
         MPRA table (``dlm.data.mpra_table``), the ``row_range`` part, ranked by the **measured** values
         (DRAKES: the top 0.1 % of measured HepG2 activity).

The motif correlations scan every motif of ``motif_file`` (a MEME file; default the shipped liver factors).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dlm.data.fasta import POLICIES, NPolicy, clean_sequence, read_fasta, windows
from dlm.data.mpra_table import load_mpra_table
from dlm.data.sequence_table import select_rows
from dlm.errors import ConfigError
from dlm.rewards.pwm import DNA, PWMHitCount, pwm_hit_count_from_meme

FASTA_SUFFIXES = (".fa", ".fasta", ".fna")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")


@dataclass(frozen=True)
class ReferenceRows:
    sequences: list[str]  # N sequences of the designed length
    values: list[float] | None  # N measured values to rank by; None: rank by the evaluation oracle
    source: str  # where they come from (reported)


@dataclass(frozen=True)
class DesignReference:
    path: Path
    is_fasta: bool  # the extension's verdict (module docstring)
    top_fraction: float
    hits: PWMHitCount  # the motif scanner of the motif correlations
    row_range: tuple[float, float] | None = None
    policy: NPolicy = "refuse"
    n_as: str | None = None
    sequence_column: str = "seq"
    value_column: str = "hepg2"
    motif_file: str | None = None  # None: the shipped liver factors

    def rows(self, length: int) -> ReferenceRows:
        """The reference sequences of ``length`` letters (module docstring); ConfigError naming the key and the
        fix when none is left or a table row has another length."""
        where = f"reference.path={self.path}"
        if self.is_fasta:
            found = [w for r in read_fasta(self.path)
                     for w in windows(clean_sequence(r, alphabet=DNA, policy=self.policy, n_as=self.n_as),
                                      seq_len=length)]
            chosen = [found[i] for i in select_rows(len(found), self.row_range, "reference.row_range")]
            if not chosen:
                raise ConfigError(f"{where} holds no {length}-bp window in reference.row_range={self.row_range}; "
                                  "give a longer FASTA or a wider row_range")
            return ReferenceRows(chosen, None, f"{self.path.name}: {len(chosen)} windows of {length} bp")
        table = load_mpra_table(self.path, sequence_column=self.sequence_column, value_column=self.value_column,
                                row_range=self.row_range, alphabet=DNA, length=length)
        return ReferenceRows(table.sequences, table.values, f"{table.source}: {len(table)} rows")

    def settings(self) -> dict:
        """What decides the reference metrics (recorded with a job's settings: a rerun must match them); the
        motifs by file, count and a digest of their matrices (1,956 JASPAR names would swamp the summary)."""
        digest = hashlib.sha256(json.dumps([[m.name, m.pfm] for m in self.hits.motifs]).encode()).hexdigest()[:16]
        return {"path": str(self.path), "top_fraction": self.top_fraction, "row_range": self.row_range,
                "policy": self.policy, "n_as": self.n_as, "ranked_by": "eval_reward" if self.is_fasta else
                self.value_column, "motif_file": self.motif_file or "shipped liver factors",
                "motifs": len(self.hits.motifs), "motifs_sha256": digest,
                "min_score_fraction": self.hits.min_score_fraction}


def load_reference(*, path: str | None, top_fraction: float = 0.1, row_range: Sequence[float] | None = None,
                   policy: NPolicy = "refuse", n_as: str | None = None, sequence_column: str = "seq",
                   value_column: str = "hepg2", motif_file: str | None = None,
                   min_score_fraction: float = 0.8) -> DesignReference | None:
    """The ``DesignReference`` of ``path`` (None when ``path`` is None: no reference metrics), every setting
    checked here, before the model samples anything."""
    if path is None:
        return None
    p = Path(path).expanduser()
    suffixes = [s.lower() for s in p.suffixes if s.lower() != ".gz"]
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in FASTA_SUFFIXES + TABLE_SUFFIXES or (suffix in FASTA_SUFFIXES and p.suffix.lower() == ".gz"):
        raise ConfigError(f"reference.path={p}: the extension picks the kind; use a FASTA "
                          f"({', '.join(FASTA_SUFFIXES)}) or a table ({', '.join(TABLE_SUFFIXES)}, optionally .gz)")
    if not p.is_file():
        raise ConfigError(f"reference.path={p} does not exist; give a genome FASTA or a sequence table")
    if not 0.0 < top_fraction <= 1.0:
        raise ConfigError(f"reference.top_fraction={top_fraction} must lie in (0, 1] (0.1: the top 10 % of windows)")
    if row_range is not None:
        select_rows(2, row_range, "reference.row_range")  # refuses a malformed range now
    if policy not in POLICIES:
        raise ConfigError(f"reference.policy={policy!r}; valid: {', '.join(POLICIES)}")
    if motif_file is not None and not Path(motif_file).expanduser().is_file():
        raise ConfigError(f"reference.motif_file={motif_file} does not exist; give a MEME motif file (null: the "
                          "shipped liver factors, data/jaspar/liver_factors.meme)")
    hits = pwm_hit_count_from_meme(motif_file, motifs=None, min_score_fraction=min_score_fraction)
    return DesignReference(path=p, is_fasta=suffix in FASTA_SUFFIXES, top_fraction=float(top_fraction), hits=hits,
                           row_range=None if row_range is None else (float(row_range[0]), float(row_range[1])),
                           policy=policy, n_as=n_as, sequence_column=sequence_column, value_column=value_column,
                           motif_file=None if motif_file is None else str(motif_file))
