"""Exact GB1 fitness by table lookup: the measured value of the designed 4-site variant.

The table is dense over the 20^4 = 160,000 variants of sites V39 D40 G41 V54 (index
sum_i id_i · 20^(3-i), ids in "ACDEFGHIKLMNPQRSTVWY" order); 149,361 are measured (Wu et al. 2016).
The reward reads the argmax letter of each position, so it is exact on hard one-hots and not
differentiable (it serves base, svdd, smc, best_of_n). A position with less than half its mass on
letters (a mask left in the canvas) and an unmeasured variant both give ``fill``: default 0.0, the
fitness of a non-binder, which is what most of the 10,639 unmeasured variants are expected to be
(Wu et al. impute them); ``fill=null`` refuses them instead, naming the variant (it synchronises
with the device once per call).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from dlm.data.gb1 import GB1_LENGTH, PROTEIN, load_gb1
from dlm.errors import CheckpointError, ConfigError
from dlm.rewards.protocol import letter_probs

TABLE_FILE = "gb1_table.safetensors"


def variant_index(ids: Tensor, alphabet_size: int = len(PROTEIN)) -> Tensor:
    """(B, 4) letter ids -> (B,) dense table index, first site most significant."""
    powers = alphabet_size ** torch.arange(ids.shape[-1] - 1, -1, -1, device=ids.device)
    return (ids * powers).sum(-1)


class GB1Lookup:
    """Measured fitness of the argmax variant: (B, 4, V) -> (B,)."""

    alphabet = PROTEIN
    length = GB1_LENGTH
    differentiable = False

    def __init__(self, *, table: Tensor, measured: Tensor, fill: float | None = 0.0) -> None:
        if table.shape != (len(PROTEIN) ** GB1_LENGTH,) or measured.shape != table.shape:
            raise ConfigError(f"a GB1 table has {len(PROTEIN) ** GB1_LENGTH} entries, got {tuple(table.shape)}")
        self.table, self.measured, self.fill = table.float(), measured.bool(), fill

    def __call__(self, probs: Tensor) -> Tensor:
        x = letter_probs(probs, self.alphabet)
        if x.shape[1] != GB1_LENGTH:
            raise ConfigError(f"the GB1 lookup scores {GB1_LENGTH} sites, got sequences of length {x.shape[1]}; "
                              f"set length={GB1_LENGTH}")
        letters_max, ids = x.max(-1)
        idx = variant_index(ids).to(self.table.device)
        known = self.measured[idx] & (letters_max > 0.5).all(-1).to(self.table.device)
        if self.fill is None:
            if not bool(known.all()):
                row = int((~known).nonzero()[0])
                word = "".join(PROTEIN[i] for i in ids[row].tolist())
                raise ConfigError(f"row {row} ({word}) is not a measured GB1 variant (or holds a mask); set "
                                  "reward.fill=<value> to score unmeasured variants")
            return self.table[idx].to(probs.device)
        return torch.where(known, self.table[idx], torch.full_like(self.table[idx], self.fill)).to(probs.device)

    def save(self, directory: Path) -> dict:
        save_file({"table": self.table.cpu().contiguous(), "measured": self.measured.cpu().contiguous()},
                  str(directory / TABLE_FILE))
        return {"_target_": "dlm.rewards.gb1_lookup.load_gb1_lookup", "_directory_": True, "fill": self.fill}


def gb1_lookup_from_zip(path: str | None = None, *, split: str | None = None, sets: Sequence[str] | None = None,
                        fill: float | None = 0.0) -> GB1Lookup:
    """The lookup over the measured variants of the GB1 zip (default: the shipped one), optionally only
    those of a FLIP split selection (``dlm.data.gb1.load_gb1``)."""
    rows = load_gb1(path, split=split, sets=list(sets) if sets is not None else None)
    ids = torch.tensor([[PROTEIN.index(c) for c in s] for s in rows.sequences], dtype=torch.long)
    idx = variant_index(ids)
    table = torch.zeros(len(PROTEIN) ** GB1_LENGTH)
    measured = torch.zeros_like(table, dtype=torch.bool)
    table[idx] = torch.tensor(rows.values, dtype=torch.float32)
    measured[idx] = True
    return GB1Lookup(table=table, measured=measured, fill=fill)


def load_gb1_lookup(directory: str | Path, fill: float | None = 0.0) -> GB1Lookup:
    """The lookup saved in a reward directory."""
    try:
        t = load_file(str(Path(directory) / TABLE_FILE))
    except OSError as err:
        raise CheckpointError(f"{Path(directory) / TABLE_FILE} is missing or corrupt ({err})") from err
    return GB1Lookup(table=t["table"], measured=t["measured"], fill=fill)
