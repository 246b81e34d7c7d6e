"""Block ids and the BD3-LM / SDAR attention mask for the vectorised [x_t ; x_0] training input.

For a row of n tokens with per-position block ids b(i) and document ids d(i), the 2n x 2n
"may attend" mask over [x_t ; x_0] (query q, key k; a token's half is x_t or x_0, its block and
document are those of its index mod n) is the union of (Arriola et al. 2025, BD3-LM §3.2):
  M_BD   same half, b(k) == b(q)                 (each block sees itself bidirectionally)
  M_OBC  query in x_t, key in x_0, b(k) < b(q)   (a noisy block sees clean *earlier* blocks)
  M_BC   both in x_0, b(k) <= b(q)               (the clean stream is block-causal = the KV cache)
and every pair must share a document (SDAR's block_diag over packed documents). x_t never sees
its own clean block (that would leak the answer) and x_0 never sees x_t. One predicate
(``_allowed``) serves the dense mask (CPU, SDPA) and FlexAttention's ``mask_mod`` (CUDA), so the
two cannot drift. Block ids restart at 0 in every document, so blocks align with each document's
position 0. Shapes: block_ids, document_ids (B, n) long; dense masks (B, 1, 2n, 2n) bool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from dlm.errors import ConfigError


def block_ids_fixed(n_or_positions: int | Tensor, block_size: int) -> Tensor:
    """Block id of every position, position // block_size.

    An int n gives (n,) ids for positions 0..n-1 and requires block_size | n (ConfigError naming
    ``objective.block_size`` otherwise); a positions tensor (B, n) or (n,) gives ids per document
    (positions restart at 0), a document's last block possibly short.
    """
    if block_size < 1:
        raise ConfigError(f"objective.block_size={block_size} must be >= 1")
    if isinstance(n_or_positions, Tensor):
        return torch.div(n_or_positions, block_size, rounding_mode="floor")
    if n_or_positions % block_size:
        raise ConfigError(f"objective.block_size={block_size} does not divide the sequence length "
                          f"{n_or_positions}; pick a block size that divides data.seq_len "
                          "(or use objective.block_sizes for variable blocks)")
    return torch.arange(n_or_positions) // block_size


def block_causal_mask(q_positions: Tensor, k_positions: Tensor, block_size: int) -> Tensor:
    """(L, S) bool: a query at position p sees a key at position r iff r // block_size <= p // block_size.

    Blocks see themselves bidirectionally and every earlier block (BD3-LM's M_BC; block_size = 1
    is the causal mask, block_size >= L full attention). Positions (L,) and (S,) long.
    """
    return (k_positions // block_size)[None, :] <= (q_positions // block_size)[:, None]


def block_ids_from_sizes(sizes: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """Block ids (sum(sizes),) for consecutive blocks of the given (variable) sizes (CtrlDiff)."""
    sizes = [int(s) for s in sizes]
    if any(s < 1 for s in sizes):
        raise ConfigError(f"objective.block_sizes: every block size must be >= 1, got {sizes}")
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))


def random_block_partition(n: int, sizes: Sequence[int], generator: torch.Generator | None = None) -> list[int]:
    """A partition of n into blocks whose sizes are drawn uniformly from ``sizes`` (last one truncated)."""
    if not sizes or any(int(s) < 1 for s in sizes):
        raise ConfigError(f"objective.block_sizes={list(sizes)} must be a non-empty list of sizes >= 1")
    choice = torch.randint(len(sizes), (max(n, 1),), generator=generator).tolist()  # <= n blocks needed
    out, total = [], 0
    for c in choice:
        if total >= n:
            break
        out.append(min(int(sizes[c]), n - total))
        total += out[-1]
    return out


def document_ids_from_positions(positions: Tensor) -> Tensor:
    """Document ids (B, n): a new document starts wherever the position resets to 0 (SDAR packing).

    The first token of a row always opens document 0, whatever its position.
    """
    starts = positions == 0
    starts[..., 0] = True
    return starts.long().cumsum(-1) - 1


def segment_ids(block_ids: Tensor, document_ids: Tensor) -> Tensor:
    """(B, n) long: running index of each (document, block) segment of a row, from 0.

    Lets the objective draw one diffusion time per block when block ids restart per document.
    """
    change = (block_ids[:, 1:] != block_ids[:, :-1]) | (document_ids[:, 1:] != document_ids[:, :-1])
    return torch.cat([torch.zeros_like(block_ids[:, :1]), change.long().cumsum(-1)], dim=1)


def _allowed(q_clean: Tensor, k_clean: Tensor, bq: Tensor, bk: Tensor, dq: Tensor, dk: Tensor) -> Tensor:
    """The three-part predicate of the module docstring; broadcasts over any index shapes."""
    diagonal = (q_clean == k_clean) & (bk == bq)  # M_BD
    offset_causal = ~q_clean & k_clean & (bk < bq)  # M_OBC
    clean_causal = q_clean & k_clean & (bk <= bq)  # M_BC
    return (dq == dk) & (diagonal | offset_causal | clean_causal)


def _ids(block_ids: Tensor, document_ids: Tensor | None) -> tuple[Tensor, Tensor]:
    block_ids = block_ids[None] if block_ids.dim() == 1 else block_ids
    docs = torch.zeros_like(block_ids) if document_ids is None else document_ids.expand_as(block_ids)
    return block_ids, docs


def block_diffusion_mask(block_ids: Tensor, document_ids: Tensor | None = None) -> Tensor:
    """The dense (B, 1, 2n, 2n) boolean mask over [x_t ; x_0]; ids (B, n) or (n,)."""
    block_ids, docs = _ids(block_ids, document_ids)
    n = block_ids.shape[-1]
    clean = torch.arange(2 * n, device=block_ids.device) >= n  # (2n,)
    blk, doc = block_ids.repeat(1, 2), docs.repeat(1, 2)  # (B, 2n)
    mask = _allowed(clean[:, None], clean[None, :], blk[:, :, None], blk[:, None, :], doc[:, :, None],
                    doc[:, None, :])
    return mask[:, None]


def block_diffusion_mask_mod(block_ids: Tensor, document_ids: Tensor | None = None) -> Callable:
    """FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool`` equal to ``block_diffusion_mask``."""
    block_ids, docs = _ids(block_ids, document_ids)
    n = block_ids.shape[-1]

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        qi, ki = q_idx % n, kv_idx % n
        return _allowed(q_idx >= n, kv_idx >= n, block_ids[b, qi], block_ids[b, ki], docs[b, qi], docs[b, ki])

    return mask_mod


def flex_available(device: torch.device | str) -> bool:
    """FlexAttention block masks are used only on CUDA with a torch that ships them."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.flex_attention import create_block_mask  # noqa: F401
    except ImportError:
        return False
    return True


def flex_block_diffusion_mask(block_ids: Tensor, document_ids: Tensor | None = None):
    """The same mask as a FlexAttention ``BlockMask`` (CUDA): block-sparse, never materialised densely."""
    from torch.nn.attention.flex_attention import create_block_mask

    block_ids, docs = _ids(block_ids, document_ids)
    b, n = block_ids.shape
    return create_block_mask(block_diffusion_mask_mod(block_ids, docs), b, None, 2 * n, 2 * n,
                             device=block_ids.device)
