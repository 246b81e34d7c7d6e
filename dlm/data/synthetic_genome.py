"""A seeded, genome-like DNA sequence for machines without a genome file (the default of data=dna_genome).

A first-order Markov chain over ACGT whose transition matrix is the dinucleotide statistics of
330 kb of real human chromosome 1 (the fragment in the development data, rounded to 3 decimals):
A/T-rich (A+T = 63 %) and CpG-depleted (P(G | C) = 0.038), as genomic DNA is. Optionally ``motifs``
(consensus words) are implanted, each at ``motif_rate`` occurrences per base, at uniform positions:
a ground truth for motif rewards. It is a stand-in: a base model trained on it learns these
statistics, not real regulatory grammar; pass a real FASTA (``data.path``) for that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dlm.data.fasta import FastaRecord
from dlm.errors import ConfigError

# rows: previous base A C G T; columns: next base A C G T (human chr1 fragment, 330,000 bp)
HUMAN_DINUCLEOTIDE = (
    (0.353, 0.159, 0.210, 0.278),
    (0.380, 0.224, 0.038, 0.358),
    (0.322, 0.190, 0.222, 0.266),
    (0.247, 0.191, 0.220, 0.342),
)


def synthetic_genome(length: int, *, seed: int = 0, motifs: Sequence[str] = (), motif_rate: float = 0.0,
                     name: str = "synthetic_genome") -> FastaRecord:
    """One record of ``length`` bases from the chain, with ``motifs`` implanted (module docstring)."""
    if length <= 0 or motif_rate < 0:
        raise ConfigError(f"synthetic genome length={length} must be positive and motif_rate={motif_rate} >= 0")
    g = torch.Generator().manual_seed(seed)
    trans = torch.tensor(HUMAN_DINUCLEOTIDE, dtype=torch.float64)
    trans = trans / trans.sum(-1, keepdim=True)
    # sample the chain in one pass: uniforms u_i, next = first column whose CDF exceeds u_i
    cdf = trans.cumsum(-1)
    u = torch.rand(length, generator=g, dtype=torch.float64)
    out = bytearray(length)
    prev = int(torch.randint(4, (1,), generator=g))
    letters = b"ACGT"
    cdf_rows = cdf.tolist()
    for i, ui in enumerate(u.tolist()):
        row = cdf_rows[prev]
        prev = 0 if ui < row[0] else 1 if ui < row[1] else 2 if ui < row[2] else 3
        out[i] = letters[prev]
    seq = out.decode()
    for motif in motifs:
        bad = [c for c in motif if c not in "ACGT"]
        if bad or not motif or len(motif) > length:
            raise ConfigError(f"implanted motif {motif!r} must be a non-empty ACGT word of at most {length} letters")
        count = int(round(motif_rate * length))
        starts = torch.randint(length - len(motif) + 1, (count,), generator=g).tolist()
        chars = list(seq)
        for s in starts:
            chars[s:s + len(motif)] = motif
        seq = "".join(chars)
    return FastaRecord(name, seq)
