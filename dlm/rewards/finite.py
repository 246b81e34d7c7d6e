"""Refuse non-finite rewards: a NaN reward would silently poison a soft-value weight, an SMC resampling
step or a DRAKES loss, so it stops the job naming the rows."""

from __future__ import annotations

import torch
from torch import Tensor

from dlm.errors import NonFiniteError


def check_finite_reward(values: Tensor, *, reward: str = "reward", show: int = 5) -> Tensor:
    """``values`` (B,) when every entry is finite; else NonFiniteError naming up to ``show`` rows.

    It synchronises with the device (``.any()``): call it once per batch of rewards, not per token."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        shown = ", ".join(f"row {r} = {values[r].item()}" for r in rows[:show])
        more = f" and {len(rows) - show} more" if len(rows) > show else ""
        raise NonFiniteError(f"{reward} returned a non-finite value for {len(rows)} of {values.numel()} sequences "
                             f"({shown}{more}); check the reward's inputs and weights")
    return values
