"""Which checkpoint a run resumes from: ``ckpt_path`` = null | last | auto | <path>.

    null    a fresh run; refused when <run_dir>/checkpoints already holds checkpoints (no silent
            overwrite of a run)
    last    resume from <run_dir>/checkpoints/last.ckpt; refused when the run has no checkpoint, so a
            mistyped name= never silently trains from scratch
    auto    resume when the run has a checkpoint, else start a new run: one command line for the first
            start and every SLURM requeue
    <path>  resume from that file

``last`` and ``auto`` take the newest checkpoint of the run (last.ckpt, or the pre-emption checkpoint of
Lightning's SLURM plugin when that is newer). One that cannot be read (truncated, not a checkpoint) is
named in one line on stderr and the newest readable one is used instead; when none can be read the run
is refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from dlm.errors import CheckpointError, ConfigError

CHOICES = "null (new run), last (resume, refused without a checkpoint), auto (resume if one exists, else start) or a path"


def checkpoint_step(path: Path) -> int:
    """The ``global_step`` of a Lightning checkpoint; CheckpointError naming the file when it cannot be read.

    Memory-mapped, so probing a multi-GB checkpoint reads its index, not its tensors; ``weights_only``
    because the file is data, never code.
    """
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch reports truncation as OSError / RuntimeError / EOFError / UnpicklingError
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt: "
                              f"{type(e).__name__}: {reason})") from e
    if not isinstance(state, dict) or "global_step" not in state or "state_dict" not in state:
        raise CheckpointError(f"{path} is not a Lightning training checkpoint (no global_step / state_dict)")
    return int(state["global_step"])


def run_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The run's checkpoints, newest first (last.ckpt first among equals).

    Besides ``checkpoints/*.ckpt`` this includes the ``hpc_ckpt_<n>.ckpt`` that Lightning's SLURM plugin
    saves in the run directory when the job is pre-empted (SIGUSR1): it is newer than last.ckpt, and
    Lightning itself would only use it for ``ckpt_path=None``.
    """
    found = [*ckpt_dir.glob("*.ckpt"), *ckpt_dir.parent.glob("hpc_ckpt_*.ckpt")]  # none for a missing folder
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), reverse=True)


def newest_readable(ckpt_dir: Path) -> Path:
    """The newest readable checkpoint of the run; an unreadable newer one (or a missing last.ckpt) is named
    in one line on stderr. CheckpointError naming every file when none can be read."""
    last = ckpt_dir / "last.ckpt"
    problems = [] if last.exists() else [f"{last} does not exist"]
    for path in run_checkpoints(ckpt_dir):
        try:
            step = checkpoint_step(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if problems and rank_zero_only.rank == 0:
            print(f"dlm: {problems[0]}; resuming from {path} (step {step}) instead", file=sys.stderr, flush=True)
        return path
    raise CheckpointError(f"no readable checkpoint in {ckpt_dir}: " + "; ".join(problems))


def resolve_ckpt(ckpt_path: str | None, ckpt_dir: Path) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from (None: a new run), per ``ckpt_path`` (module docstring)."""
    has_checkpoints = bool(run_checkpoints(ckpt_dir))
    if ckpt_path in (None, "null"):
        if has_checkpoints:
            raise ConfigError(f"{ckpt_dir} already holds checkpoints; pass ckpt_path=last to resume, "
                              "or name=<new name> (or run_dir=...) to start a new run")
        return None
    if ckpt_path in ("last", "auto"):
        if not has_checkpoints:
            if ckpt_path == "auto":
                return None
            raise CheckpointError(f"ckpt_path=last but {ckpt_dir / 'last.ckpt'} does not exist: check name= / "
                                  "run_dir= (is the run name spelled right?), or pass ckpt_path=auto to start a "
                                  "new run when there is no checkpoint yet")
        return str(newest_readable(ckpt_dir))
    path = Path(ckpt_path)
    if not path.exists():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist; ckpt_path is {CHOICES}")
    checkpoint_step(path)  # a corrupt file the user named is refused, never replaced by another
    return str(path)
