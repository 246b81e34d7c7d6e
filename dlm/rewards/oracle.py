"""Trained sequence -> value oracles as rewards, saved as reward directories.

    r(x) = mean + std · f_theta(letter_probs(x))        x (B, L, V) -> (B,)

f_theta is a network of ``dlm.rewards.oracle_nets`` trained on standardised values (``oracle_fit``);
it is smooth in x, so the oracle is differentiable (DRAKES, classifier guidance). A directory:

    reward.json         spec {"_target_": "dlm.rewards.oracle.load_oracle", "_directory_": true} + fingerprint
    oracle.json         network spec, alphabet, length, mean, std, what it was trained on, held-out metrics
    model.safetensors   the network's weights
    train_rows.npy      (N,) uint64, sorted: a hash of every training sequence (``sequence_hashes``),
                        so two oracles can be checked to share no training sequence (``separation``)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dlm.errors import CheckpointError, ConfigError
from dlm.rewards.protocol import letter_probs
from dlm.rewards.reward_dir import locate_dlm

ORACLE_FILE, WEIGHTS_FILE, ROWS_FILE = "oracle.json", "model.safetensors", "train_rows.npy"


def sequence_hashes(sequences: Sequence[str]) -> np.ndarray:
    """Sorted unique uint64 hashes (first 8 bytes of blake2b) of ``sequences``."""
    return np.unique(np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
                               for s in sequences], dtype=np.uint64))


def build_network(spec: dict, *, alphabet_size: int, length: int) -> nn.Module:
    """The network a spec names (``_target_`` in dlm.rewards.oracle_nets or any dlm.* module)."""
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    return locate_dlm(spec["_target_"], "network._target_")(alphabet_size=alphabet_size, length=length, **kwargs)


class OracleReward:
    """A trained regressor read as a reward: (B, L, V) -> (B,). ``record`` is oracle.json's content."""

    differentiable = True

    def __init__(self, *, network: nn.Module, record: dict, train_hashes: np.ndarray) -> None:
        self.network = network.eval()
        self.record, self.train_hashes = record, train_hashes
        self.alphabet, self.length = str(record["alphabet"]), int(record["length"])
        self.mean, self.std = float(record["mean"]), float(record["std"])

    def to(self, device: torch.device | str) -> OracleReward:
        self.network.to(device)
        return self

    def __call__(self, probs: Tensor) -> Tensor:
        x = letter_probs(probs, self.alphabet).float()
        if x.shape[1] != self.length:  # a shape, not a value: no device synchronisation
            raise ConfigError(f"this oracle scores sequences of length {self.length}, got {x.shape[1]}; set "
                              f"length={self.length} or train an oracle for that length")
        return self.mean + self.std * self.network(x)

    def save(self, directory: Path) -> dict:
        save_file({k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()},
                  str(directory / WEIGHTS_FILE))
        (directory / ORACLE_FILE).write_text(json.dumps(self.record, indent=2, sort_keys=True), encoding="utf-8")
        np.save(directory / ROWS_FILE, self.train_hashes, allow_pickle=False)
        return {"_target_": "dlm.rewards.oracle.load_oracle", "_directory_": True}


def load_oracle(directory: str | Path, device: str = "cpu") -> OracleReward:
    """The ``OracleReward`` saved in ``directory`` (weights via safetensors, hashes without pickle)."""
    d = Path(directory).expanduser()
    try:
        record = json.loads((d / ORACLE_FILE).read_text(encoding="utf-8"))
        network = build_network(record["network"], alphabet_size=len(record["alphabet"]), length=int(record["length"]))
        network.load_state_dict(load_file(str(d / WEIGHTS_FILE), device=device))
        hashes = np.load(d / ROWS_FILE, allow_pickle=False)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"oracle directory {d} is missing or corrupt ({err}); retrain it with dlm-fit-oracle") from err
    return OracleReward(network=network.to(device), record=record, train_hashes=hashes)
