"""Exponential moving average of model weights, with MDLM/RADD's warm-up cap (1+n)/(10+n).

Under FSDP2 the parameters are DTensors (each rank holds a shard): the shadow is built from them
*after* sharding, so it is sharded alike and every update is local. ``state_dict`` gathers full tensors
(a collective: every rank calls it, as Lightning does when it saves a checkpoint) and
``load_state_dict`` re-shards full tensors into the shadow's layout, so checkpoints hold plain tensors
whatever the strategy.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor of a DTensor shard (a collective), a plain tensor unchanged."""
    return t.full_tensor() if isinstance(t, DTensor) else t


class EMA:
    """Shadow copy of the floating-point parameters; ``swapped(model)`` evaluates with it."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay={decay} must lie in [0, 1)")
        self.decay = decay
        self.num_updates = 0
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().to(self.shadow[n].dtype), 1.0 - d)

    @contextmanager
    def swapped(self, model: nn.Module):
        """Temporarily load the EMA weights into ``model``; the live weights come back after."""
        live = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in live:
                        p.copy_(live[n])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                p.copy_(self.shadow[n].to(p.device, p.dtype))

    def to(self, device: torch.device) -> None:
        self.shadow = {n: v.to(device) for n, v in self.shadow.items()}

    def state_dict(self) -> dict:
        """Full (gathered) shadow tensors: a collective under FSDP2."""
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {n: full_tensor(v) for n, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.num_updates = state["decay"], state["num_updates"]
        self.shadow = {n: _like(v, self.shadow.get(n)) for n, v in state["shadow"].items()}


def _like(full: Tensor, current: Tensor | None) -> Tensor:
    """``full`` laid out as ``current``: sharded as a DTensor shadow is, else a plain copy."""
    if isinstance(current, DTensor):
        return distribute_tensor(full.to(current.device, current.dtype), current.device_mesh, current.placements)
    return full.clone()
