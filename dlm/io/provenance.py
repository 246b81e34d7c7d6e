"""What every result JSON records so that its number can be rerun: ``provenance(...)``.

dlm-eval-ppl, dlm-eval-gen, dlm-sample's summary, dlm-bench's results and dlm-lm-eval's model record
all hold one ``"provenance"`` object built here::

    {"dlm_version": "0.1.0", "git_rev": "<commit>" | null, "git_dirty": bool | null, "seed": int | null,
     "settings": {...the sampler / method settings...}, "model_fingerprint": str | {name: str} | null,
     "hub": {"repo_id", "revision"} | null}

``git_rev`` is the commit of the dlm source in use when that source is a git checkout (null for an
installed wheel; never an error); ``git_dirty`` says whether dlm/ or conf/ differ from it.
``model_fingerprint`` is ``dlm.io.schedule_dir.denoiser_fingerprint``: one hash of the network's class,
its declared attributes and every tensor of its state dict, the same value an LSD schedule records for
the denoiser it was trained for. ``hub`` names the Hugging Face repo and commit a model came from.
"""

from __future__ import annotations

import functools
import importlib.metadata
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlm.io.hub import hub_origin
from dlm.io.schedule_dir import denoiser_fingerprint

SCALARS = (int, float, str, bool, type(None))
MAX_LISTED = 256  # a tensor setting with more elements is left out of the description


def dlm_version() -> str | None:
    """The installed dlm's version, from its package metadata (the ``dlm`` package root, which holds
    ``__version__``, is a layer above ``dlm.io``); None when dlm runs from a source tree never installed."""
    try:
        return importlib.metadata.version("dlm")
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the dlm source when it is the ``dlm/`` folder of a git checkout, else (None, None).

    Only the checkout that holds this package counts: an installed dlm inside some other repository (a
    virtual environment in a project) has no revision of its own. Git missing or failing gives None.
    """
    package = Path(__file__).resolve().parents[1]

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=5)

    try:
        top = git("rev-parse", "--show-toplevel", "HEAD")
        lines = top.stdout.split()
        if top.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() / "dlm" != package:
            return None, None
        dirty = git("diff", "--quiet", "HEAD", "--", ":/dlm", ":/conf").returncode
        return lines[1], None if dirty not in (0, 1) else bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return None, None


def git_revision() -> str | None:
    """The commit of the dlm source in use (None outside a git checkout of dlm)."""
    return git_state()[0]


def model_fingerprint(model: nn.Module) -> str:
    """16 hex digits identifying a network's weights and declared configuration (``denoiser_fingerprint``)."""
    return denoiser_fingerprint(model)


def describe(obj: Any, depth: int = 3) -> Any:
    """A JSON-able description of a component's settings: scalars as they are, an object as its class and
    its attributes (``depth`` levels deep), a small tensor as a list; networks, large tensors and generators
    are left out (a network is identified by its fingerprint instead)."""
    if isinstance(obj, SCALARS):
        return obj
    if isinstance(obj, (list, tuple)):  # containers are data: only objects count against ``depth``
        return [describe(v, depth) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): describe(v, depth) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):  # a time grid or per-step scalars: small, and part of the settings
        return obj.detach().cpu().tolist() if obj.numel() <= MAX_LISTED else None
    if isinstance(obj, nn.Module) or not hasattr(obj, "__dict__"):
        return None
    out: dict[str, Any] = {"class": f"{type(obj).__module__}.{type(obj).__qualname__}"}
    if depth > 0:
        for k, v in vars(obj).items():
            if not k.startswith("_"):
                value = describe(v, depth - 1)
                if value is not None or isinstance(v, type(None)):
                    out[k] = value
    return out


def provenance(*, seed: int | None, settings: Mapping[str, Any] | Any,
               model: nn.Module | Mapping[str, nn.Module] | None = None, source: str | Path | None = None) -> dict[str, Any]:
    """The ``"provenance"`` object of a result JSON (see module docstring).

    seed      the seed of the job's random draws (None: a deterministic job);
    settings  the sampler / method settings: a dict, or a component (a sampler) described by ``describe``;
    model     the network the numbers are of, or ``{name: network}`` for several (a benchmark's);
    source    the directory the model was loaded from (a Hub snapshot is named by repo and commit).
    """
    rev, dirty = git_state()
    if isinstance(model, nn.Module):
        fingerprint: str | dict[str, str] | None = model_fingerprint(model)
    elif model:
        fingerprint = {name: model_fingerprint(m) for name, m in model.items()}
    else:
        fingerprint = None
    return {"dlm_version": dlm_version(), "git_rev": rev, "git_dirty": dirty, "seed": seed,
            "settings": describe(settings), "model_fingerprint": fingerprint, "hub": hub_origin(source)}
