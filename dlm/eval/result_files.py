"""Where an evaluation result is written: named by every setting that changes its number, never
written over a result of other settings.

A result file is one JSON object holding the numbers and ``"settings"``: every input the number
depends on (the model directory, the data's identity, the row length, the scorer and its Monte
Carlo settings, load overrides, ...). The default name is readable and unique per settings:

    <data stem>-<split>-<digest>.json      digest: 10 hex digits of sha1(canonical JSON of settings)

Before any compute the destination is checked (``check_result_path``):
  - no file there: written;
  - a result of the *same* settings: replaced (a rerun computes the same number, up to floating point
    rounding; replacing it keeps one file per setting);
  - anything else (a result of other settings, a result without recorded settings, any other file):
    refused, naming the file and the settings that differ. Nothing is overwritten silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dlm.data.tokenizer import fingerprint_of
from dlm.errors import ConfigError

DIGEST_CHARS = 10


def canonical(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as JSON reads it back (tuples -> lists, keys -> str), so a stored copy compares equal."""
    return json.loads(json.dumps(settings, sort_keys=True))


def settings_digest(settings: dict[str, Any]) -> str:
    """10 hex digits of sha1(canonical JSON of ``settings``)."""
    return fingerprint_of(canonical(settings))[:DIGEST_CHARS]


def result_name(stem: str, split: str, settings: dict[str, Any]) -> str:
    """``<stem>-<split>-<digest>.json``: the readable part says what was scored, the digest of ``settings``
    keeps results of different settings apart (two data files with one stem differ in their path)."""
    return f"{stem}-{split}-{settings_digest(settings)}.json"


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys (sampler.num_steps), so a difference names the leaf that changed."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_differences(old: dict[str, Any], new: dict[str, Any], shown: int = 4) -> str:
    """``key: old -> new`` for the first ``shown`` settings that differ (leaves of nested settings)."""
    old, new = _flat(old), _flat(new)
    keys = sorted(set(old) | set(new), key=str)
    diffs = [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs[:shown]) + ("; ..." if len(diffs) > shown else "")


def check_result_path(path: str | Path, settings: dict[str, Any], *, key: str = "out") -> None:
    """Refuse, before any compute, a destination holding anything but a result of these ``settings``.

    ``key`` names the option that chose the path (``out``) in the message.
    """
    path = Path(path)
    if not path.exists():
        return
    fix = f"pass another {key}=<file>.json, or delete {path} to replace it"
    if not path.is_file():
        raise ConfigError(f"{key}={path} is a directory, not a result file; pass {key}=<file>.json")
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f"{key}={path} exists and is not a JSON result; {fix}") from None
    if not isinstance(old, dict) or not isinstance(old.get("settings"), dict):
        raise ConfigError(f"{key}={path} holds a result without recorded settings (another tool's file or an "
                          f"older dlm's), so it may be of other settings; {fix}")
    new = canonical(settings)
    if old["settings"] != new:
        raise ConfigError(f"{key}={path} holds a result of other settings ({settings_differences(old['settings'], new)}); "
                          f"{fix}")
