"""Hugging Face Hub repo ids where a model directory is expected: ``resolve_model_path``.

Every ``model=`` / ``init_from=`` / ``energy=`` / ``tokenizer_from=`` / schedule path, and ``dlm.load``,
passes through ``resolve_model_path`` (called by ``dlm.io.model_dir.read_record`` / ``load_model_dir``,
``schedule_dir.read_schedule_dir``, ``tokenizer_files.tokenizer_of``, ``energy_dir.load_energy``), so one
function decides what a string names:

- a local path is returned unchanged: an existing file or directory always wins, and a string that
  starts with ``.``, ``/`` or ``~`` is never sent to the Hub (nor is anything but ``org/name``, nor a
  ``pathlib.Path``: code that already holds a ``Path`` means a local one);
- ``org/name`` or ``org/name@<revision>`` (or ``revision=``) is a Hub repo: its snapshot is fetched by
  ``huggingface_hub.snapshot_download`` into the HF cache and that directory is returned. Nothing in
  it is executed: it loads through the normal loader, which builds only ``dlm.*`` targets from
  safetensors weights.

Offline (``HF_HUB_OFFLINE=1``, or the Hub unreachable within ``TIMEOUT_S``) a snapshot already in the
HF cache is used; otherwise one line names the id and the local-path alternative (``OfflineError``).
A repo or revision that does not exist, or a repo that is not a dlm directory, is one ``ConfigError``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dlm.errors import ConfigError, OfflineError

TIMEOUT_S = 10.0  # seconds to reach the Hub before falling back to the local cache
# org/name[@revision]: the Hub's characters for owner and repo names; a revision is a branch, tag or commit
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*)(?:@(?P<revision>[^@\s]+))?")
MODEL_MARKER = "model.json"  # what makes a snapshot a dlm model directory (dlm.io.model_dir.META_FILE)


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision or None)`` when ``spec`` reads as a Hub id and not as a local path, else None.

    A string that exists on disk, or starts with ``.``, ``/`` or ``~``, is a local path, as is
    anything with more or fewer than one ``/`` before the revision.
    """
    if not spec or spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists():
        return None
    match = HUB_ID.fullmatch(spec)
    return (match["repo"], match["revision"]) if match else None


def resolve_model_path(spec: str | Path, revision: str | None = None, *, marker: str | None = MODEL_MARKER) -> Path:
    """The local directory ``spec`` names: a local path unchanged, a Hub id's snapshot in the HF cache.

    ``revision``: a branch, tag or commit of a Hub id (also spelt ``org/name@<revision>``); refused for a
    local path. ``marker``: a file the snapshot must hold to be the expected kind of directory (checked
    from the Hub's file list before anything is downloaded, and in a cached snapshot); None: no check.
    """
    hub = None if isinstance(spec, Path) else parse_hub_id(str(spec))
    if hub is None:
        if revision is not None:
            raise ConfigError(f"revision={revision!r} applies to a Hugging Face Hub repo id (org/name); {spec} is a "
                              "local path: drop revision=")
        return Path(spec)
    repo_id, pinned = hub
    if pinned and revision and pinned != revision:
        raise ConfigError(f"{spec} pins revision {pinned!r} but revision={revision!r} was given; give one of them")
    return snapshot_dir(repo_id, pinned or revision, marker=marker)


def download_hint(repo_id: str, revision: str | None) -> str:
    """The local-path alternative to a Hub id, as one sentence."""
    rev = f" --revision {revision}" if revision else ""
    return (f"download it on a connected machine with `hf download {repo_id}{rev} --local-dir <dir>` and pass "
            "that directory instead of the id (model=<dir>)")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE is set: as ``huggingface_hub`` read it at import, or in the environment now."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def snapshot_dir(repo_id: str, revision: str | None, *, marker: str | None = MODEL_MARKER) -> Path:
    """The snapshot of ``repo_id`` at ``revision`` (None: the default branch): from the Hub when it can be
    reached (the revision resolved to its commit first), else from the local HF cache."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    label = f"{repo_id}@{revision}" if revision else repo_id
    reason = "HF_HUB_OFFLINE=1"
    if not hub_offline():
        try:
            info = HfApi().model_info(repo_id, revision=revision, timeout=TIMEOUT_S)
        except GatedRepoError:
            raise ConfigError(f"Hugging Face Hub repo {repo_id} is gated: accept its terms on the Hub and log in "
                              "(`hf auth login`), or pass a local model directory") from None
        except RepositoryNotFoundError:
            raise ConfigError(f"Hugging Face Hub repo {repo_id} does not exist (or is private: log in with `hf auth "
                              "login`), and no local directory has that name; check the id or pass a local model "
                              "directory") from None
        except RevisionNotFoundError:
            raise ConfigError(f"Hugging Face Hub repo {repo_id} has no revision {revision!r}; pass an existing branch, "
                              f"tag or commit ({repo_id}@main, or revision=<commit>)") from None
        except HFValidationError as e:
            raise ConfigError(f"{label} is neither a local path nor a valid Hub repo id ({e})") from None
        except Exception as e:  # any transport failure (DNS, refused, timeout, 5xx): the cache may still serve
            reason = f"the Hub is unreachable ({type(e).__name__})"
        else:
            files = {s.rfilename for s in info.siblings or []}
            if marker and files and marker not in files:
                raise not_a_dlm_dir(label, marker)
            try:
                path = Path(snapshot_download(repo_id, revision=info.sha, etag_timeout=TIMEOUT_S))
            except LocalEntryNotFoundError as e:
                raise OfflineError(f"{label}: the download stopped ({type(e).__name__}); retry, or "
                                   f"{download_hint(repo_id, revision)}") from None
            return checked(path, label, marker)
    try:
        path = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        raise OfflineError(f"{label} is neither a local directory nor in the local Hugging Face cache, and {reason}; "
                           f"{download_hint(repo_id, revision)}") from None
    return checked(path, label, marker)


def not_a_dlm_dir(label: str, marker: str) -> ConfigError:
    return ConfigError(f"Hugging Face Hub repo {label} holds no {marker}, so it is not a dlm directory; a transformers "
                       "checkpoint is converted first (hf download <id> --local-dir <hf dir>, then dlm-convert "
                       "src=<hf dir> dst=<dir>)")


def checked(path: Path, label: str, marker: str | None) -> Path:
    """``path`` if it holds ``marker`` (or no marker is asked for)."""
    if marker and not (path / marker).exists():
        raise not_a_dlm_dir(label, marker)
    return path


def hub_origin(path: str | Path | None) -> dict | None:
    """``{"repo_id", "revision"}`` (the commit) of a directory inside the HF cache
    (``.../models--org--name/snapshots/<commit>``); None for any other directory."""
    if path is None:
        return None
    path = Path(path)
    repo = path.parent.parent.name
    if path.parent.name != "snapshots" or not repo.startswith("models--"):
        return None
    return {"repo_id": repo.removeprefix("models--").replace("--", "/"), "revision": path.name}
