"""The sequence being generated: length checks, prompt / infilling setup, EOS bookkeeping.

A prompt is (P,) or (B, P) with P <= length: its tokens are fixed, except positions holding
``mask_id``, which are generated (infilling); positions P..length-1 are generated too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dlm.errors import ConfigError


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def check_length(length: int, *, max_seq_len: int | None, prompt_len: int | None = None, key: str = "length") -> None:
    """Refuse, before any compute, a canvas the model cannot attend over or one the prompt already fills.

    ``prompt_len`` None: the prompt is checked elsewhere (infilling templates may fill the canvas).
    """
    if length < 1:
        raise ConfigError(f"{key}={length} must be >= 1")
    if max_seq_len is not None and length > max_seq_len:
        raise ConfigError(
            f"{key}={length} exceeds the model's context model.max_seq_len={max_seq_len}; lower {key}, generate "
            "in windows with sampler=strided (sampler.stride=...) or in blocks, or extend the context with NTK "
            "RoPE scaling (rope_scaling=...)"
        )
    if prompt_len is not None and prompt_len >= length:
        raise ConfigError(f"the prompt is {prompt_len} tokens (BOS included), which leaves nothing to generate "
                          f"at {key}={length}; raise {key} or shorten the prompt")


def init_canvas(model, *, batch_size: int, length: int, prompt: Tensor | None) -> Tensor:
    """All-mask canvas (B, length) with the prompt written in; masked entries are to be generated."""
    check_length(length, max_seq_len=model.max_seq_len)
    device = model_device(model)
    x = torch.full((batch_size, length), model.mask_id, dtype=torch.long, device=device)
    if prompt is not None:
        prompt = prompt.to(device)
        prompt = prompt.expand(batch_size, -1) if prompt.dim() == 1 else prompt
        if prompt.shape[0] != batch_size:
            raise ConfigError(f"prompt has {prompt.shape[0]} rows but batch_size={batch_size}")
        if prompt.shape[1] > length:
            raise ConfigError(f"prompt length {prompt.shape[1]} exceeds length={length}; raise length")
        x[:, : prompt.shape[1]] = prompt
    return x


def padded_positions(select: Tensor) -> tuple[Tensor, Tensor]:
    """Selected positions of each row, left-aligned and padded: (R, K) ids and (R, K) validity.

    K is the largest count in any row; rows are in ascending position order, so ``valid`` entries
    enumerate ``select`` in row-major order (the same order as ``tensor[select]``).
    """
    count = select.sum(-1)
    k = int(count.max()) if select.numel() else 0
    order = (~select).long().argsort(dim=-1, stable=True)[:, :k]  # selected positions first, ascending
    valid = torch.arange(k, device=select.device)[None] < count[:, None]
    return order, valid


def fill_after_eos(x: Tensor, eos_id: int, mask_id: int, generated: Tensor | None = None) -> None:
    """In place: masks after a row's first EOS become EOS (the row has ended; no network call is spent
    on padding). x (B, L); ``generated`` (B, L) bool limits which EOS count (a prompt's EOS does not)."""
    is_eos = x == eos_id
    if generated is not None:
        is_eos = is_eos & generated
    after = is_eos.long().cumsum(-1) - is_eos.long() > 0  # strictly after the first EOS
    x[after & (x == mask_id)] = eos_id
