"""Publish a model directory on the Hugging Face Hub (what dlm-push runs): ``push_model_dir``.

The directory is checked first (a model directory: ``model.json``, ``model.safetensors``,
``tokenizer/``), its model card (``dlm.io.model_card``) is written into it as ``README.md`` (atomically;
a README not written by dlm-push is kept as it is), and then the folder is uploaded in one commit:
``HfApi.create_repo(exist_ok=True)``, the branch created when ``revision`` names one, ``upload_folder``.
``dry_run`` stops after the card: it lists what would be uploaded and touches no network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlm.errors import ConfigError, OfflineError
from dlm.io.atomic import write_text_atomic
from dlm.io.hub import HUB_ID, hub_offline
from dlm.io.model_card import CARD_FILE, CARD_MARKER, model_card
from dlm.io.model_dir import META_FILE, WEIGHTS_FILE
from dlm.io.tokenizer_files import TOKENIZER_DIR

IGNORE = [".*", "**/.*", "**/__pycache__/**"]  # atomic writers' temporaries, editor and OS files


def check_model_dir(model: str | Path) -> Path:
    """``model`` as a local dlm model directory; ConfigError naming what is missing otherwise."""
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ConfigError(f"model={model} is not a local directory; pass the model directory to push "
                          "(<run_dir>/model from dlm-train, or a dlm-convert output)")
    missing = [name for name in (META_FILE, WEIGHTS_FILE, TOKENIZER_DIR) if not (path / name).exists()]
    if missing:
        raise ConfigError(f"model={model} is not a dlm model directory: it lacks {', '.join(missing)}; pass the "
                          "directory dlm-train exports (<run_dir>/model) or dlm-convert writes (dst=)")
    return path


def upload_files(path: Path) -> list[str]:
    """The files of ``path`` that would be uploaded (relative, sorted): hidden files left out, as ``IGNORE``."""
    files = []
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path)
        if f.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            files.append(rel.as_posix())
    return files


def write_card(path: Path, repo: str) -> str:
    """Write the model card as ``<path>/README.md`` unless a README not written by dlm-push is there;
    returns "written" or "kept"."""
    card = path / CARD_FILE
    if card.is_file() and CARD_MARKER not in card.read_text(encoding="utf-8", errors="replace"):
        return "kept"
    write_text_atomic(card, model_card(path, repo))
    return "written"


def push_model_dir(model: str | Path, repo: str, *, private: bool = False, revision: str | None = None,
                   commit_message: str | None = None, dry_run: bool = False, api: Any = None) -> dict:
    """Upload the model directory ``model`` to the Hub repo ``repo`` (``org/name``) with its card.

    ``private``: a new repo is private (an existing repo keeps its visibility). ``revision``: the branch
    to commit to (created from the default branch when missing; None: the default branch).
    ``dry_run``: write the card and return the file list, without any network. ``api``: an ``HfApi``
    (None: ``HfApi()``, which reads the token of ``hf auth login`` or ``HF_TOKEN``).
    Returns {repo, model, card (its path), card_written (False: a hand-written README kept), files, bytes,
    private, revision, dry_run, and for a real push: url, commit, commit_url, message}.
    """
    path = check_model_dir(model)
    if not isinstance(repo, str) or "@" in repo or not HUB_ID.fullmatch(repo):
        raise ConfigError(f"repo={repo!r} must be a Hugging Face Hub repo id org/name (the branch goes in revision=)")
    if not dry_run and hub_offline():
        raise OfflineError(f"dlm-push uploads to the Hugging Face Hub and HF_HUB_OFFLINE=1; push from a connected "
                           f"machine, or pass dry_run=true to write {path / CARD_FILE} and list the files")
    card = write_card(path, repo)
    files = upload_files(path)
    out = {"repo": repo, "model": str(path), "card": str(path / CARD_FILE), "card_written": card == "written",
           "files": files, "bytes": sum((path / f).stat().st_size for f in files), "private": bool(private),
           "revision": revision, "dry_run": bool(dry_run)}
    if dry_run:
        return out
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = api or HfApi()
    message = commit_message or f"dlm-push: {path.name} ({len(files)} files)"
    try:
        url = api.create_repo(repo_id=repo, repo_type="model", private=bool(private), exist_ok=True)
        if revision:
            api.create_branch(repo_id=repo, branch=revision, repo_type="model", exist_ok=True)
        commit = api.upload_folder(repo_id=repo, folder_path=str(path), repo_type="model", revision=revision,
                                   commit_message=message, ignore_patterns=IGNORE)
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise ConfigError(f"repo={repo}: the Hub refused the upload ({status}); log in with `hf auth login` "
                              "(or set HF_TOKEN) with write access to that namespace") from e
        raise
    except Exception as e:
        if not isinstance(e, (OSError, ConnectionError)) and not type(e).__module__.startswith("httpx"):
            raise
        raise OfflineError(f"repo={repo}: the Hub is unreachable ({type(e).__name__}); push from a connected "
                           "machine, or pass dry_run=true") from e
    return {**out, "url": str(url), "commit": commit.oid, "commit_url": commit.commit_url, "message": message}
