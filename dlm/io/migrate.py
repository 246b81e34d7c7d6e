"""Migration on read: ``model.json`` files written by earlier dlm versions, in today's layout.

Layouts (``"format"`` in model.json; absent means 1):
  1  top-level ``"block_size"`` = the training data's row length, ``data.block_size`` likewise;
     top-level ``"shift_logits"`` set on the module after loading.
  2  the row length is ``"seq_len"`` (``data.seq_len``): ``block_size`` means only the diffusion
     block (a model argument); ``shift_logits`` is a model constructor argument, saved in the
     model spec (``meta["model"]["shift_logits"]``), so it travels with the weights.
  3  an AR model (kind "ar") declares how its next-token softmax is normalised, ``"ar_softmax"``
     (``dlm.io.record.ArSoftmax``). Older AR directories get the normalisation they were made with:
     "full" when ``converted_from`` says dlm-convert wrote it from a HF causal LM with the mask on
     one of its rows (transformers normalises over every row); "without_mask" for dlm-trained models
     (dlm's AR objective drops the mask column) and for conversions whose mask row was appended
     (the HF model has no such row). Older conversions did not record the appending: a mask on the
     last row is taken as appended (dlm-convert appends it last), so a checkpoint with exactly one
     spare row, holding the mask, is read as "without_mask"; re-convert it to get "full".
Migrations are pure functions on the dict; the directory on disk is never rewritten.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from dlm.errors import CheckpointError
from dlm.io.record import Family

FORMAT = 3  # the layout save_model_dir writes


def _v1_to_v2(meta: dict) -> list[str]:
    notes = []
    if "block_size" in meta:
        meta["seq_len"] = meta.pop("block_size")
        notes.append("block_size -> seq_len (the data row length)")
    data = meta.get("data")
    if isinstance(data, dict) and "block_size" in data:
        data["seq_len"] = data.pop("block_size")
        notes.append("data.block_size -> data.seq_len")
    if "shift_logits" in meta:
        # only a True flag is moved: False is every constructor's default, and a spec whose target
        # has no shift_logits argument (a classifier) must keep building
        if meta.pop("shift_logits"):
            meta["model"]["shift_logits"] = True
            notes.append("shift_logits -> model.shift_logits")
    return notes


def _v2_to_v3(meta: dict) -> list[str]:
    family = {f.kind: f for f in Family}.get(meta.get("kind"))  # an unknown kind is refused by the record
    if family is not Family.AR or "ar_softmax" in meta:
        return []
    # the provenance field dlm-convert has always written is the only record of how the weights were made;
    # it appended a missing mask row last, so a mask on the last row is read as appended
    spec = meta["model"]
    appended = spec.get("mask_id") == spec.get("vocab_size", 0) - 1
    meta["ar_softmax"] = "full" if "converted_from" in meta and not appended else "without_mask"
    return [f"ar_softmax = {meta['ar_softmax']!r} (how the AR model was trained)"]


MIGRATIONS: dict[int, Callable[[dict], list[str]]] = {1: _v1_to_v2, 2: _v2_to_v3}  # from format k to k + 1


def migrate(meta: dict, *, where: str = "model.json") -> tuple[dict, tuple[str, ...]]:
    """(meta in format ``FORMAT``, notes on what changed); the input dict is not modified."""
    meta = copy.deepcopy(meta)
    version = meta.pop("format", 1)
    if not isinstance(version, int) or version < 1 or version > FORMAT:
        raise CheckpointError(f"{where} has format={version!r}; this dlm version reads formats 1..{FORMAT} "
                              "(a newer dlm wrote it: upgrade dlm)")
    if not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{where} has no model spec ('model': {{'_target_': ...}})")
    notes: list[str] = []
    while version < FORMAT:
        notes += [f"format {version} -> {version + 1}: {n}" for n in MIGRATIONS[version](meta)]
        version += 1
    meta["format"] = FORMAT
    return meta, tuple(notes)
