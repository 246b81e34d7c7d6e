"""The sequence being generated: prompt / infilling setup, and network calls on a subset of rows.

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


def check_length(model, length: int) -> None:
    """Refuse a canvas longer than the model's context before any compute is spent."""
    max_len = getattr(model, "max_seq_len", None)
    if max_len is not None and length > max_len:
        raise ConfigError(
            f"length={length} exceeds model.max_seq_len={max_len}; generate in windows with "
            f"sampler=strided (sampler.stride=...), extend the context with NTK RoPE scaling, or lower length"
        )


def init_canvas(model, *, batch_size: int, length: int, prompt: Tensor | None) -> Tensor:
    """All-mask canvas (B, length) with the prompt written in; masked entries are to be generated."""
    check_length(model, length)
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


def denoise(model, x: Tensor, t: Tensor | None, rows: Tensor | None = None, at: Tensor | None = None) -> Tensor:
    """Logits of ``model`` for x[rows] (all rows when None); t (B,) is sliced alike.

    ``at`` (R, K) asks for the logits of K positions per row only -> (R, K, V); a model whose
    forward accepts ``logits_at`` computes just those, any other is evaluated fully and gathered.
    Without ``at``: (R, L, V).
    """
    if rows is not None:
        x = x[rows]
        t = t[rows] if t is not None else None
    t = t.float() if (t is not None and model.time_conditioned) else None
    if at is None:
        return model(x, t)
    if getattr(model, "computes_logits_at", False):
        return model(x, t, logits_at=at)
    logits = model(x, t)
    return logits.gather(1, at[..., None].expand(-1, -1, logits.shape[-1]))


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
