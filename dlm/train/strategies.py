"""Lightning strategies that need Python objects a YAML file cannot name (FSDP wrap policy)."""

from __future__ import annotations

from lightning.pytorch.strategies import FSDPStrategy

from dlm.models.transformer import Block


def fsdp_strategy(*, sharding_strategy: str = "FULL_SHARD", activation_checkpointing: bool = False,
                  state_dict_type: str = "full") -> FSDPStrategy:
    """FSDP with each transformer ``Block`` as a wrap unit (and optional activation checkpointing)."""
    return FSDPStrategy(
        sharding_strategy=sharding_strategy,
        auto_wrap_policy={Block},
        activation_checkpointing_policy={Block} if activation_checkpointing else None,
        state_dict_type=state_dict_type,
    )
