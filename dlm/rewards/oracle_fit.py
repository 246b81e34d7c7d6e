"""Fit an oracle (``dlm.rewards.oracle``) on one selection of a sequence table, score it on another.

Loss: mean squared error on standardised values, z = (y - mean) / std with the *training* rows'
mean and std; Adam, ``steps`` minibatches of ``batch_size`` rows drawn with a seeded generator.
Held-out quality on the test rows: Pearson and Spearman of prediction vs value (a shuffled-label
control on request). ``dlm.io.reward_dir.fit_oracle_dir`` writes the result atomically as a reward
directory; an existing one trained from the same request is reused, a different one refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from torch import Tensor

from dlm.data.sequence_table import SequenceTable
from dlm.errors import ConfigError
from dlm.rewards.correlation import pearson, spearman
from dlm.rewards.oracle import ORACLE_FILE, OracleReward, build_network, sequence_hashes
from dlm.rewards.reward_dir import read_reward_record


def one_hot(sequences: list[str], alphabet: str) -> Tensor:
    """(N, L, K) float one-hot of equally long sequences (already checked against ``alphabet``)."""
    lookup = {c: i for i, c in enumerate(alphabet)}
    lengths = {len(s) for s in sequences}
    if len(lengths) != 1:
        raise ConfigError(f"oracle training rows have lengths {sorted(lengths)[:5]}; an oracle scores one length: "
                          "select rows of one length (e.g. the table's length= option)")
    ids = torch.tensor([[lookup[c] for c in s] for s in sequences], dtype=torch.long)
    return torch.nn.functional.one_hot(ids, len(alphabet)).float()


def _predict(reward: OracleReward, x: Tensor, batch: int = 4096) -> Tensor:
    with torch.no_grad():
        return torch.cat([reward(x[i:i + batch]) for i in range(0, len(x), batch)])


def fit_oracle(*, train: SequenceTable, test: SequenceTable, network: dict, steps: int = 2000,
               batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0,
               shuffle_labels: bool = False, request: dict | None = None) -> OracleReward:
    """Train on ``train``, score on ``test``; the oracle's ``record["summary"]`` holds the held-out metrics.

    ``network``: a spec ``{"_target_": "dlm.rewards.oracle_nets.OneHotMLP", **kwargs}``. ``request``:
    what the caller asked for (table selections), recorded with the settings (``oracle_request``).
    ``shuffle_labels``: permute the training values (a negative control: held-out correlation ~ 0)."""
    if train.alphabet != test.alphabet:
        raise ConfigError(f"train rows are over {train.alphabet!r} but test rows over {test.alphabet!r}")
    if steps <= 0 or batch_size <= 0 or lr <= 0:
        raise ConfigError(f"steps={steps}, batch_size={batch_size} and lr={lr} must be positive")
    started = time.perf_counter()
    x, y = one_hot(train.sequences, train.alphabet), torch.tensor(train.values, dtype=torch.float64)
    x_test, y_test = one_hot(test.sequences, test.alphabet), torch.tensor(test.values, dtype=torch.float64)
    if x.shape[1] != x_test.shape[1]:
        raise ConfigError(f"train rows have {x.shape[1]} letters but test rows {x_test.shape[1]}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the network's initial weights
    if shuffle_labels:
        y = y[torch.randperm(len(y), generator=g)]
    mean, std = float(y.mean()), float(y.std()) if len(y) > 1 else 1.0
    std = std if std > 0 else 1.0
    z = ((y - mean) / std).float()
    net = build_network(network, alphabet_size=len(train.alphabet), length=x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=g)
        loss = torch.nn.functional.mse_loss(net(x[idx]), z[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    record = {"alphabet": train.alphabet, "length": int(x.shape[1]), "mean": mean, "std": std, "network": network,
              "request": oracle_request(request, network=network, steps=steps, batch_size=batch_size, lr=lr,
                                        weight_decay=weight_decay, seed=seed, shuffle_labels=shuffle_labels),
              "trained_on": {"source": train.source, "rows": len(train),
                             "rows_sha256": hashlib.sha256(json.dumps(train.rows).encode()).hexdigest()},
              "tested_on": {"source": test.source, "rows": len(test)}}
    reward = OracleReward(network=net, record=record, train_hashes=sequence_hashes(train.sequences))
    pred = _predict(reward, x_test)
    record["summary"] = {"train_rows": len(train), "test_rows": len(test),
                         "test_spearman": spearman(pred, y_test), "test_pearson": pearson(pred, y_test),
                         "train_spearman": spearman(_predict(reward, x[:20000]), y[:20000]),
                         "seconds": round(time.perf_counter() - started, 2)}
    return reward


def oracle_request(request: dict | None, **settings) -> dict:
    """Everything that decides an oracle: the caller's table selections plus the training settings."""
    return {**(request or {}), **settings}


def existing_oracle(out: Path, request: dict) -> dict | None:
    """The summary of the oracle already at ``out`` when it was trained from ``request`` (reuse it);
    None when ``out`` does not exist; a ConfigError when it holds anything else."""
    if not out.exists():
        return None
    try:
        existing = json.loads((out / ORACLE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        existing = None
    if existing is not None and existing.get("request") == request:
        return {**existing["summary"], "out": str(out), "fingerprint": read_reward_record(out)["fingerprint"],
                "reused": True}
    raise ConfigError(f"out={out} already holds {'a different oracle' if existing else 'something else'}; "
                      "choose another out= or delete it")
