"""Tiny random-init model directories for tests: a one-layer character-level dlm Transformer exported with
``save_model_dir``, its rows and context ``width`` tokens long."""

from __future__ import annotations

from pathlib import Path

import torch

from dlm.data.tokenizers.char import CharTokenizer
from dlm.io.model_dir import save_model_dir
from dlm.io.record import Family
from dlm.io.spec import build


def export_char_model(path: Path, family: Family, *, width: int) -> Path:
    """A ``family`` model (its attention from the family; AR: no schedule, else log-linear) of dim = context =
    training rows = ``width``, weights from seed 0, saved at ``path``."""
    tok = CharTokenizer()
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": width, "n_layers": 1, "n_heads": 2,
            "max_seq_len": width, "attention": family.attention, "vocab_size": tok.vocab_size,
            "mask_id": tok.mask_id}
    torch.manual_seed(0)
    schedule = None if family is Family.AR else {"_target_": "dlm.diffusion.schedule.LogLinearSchedule"}
    return save_model_dir(path, model=build(spec), model_spec=spec, tokenizer=tok, family=family, seq_len=width,
                          schedule_spec=schedule)
