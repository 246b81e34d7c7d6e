"""The evaluation oracle must not be the fine-tuning reward (DESIGN: rewards; issue 13).

A design method optimises its fine-tuning reward until it exploits that reward's errors; scoring the
designs with the same function (or one trained on the same sequences) would report the exploit as
success. ``check_separate_oracles`` refuses, before any compute, an evaluation reward directory that

  * has the fine-tuning reward's fingerprint (the same spec and files, wherever saved), or
  * was trained on any sequence the fine-tuning reward was trained on (both record ``train_rows.npy``,
    the hashes of their training sequences, as ``dlm-fit-oracle`` writes),

unless ``allow_same_oracle=true``. Rewards without training rows (a PWM, the GB1 measured table)
are compared by fingerprint only: ground truth does not leak.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlm.errors import ConfigError
from dlm.rewards.oracle import ROWS_FILE
from dlm.rewards.reward_dir import read_reward_record


def training_hashes(directory: Path) -> np.ndarray | None:
    f = directory / ROWS_FILE
    return np.load(f, allow_pickle=False) if f.is_file() else None


def check_separate_oracles(finetune: str | Path, evaluation: str | Path, *, allow_same_oracle: bool = False) -> None:
    """Refuse (ConfigError) an evaluation reward directory equal to, or trained on rows of, the fine-tuning one."""
    if allow_same_oracle:
        return
    ft, ev = Path(finetune).expanduser(), Path(evaluation).expanduser()
    if read_reward_record(ft)["fingerprint"] == read_reward_record(ev)["fingerprint"]:
        raise ConfigError(f"the evaluation oracle {ev} is the fine-tuning reward {ft} (same fingerprint); train a "
                          "separate one on a disjoint split (dlm-fit-oracle) or set allow_same_oracle=true")
    a, b = training_hashes(ft), training_hashes(ev)
    if a is not None and b is not None:
        shared = int(np.intersect1d(a, b, assume_unique=True).size)
        if shared:
            raise ConfigError(f"the evaluation oracle {ev} was trained on {shared} sequences the fine-tuning reward "
                              f"{ft} was trained on; train it on a disjoint split or set allow_same_oracle=true")
