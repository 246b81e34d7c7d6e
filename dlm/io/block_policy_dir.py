"""Block-size policies as model directories (family ``BLOCK_POLICY``), written by ``dlm-train-policy``.

``load_block_policy`` is the Hydra target of ``conf/sampler/block_dynamic.yaml``
(``sampler.block_size_policy.path=<out>/policy``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dlm.errors import CheckpointError
from dlm.io.model_dir import load_model_dir, save_model_dir
from dlm.io.record import Family
from dlm.models.block_policy import BlockSizePolicy


def save_block_policy(path: str | Path, *, policy: BlockSizePolicy, tokenizer: Any, extra: dict | None = None) -> Path:
    """Write a trained policy as a model directory (``tokenizer``: the denoiser's, so the directory says
    which vocabulary its denoiser reads)."""
    spec = {"_target_": "dlm.models.block_policy.BlockSizePolicy", "sizes": list(policy.sizes), "dim": policy.dim,
            "hidden_dim": policy.hidden_dim}
    return save_model_dir(path, model=policy, model_spec=spec, tokenizer=tokenizer, family=Family.BLOCK_POLICY,
                          extra=extra)


def load_block_policy(path: str | Path, device: str | torch.device = "cpu") -> BlockSizePolicy:
    """The policy in eval mode (argmax decisions) from ``save_block_policy``'s directory."""
    loaded = load_model_dir(path, device=device)
    if loaded.family is not Family.BLOCK_POLICY:
        raise CheckpointError(f"{path} holds a {loaded.family.kind!r} model, not a block-size policy; point "
                              "sampler.block_size_policy.path at a directory written by dlm-train-policy")
    return loaded.model.eval()
