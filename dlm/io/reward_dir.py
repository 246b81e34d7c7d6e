"""Save a reward as a directory, atomically (the format and ``load_reward`` are ``dlm.rewards.reward_dir``),
and write a freshly fitted oracle directory (``fit_oracle_dir``, what dlm-fit-oracle runs).

The directory is written under a temporary sibling name and renamed onto ``path`` when complete, so a
crash never leaves a half-written reward that ``load_reward`` could read.
"""

from __future__ import annotations

from pathlib import Path

from dlm.data.sequence_table import SequenceTable
from dlm.io.atomic import atomic_dir
from dlm.rewards.oracle_fit import existing_oracle, fit_oracle, oracle_request
from dlm.rewards.reward_dir import SavableReward, write_reward


def save_reward(reward: SavableReward, path: str | Path) -> str:
    """Write ``reward`` to the directory ``path`` (replacing it); returns its fingerprint."""
    with atomic_dir(path) as tmp:
        return write_reward(reward, tmp)


def fit_oracle_dir(out: str | Path, *, train: SequenceTable, test: SequenceTable, network: dict, steps: int = 2000,
                   batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0,
                   shuffle_labels: bool = False, request: dict | None = None) -> dict:
    """Train an oracle (``dlm.rewards.oracle_fit.fit_oracle``, same arguments) and save it at ``out``; returns
    its summary with ``out`` and ``fingerprint``. An ``out`` trained from the same request is reused
    (``"reused": true``, nothing retrained), any other existing ``out`` is refused before training."""
    out = Path(out).expanduser()
    settings = dict(network=network, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
                    shuffle_labels=shuffle_labels)
    reused = existing_oracle(out, oracle_request(request, **settings))
    if reused is not None:
        return reused
    reward = fit_oracle(train=train, test=test, request=request, **settings)
    return {**reward.record["summary"], "out": str(out), "fingerprint": save_reward(reward, out)}
