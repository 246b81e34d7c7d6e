"""Reward directories: any reward saved to a folder and rebuilt from its path alone (the format and loading;
``dlm.io.reward_dir.save_reward`` stages the writing atomically, one layer up).

    <dir>/reward.json   {"format": 1, "spec": {"_target_": "dlm.rewards....", kwargs...}, "fingerprint": sha256}
    <dir>/...           files the reward wrote (weights, tables, the rows an oracle was trained on)

A reward is savable when it has ``save(directory) -> spec``: it writes its files into ``directory``
and returns the JSON spec that rebuilds it (closed-form rewards write nothing and return their
arguments). A spec with ``"_directory_": true`` is called with ``directory=<dir>`` to read those files.
Only ``dlm.*`` targets are built from a directory (a reward folder from elsewhere cannot name an
arbitrary callable). The fingerprint hashes the spec and every file, so two directories holding
the same reward have the same fingerprint wherever they live (``dlm.rewards.separation``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Protocol

from dlm.errors import CheckpointError, ConfigError
from dlm.rewards.protocol import RewardModel

REWARD_FILE = "reward.json"
FORMAT = 1


class SavableReward(RewardModel, Protocol):
    def save(self, directory: Path) -> dict: ...  # writes its files, returns {"_target_": ..., kwargs}


def locate_dlm(target: str, key: str) -> Any:
    """The object named by a ``dlm.*`` dotted path; anything else is refused naming ``key``."""
    if not isinstance(target, str) or not target.startswith("dlm."):
        raise ConfigError(f"{key}={target!r}: only dlm.* targets are built from a saved directory")
    module_name, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{key}={target!r} does not name an object of dlm ({err})") from err


def directory_fingerprint(directory: Path, spec: dict) -> str:
    """sha256 over the canonical spec and every file (name and bytes) except reward.json."""
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for f in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != REWARD_FILE):
        h.update(str(f.relative_to(directory)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def write_reward(reward: SavableReward, directory: Path) -> str:
    """Write ``reward``'s files and reward.json into the (empty, staged) ``directory``; returns the
    fingerprint. Callers stage it: ``dlm.io.reward_dir.save_reward`` renames it into place when complete."""
    spec = reward.save(directory)
    locate_dlm(spec.get("_target_"), "spec._target_")  # a spec that could not be loaded back is a bug here
    fingerprint = directory_fingerprint(directory, spec)
    (directory / REWARD_FILE).write_text(json.dumps({"format": FORMAT, "spec": spec, "fingerprint": fingerprint},
                                                    indent=2, sort_keys=True), encoding="utf-8")
    return fingerprint


def read_reward_record(path: str | Path) -> dict:
    """The parsed reward.json of a reward directory (format, spec, fingerprint)."""
    file = Path(path).expanduser() / REWARD_FILE
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
        if record["format"] != FORMAT or "_target_" not in record["spec"]:
            raise ValueError(f"format {record['format']} (this dlm reads {FORMAT}) or no spec._target_")
        return record
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{file} is missing or not a dlm reward record ({err}); save one with "
                              "dlm.io.reward_dir.save_reward or dlm-fit-oracle") from err


def load_reward(path: str | Path) -> RewardModel:
    """The reward saved in the directory ``path``."""
    directory = Path(path).expanduser()
    spec = dict(read_reward_record(directory)["spec"])
    target = locate_dlm(spec.pop("_target_"), f"{directory / REWARD_FILE}: spec._target_")
    if spec.pop("_directory_", False):
        spec["directory"] = directory
    return target(**spec)
