"""Exportable model directories: what ``dlm.load(path)``, evaluation and sampling read.

Layout (written atomically: a temp dir renamed when complete; ``dlm.io.migrate`` reads older ones):
    model.json          {"format": 3, "kind": "ar"|"diffusion"|"block"|"classifier"|"block_policy",
                         "model": {"_target_": ..., **kwargs}, "schedule": {...} | null,
                         "seq_len": int | null, "keep_first_token": bool, "step": int | null,
                         "ar_softmax": "full"|"without_mask" (kind "ar" only), ...extra}
    model.safetensors   weights (EMA weights when training used EMA); a tied weight is stored once
    tokenizer/          tokenizer files + dlm_tokenizer.json
    config.yaml         the resolved training config, for humans and for re-running
``kind`` spells the ``Family`` (``dlm.io.record``); ``seq_len`` is the training rows' length, while
``block_size`` only ever appears as the diffusion block, a model argument. Only ``dlm.*`` targets are
built, and weights load through safetensors, so a directory from elsewhere cannot execute code.
Loading refuses weights holding NaN or inf (naming the tensor) and a tokenizer that does not fit the
model's vocabulary: either would give numbers or text that look like results and are not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dlm.errors import CheckpointError
from dlm.io.atomic import atomic_dir
from dlm.io.hub import resolve_model_path
from dlm.io.migrate import FORMAT, migrate
from dlm.io.overrides import apply_spec_overrides, check_override_names, parse_dtype
from dlm.io.record import Family, ModelRecord, checked_ar_softmax
from dlm.io.spec import build
from dlm.io.tokenizer_files import TOKENIZER_DIR, load_tokenizer, save_tokenizer

META_FILE, WEIGHTS_FILE, CONFIG_FILE = "model.json", "model.safetensors", "config.yaml"
# written from typed arguments; ``extra`` may not set them (block_size / shift_logits: format 1 names)
RESERVED = frozenset({"format", "kind", "model", "schedule", "seq_len", "keep_first_token", "step", "overrides",
                      "block_size", "shift_logits"})


@dataclass
class LoadedModel:
    """A model rebuilt from its directory, in eval mode: the weights, their tokenizer, the noise
    schedule they were trained with (None for AR / auxiliary models), the typed ``record`` and the
    migrated ``model.json`` dict (``meta``, with ``meta["overrides"]`` as applied)."""

    model: nn.Module
    tokenizer: Any
    record: ModelRecord
    schedule: Any = None
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def family(self) -> Family:
        return self.record.family


def save_model_dir(
    path: str | Path,
    *,
    model: nn.Module,
    model_spec: dict,
    tokenizer: Any,
    family: Family,
    schedule_spec: dict | None = None,
    seq_len: int | None = None,
    keep_first_token: bool = False,
    step: int | None = None,
    extra: dict | None = None,
    config_yaml: str | None = None,
) -> Path:
    """Write a model directory (see module docstring); returns its path.

    ``extra``: further JSON-able provenance (``data``, ``converted_from``, ...); a key the layout
    writes itself is refused. ``extra["ar_softmax"]`` (kind "ar" only, ``dlm.io.record.ArSoftmax``) says
    how the AR model's softmax is normalised: dlm-train passes its objective's, dlm-convert the HF
    model's; absent, an AR model gets "without_mask", the normalisation dlm's AR objective trains with.
    """
    path = Path(path)
    extra = dict(extra or {})
    clash = sorted(set(extra) & RESERVED)
    if clash:
        raise ValueError(f"save_model_dir: extra keys {clash} are written from their own arguments "
                         "(seq_len=, keep_first_token=, step=; shift_logits is a model argument)")
    if family is Family.AR:
        extra.setdefault("ar_softmax", "without_mask")
    checked_ar_softmax(family, extra.get("ar_softmax"), where=f"save_model_dir({path})")
    meta = {"format": FORMAT, "kind": family.kind, "model": model_spec, "schedule": schedule_spec,
            "seq_len": None if seq_len is None else int(seq_len), "keep_first_token": bool(keep_first_token),
            "step": None if step is None else int(step), **extra}
    with atomic_dir(path) as tmp:
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        state, seen = {}, set()
        for k, v in model.state_dict().items():
            if v.data_ptr() in seen:  # a tied weight (lm_head = embed_tokens) is stored once
                continue
            seen.add(v.data_ptr())
            state[k] = v.detach().contiguous().cpu()
        save_file(state, str(tmp / WEIGHTS_FILE))
        save_tokenizer(tokenizer, tmp / TOKENIZER_DIR)
        if config_yaml is not None:
            (tmp / CONFIG_FILE).write_text(config_yaml)
    return path


def _tied_aliases(model: nn.Module) -> set[str]:
    """Names of parameters that are the same tensor as an earlier-named one (stored once on disk)."""
    first: dict[int, str] = {}
    aliases = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases.add(name)
        first.setdefault(id(p), name)
    return aliases


def read_record(path: str | Path, *, revision: str | None = None, **overrides: Any) -> tuple[ModelRecord, dict]:
    """(the typed record, the migrated model.json dict) of a model directory, ``overrides`` applied
    to the model spec (``dlm.io.overrides``); nothing is built. ``path`` may be a Hugging Face Hub id
    (``org/name[@revision]``, ``revision``), fetched by ``dlm.io.hub.resolve_model_path``."""
    path = resolve_model_path(path, revision)
    if path.is_file():
        raise CheckpointError(f"{path} is a file; a model is loaded from the directory that holds {META_FILE}, "
                              f"{WEIGHTS_FILE} and {TOKENIZER_DIR}/: pass {path.parent}")
    if not path.is_dir():
        raise CheckpointError(f"model directory {path} does not exist (expected {META_FILE}, {WEIGHTS_FILE}, "
                              f"{TOKENIZER_DIR}/)")
    for name in (META_FILE, WEIGHTS_FILE, TOKENIZER_DIR):
        if not (path / name).exists():
            raise CheckpointError(f"model directory {path} is missing {name}; re-export it with dlm-train")
    where = str(path / META_FILE)
    try:
        raw = json.loads((path / META_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{where} is corrupt: {e}") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where} is corrupt: expected a JSON object")
    meta, notes = migrate(raw, where=where)
    check_override_names(overrides)
    spec, applied = apply_spec_overrides(meta["model"], overrides, where=str(path), trained_len=meta.get("seq_len"))
    if overrides.get("dtype") is not None:
        applied["dtype"] = str(parse_dtype(overrides["dtype"])).removeprefix("torch.")
    if overrides.get("device") is not None:
        applied["device"] = str(overrides["device"])
    meta["overrides"] = applied
    record = ModelRecord.from_meta({**meta, "model": spec}, where=where, overrides=applied, migrations=notes)
    return record, meta


def load_model_dir(path: str | Path, *, device: str | torch.device | None = None,
                   dtype: str | torch.dtype | None = None, rope_scaling: Any = None, max_seq_len: int | None = None,
                   attn_backend: str | None = None, revision: str | None = None) -> LoadedModel:
    """Rebuild model, tokenizer and schedule from a directory written by ``save_model_dir`` (or an
    older layout, migrated on read), with the safe post-training overrides applied (None: not
    overridden; the model loads on the CPU in its saved precision). ``path`` may be a Hugging Face Hub
    id (``org/name[@revision]``, or ``revision=``): its snapshot is fetched and loaded the same way
    (``dlm.io.hub``); ``LoadedModel.path`` is then the snapshot directory."""
    path = resolve_model_path(path, revision)
    record, meta = read_record(path, rope_scaling=rope_scaling, max_seq_len=max_seq_len,
                               attn_backend=attn_backend, dtype=dtype, device=device)
    try:
        model = build(record.model_spec)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path / META_FILE} is corrupt: {e}") from e
    try:
        state = load_file(str(path / WEIGHTS_FILE))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path / WEIGHTS_FILE} is corrupt or truncated: {e}") from e
    check_finite_weights(state, where=path / WEIGHTS_FILE)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied_aliases(model)]
    if missing or unexpected:
        raise CheckpointError(f"{path / WEIGHTS_FILE} does not match {META_FILE}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.to(device=device or "cpu", dtype=None if dtype is None else parse_dtype(dtype)).eval()
    schedule = build(record.schedule_spec) if record.schedule_spec else None
    tokenizer = load_tokenizer(path / TOKENIZER_DIR)
    if record.family.is_denoiser:
        check_vocabulary(tokenizer, model, where=path)
    return LoadedModel(model=model, tokenizer=tokenizer, record=record, schedule=schedule, meta=meta, path=path)


def check_finite_weights(state: dict[str, torch.Tensor], *, where: Path) -> None:
    """Refuse a state dict holding NaN or inf, naming the file and the first such tensor.

    A non-finite weight makes every output NaN: evaluation would print ``"nll": NaN`` and sampling
    decode garbage, both with exit code 0. One pass over the weights on load costs far less.
    """
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            nan = int(torch.isnan(tensor).sum())
            inf = int((~finite).sum()) - nan
            raise CheckpointError(f"{where} is corrupt: tensor {name!r} {tuple(tensor.shape)} holds {nan} NaN and "
                                  f"{inf} inf values; re-export the model from a good checkpoint")


def check_vocabulary(tokenizer: Any, model: nn.Module, *, where: Path) -> None:
    """The tokenizer of a model directory must name ids the model embeds and share its mask id.

    The embedding may have more rows than the tokenizer has tokens (spare rows of HF checkpoints);
    a tokenizer with more tokens, or another mask id, belongs to other weights.
    """
    if tokenizer.vocab_size > model.vocab_size or tokenizer.mask_id != model.mask_id:
        raise CheckpointError(f"{where / TOKENIZER_DIR} does not belong to {where / WEIGHTS_FILE}: the tokenizer has "
                              f"vocab_size={tokenizer.vocab_size}, mask_id={tokenizer.mask_id}, the model "
                              f"vocab_size={model.vocab_size}, mask_id={model.mask_id}; put back the tokenizer the "
                              "model was trained with (re-export the model directory)")
