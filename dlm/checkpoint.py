"""Exportable model directories: what ``dlm.load(path)``, evaluation and sampling read.

Layout (written atomically: a temp dir renamed when complete):
    model.json          {"model": {"_target_": ..., **kwargs}, "kind": "diffusion"|"ar", "schedule": {...},
                         "keep_first_token": bool, "block_size": int, "step": int}
    model.safetensors   weights (EMA weights when training used EMA)
    tokenizer/          tokenizer files + dlm_tokenizer.json
    config.yaml         the resolved training config, for humans and for re-running
Only ``dlm.*`` targets are built, and weights load through safetensors, so a model directory
from elsewhere cannot execute code.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dlm.errors import CheckpointError


def build(spec: Any) -> Any:
    """Instantiate a JSON spec: dicts with ``_target_`` (a ``dlm.*`` callable) are built recursively."""
    if isinstance(spec, list):
        return [build(v) for v in spec]
    if not isinstance(spec, dict):
        return spec
    kwargs = {k: build(v) for k, v in spec.items() if k != "_target_"}
    if "_target_" not in spec:
        return kwargs
    target = spec["_target_"]
    if not isinstance(target, str) or not target.startswith("dlm."):
        raise CheckpointError(f"refusing to build {target!r}: model directories may only name dlm.* targets")
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


@dataclass
class LoadedModel:
    """A model rebuilt from its directory, in eval mode."""

    model: nn.Module
    tokenizer: Any
    kind: str
    schedule: Any
    meta: dict = field(default_factory=dict)
    path: Path | None = None


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``path`` only if the block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model_dir(
    path: str | Path,
    *,
    model: nn.Module,
    model_spec: dict,
    tokenizer: Any,
    kind: str,
    schedule_spec: dict | None = None,
    extra: dict | None = None,
    config_yaml: str | None = None,
) -> Path:
    """Write a model directory (see module docstring); returns its path."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        meta = {"model": model_spec, "kind": kind, "schedule": schedule_spec, **(extra or {})}
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        state, seen = {}, set()
        for k, v in model.state_dict().items():
            if v.data_ptr() in seen:  # a tied weight (lm_head = embed_tokens) is stored once
                continue
            seen.add(v.data_ptr())
            state[k] = v.detach().contiguous().cpu()
        save_file(state, str(tmp / "model.safetensors"))
        tokenizer.save(tmp / "tokenizer")
        if config_yaml is not None:
            (tmp / "config.yaml").write_text(config_yaml)
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


def load_model_dir(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild model, tokenizer and schedule from a directory written by ``save_model_dir``."""
    from dlm.data.tokenizer import load_tokenizer

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model directory {path} does not exist (expected model.json, model.safetensors, tokenizer/)")
    for name in ("model.json", "model.safetensors", "tokenizer"):
        if not (path / name).exists():
            raise CheckpointError(f"model directory {path} is missing {name}; re-export it with dlm-train")
    try:
        meta = json.loads((path / "model.json").read_text())
        model = build(meta["model"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path / 'model.json'} is corrupt: {e}") from e
    try:
        state = load_file(str(path / "model.safetensors"))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path / 'model.safetensors'} is corrupt or truncated: {e}") from e
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied_aliases(model)]
    if missing or unexpected:
        raise CheckpointError(f"{path / 'model.safetensors'} does not match model.json: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.to(device).eval()
    if meta.get("shift_logits"):
        # how its outputs are read (token i from output i - 1) travels with the model to the samplers
        model.shift_logits = True
    schedule = build(meta.get("schedule")) if meta.get("schedule") else None
    return LoadedModel(model=model, tokenizer=load_tokenizer(path / "tokenizer"), kind=meta["kind"],
                       schedule=schedule, meta=meta, path=path)
