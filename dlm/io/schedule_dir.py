"""Learned sampler schedules (LSD / LSD+) as directories, and the fingerprint tying one to its denoiser.

A schedule is trained for one denoiser (its per-step temperatures correct *that* network's errors), so
the directory records the denoiser's fingerprint and the sampler refuses any other network. Layout,
written atomically (``dlm.io.atomic``)::

    schedule.json          {"format": 1, "kind": "step_schedule", "num_steps": N, "learn_grid": bool,
                            "t_min": float, "fingerprint": str, "noise_schedule": spec | null,
                            "timesteps": [N + 1], "logit_scales": [N], "rate_scales": [N] (for reading),
                            ...provenance (trained_for, teacher_steps, teacher_state, step)}
    schedule.safetensors   the StepSchedule's parameters (float64)

This module stores tensors and metadata only; ``dlm.samplers.learned_schedule.load_step_schedule``
rebuilds the module (io sits below the samplers).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dlm.errors import CheckpointError
from dlm.io.atomic import atomic_dir
from dlm.io.hub import resolve_model_path
from dlm.io.spec import build
from dlm.types import DENOISER_ATTRIBUTES

META_FILE, WEIGHTS_FILE = "schedule.json", "schedule.safetensors"
FORMAT, KIND = 1, "step_schedule"
REQUIRED = ("num_steps", "learn_grid", "t_min", "fingerprint")
# what a model directory may change at load time without changing the network's function on a canvas it
# already covered (dlm.io.overrides): left out, so a schedule follows its model through those overrides
LOAD_OVERRIDABLE = frozenset({"max_seq_len"})


def denoiser_fingerprint(model: nn.Module) -> str:
    """16 hex digits of SHA-256 over the network's class, its declared denoiser attributes and every
    tensor of its state dict (name, dtype, shape, bytes), in name order.

    Two loads of one model directory agree; any retrained, fine-tuned or re-quantised weight differs.
    """
    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name in DENOISER_ATTRIBUTES:
        if name not in LOAD_OVERRIDABLE:
            h.update(f"|{name}={getattr(model, name, None)!r}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        h.update(f"|{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class SavedSchedule:
    """A schedule directory as read: ``meta`` (schedule.json), the parameter ``state``, the noise schedule
    it was trained with (built from its spec; None when not recorded) and where it was read from."""

    meta: dict
    state: dict[str, Tensor]
    noise_schedule: Any
    path: Path


def save_schedule_dir(path: str | Path, *, state: dict[str, Tensor], meta: dict) -> Path:
    """Write ``state`` (the StepSchedule's parameters) and ``meta`` (at least num_steps, learn_grid,
    t_min, fingerprint) as a schedule directory; returns its path."""
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"save_schedule_dir: meta lacks {missing}")
    path = Path(path)
    with atomic_dir(path) as tmp:
        (tmp / META_FILE).write_text(json.dumps({"format": FORMAT, "kind": KIND, **meta}, indent=2, sort_keys=True))
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / WEIGHTS_FILE))
    return path


def read_schedule_dir(path: str | Path) -> SavedSchedule:
    """The schedule directory at ``path`` (or a Hugging Face Hub id of one, ``dlm.io.hub``); CheckpointError
    naming the path and what is wrong."""
    path = resolve_model_path(path, marker=META_FILE)
    if not path.is_dir():
        raise CheckpointError(f"schedule directory {path} does not exist (expected {META_FILE} and {WEIGHTS_FILE}, "
                              "written by dlm-train experiment=lsd_demo as <run_dir>/schedule)")
    for name in (META_FILE, WEIGHTS_FILE):
        if not (path / name).exists():
            raise CheckpointError(f"schedule directory {path} is missing {name}; re-export it with dlm-train")
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / META_FILE} is corrupt: {e}") from e
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise CheckpointError(f"{path / META_FILE} is not a sampler schedule (kind={KIND!r} expected); a model "
                              "directory goes in model=, a schedule directory in sampler.schedule.path=")
    if meta.get("format") != FORMAT or any(k not in meta for k in REQUIRED):
        raise CheckpointError(f"{path / META_FILE} is corrupt: format {meta.get('format')!r} (expected {FORMAT}) "
                              f"or a missing key among {list(REQUIRED)}")
    try:
        state = load_file(str(path / WEIGHTS_FILE))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path / WEIGHTS_FILE} is corrupt or truncated: {e}") from e
    noise = build(meta["noise_schedule"]) if meta.get("noise_schedule") else None
    return SavedSchedule(meta=meta, state=state, noise_schedule=noise, path=path)
