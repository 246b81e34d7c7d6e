"""Dilated residual CNN denoiser: the backbone of DRAKES' DNA model (``CNNModel`` of Dirichlet Flow Matching).

    h_0 = ReLU(Conv1d_k(onehot(tokens)))   or   ReLU(Conv1d_k(probs))    (soft one-hot input, for rewards)
    h  <- h + (1 + g_i) * Dropout(ReLU(Conv1d_{k, d_i}(mod(LayerNorm(h), s_i, c_i))))     i = 1 .. n
    logits = Linear(ReLU(Linear(mod(LayerNorm(h), s_f, c_f))))                 (DRAKES' two 1x1 convs)

The input convolution over the one-hot is the embedding (a (V, dim) table per kernel offset), so a
probability input is exactly ``probs`` convolved with those tables: differentiable in ``probs``.
Dilations: the pattern ``dilations`` (DRAKES: 1, 1, 4, 16, 64), each entry repeated ``num_stacks``
times in place (DRAKES: 4, so 8 x d1, 4 x d4, 4 x d16, 4 x d64 = 20 blocks, kernel 9, dim 128); the
receptive field grows to 1 + (k - 1) * sum(dilations) * num_stacks positions. 'Same' zero padding
keeps the length. LayerNorm is per position over channels, so no statistic mixes positions (a
GroupNorm over the length would make every output depend on the padding and the canvas length).

Time: DRAKES feeds sigma = 0 (no time conditioning); ``time_conditioned=True`` conditions exactly as
the transformer does (``dlm.nn.time_embedding``: SiLU(TimestepEmbedding(t)) -> zero-initialised
adaLN shift / scale / gate per block and for the final norm), so at initialisation the conditioned
model equals the time-free one.

Call contract (``dlm.types.Denoiser``): ``logits_at`` is honoured (the head runs only there);
``attn_mask`` only as a padding mask (B, 1, 1, L) (padded positions are zeroed before every
convolution so real positions never read them); ``positions``, ``cache`` / ``store_cache`` are refused:
convolutions are translation-equivariant over a contiguous canvas and keep no keys or values.
Shapes: B batch, L length, V vocabulary (mask included), dim channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from dlm.errors import ConfigError
from dlm.nn.time_embedding import AdaLNModulation, TimestepEmbedding, modulate
from dlm.types import AttentionCache


class ConvBlock(nn.Module):
    """Pre-norm residual block: LayerNorm -> (adaLN) -> dilated Conv1d -> ReLU -> dropout, gated residual.
    x (B, L, dim) -> (B, L, dim)."""

    def __init__(self, *, dim: int, kernel_size: int, dilation: int, dropout: float, cond_dim: int | None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, kernel_size, dilation=dilation, padding=dilation * (kernel_size - 1) // 2)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.adaLN_modulation = AdaLNModulation(cond_dim, dim, 3) if cond_dim is not None else None

    def forward(self, x: Tensor, c: Tensor | None, keep: Tensor | None) -> Tensor:
        h = self.norm(x)
        gate = None
        if self.adaLN_modulation is not None and c is not None:
            shift, scale, gate = self.adaLN_modulation(c)
            h = modulate(h, shift, scale)
        if keep is not None:  # padding never reaches a real position through the kernel
            h = h * keep
        h = self.dropout(F.relu(self.conv(h.transpose(1, 2)).transpose(1, 2)))
        return x + (h if gate is None else (1 + gate) * h)


class ConvDenoiser(nn.Module):
    """Denoiser backbone: tokens (B, L) int or probs (B, L, V) float, t (B,) / (B, L) -> logits (B, L, V).

    ``dilations`` x ``num_stacks``: the dilation pattern and how often each entry repeats (module
    docstring); ``kernel_size`` odd; ``max_seq_len`` None = any length (a convolution has no position
    table), else longer inputs are refused. Precision: no autocast inside; the caller owns it.
    """

    attention = "bidirectional"
    block_size = None

    def __init__(
        self,
        *,
        vocab_size: int,
        mask_id: int,
        dim: int = 128,
        kernel_size: int = 9,
        dilations: Sequence[int] = (1, 1, 4, 16, 64),
        num_stacks: int = 4,
        max_seq_len: int | None = None,
        time_conditioned: bool = False,
        cond_dim: int = 128,
        dropout: float = 0.0,
        shift_logits: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= mask_id < vocab_size:
            raise ConfigError(f"mask_id={mask_id} must be a token id in [0, vocab_size={vocab_size})")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"model.kernel_size={kernel_size} must be odd (same-length convolution); use e.g. 9")
        if not dilations or any(int(d) < 1 for d in dilations):
            raise ConfigError(f"model.dilations={list(dilations)} must be a non-empty list of integers >= 1")
        if num_stacks < 1:
            raise ConfigError(f"model.num_stacks={num_stacks} must be >= 1")
        if shift_logits:
            raise ConfigError("model.shift_logits=true is a block-diffusion reading; ConvDenoiser is a masked-diffusion "
                              "model (objective=mdlm / radd): drop shift_logits")
        self.vocab_size, self.mask_id, self.max_seq_len = vocab_size, mask_id, max_seq_len
        self.time_conditioned, self.shift_logits, self.dim = time_conditioned, False, dim
        self.embed = nn.Conv1d(vocab_size, dim, kernel_size, padding=(kernel_size - 1) // 2)
        self.time_embed = TimestepEmbedding(cond_dim) if time_conditioned else None
        cond = cond_dim if time_conditioned else None
        self.layers = nn.ModuleList(
            ConvBlock(dim=dim, kernel_size=kernel_size, dilation=int(d), dropout=dropout, cond_dim=cond)
            for d in dilations for _ in range(num_stacks)
        )
        self.norm = nn.LayerNorm(dim)
        self.final_modulation = AdaLNModulation(cond_dim, dim, 2) if time_conditioned else None
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, vocab_size))

    def shard_units(self) -> list[nn.Module]:
        """The sharding units of FSDP2 (``dlm.types.Shardable``): one per residual block."""
        return list(self.layers)

    def embed_input(self, tokens_or_probs: Tensor, keep: Tensor | None = None) -> Tensor:
        """ids (B, L) -> ReLU(Conv(onehot)); probs (B, L, V) -> ReLU(Conv(probs)), differentiable. -> (B, L, dim).
        ``keep`` (B, L, 1): zero the input at padded positions first."""
        weight = self.embed.weight
        if tokens_or_probs.is_floating_point():
            if tokens_or_probs.shape[-1] != self.vocab_size:
                raise ConfigError(f"probability input has last dimension {tokens_or_probs.shape[-1]}, expected "
                                  f"model.vocab_size={self.vocab_size} (token ids must be an integer tensor)")
            x = tokens_or_probs.to(weight.dtype)
        else:
            x = F.one_hot(tokens_or_probs, self.vocab_size).to(weight.dtype)
        if keep is not None:
            x = x * keep
        return F.relu(self.embed(x.transpose(1, 2)).transpose(1, 2))

    def forward(
        self,
        tokens_or_probs: Tensor,
        t: Tensor | None = None,
        *,
        positions: Tensor | None = None,
        attn_mask: Tensor | None = None,
        logits_at: Tensor | None = None,
        cache: AttentionCache | None = None,
        store_cache: bool = False,
        return_hidden: bool = False,
    ) -> Tensor:
        """Logits (B, L, V), or (B, K, V) at ``logits_at`` (B, K) long; hidden (B, L, dim) with ``return_hidden``.

        t: (B,) or (B, L) in [0, 1], required iff ``time_conditioned``. attn_mask: a padding mask
        (B, 1, 1, L) bool ("may attend", ``padding_mask_to_attn_mask``); anything else is refused.
        """
        if positions is not None or cache is not None or store_cache:
            raise ConfigError("ConvDenoiser has no positions and no key/value cache (convolutions over a contiguous "
                              "canvas): call it without positions= / cache=, and decode it with a masked-diffusion "
                              "sampler (sampler=ancestral / first_hitting / ...), not a cached or block sampler")
        B, L = tokens_or_probs.shape[:2]
        if self.max_seq_len is not None and L > self.max_seq_len:
            raise ConfigError(f"sequence length {L} exceeds model.max_seq_len={self.max_seq_len}; truncate the input "
                              f"(data.seq_len) or load with max_seq_len={L} (a convolution has no position table)")
        keep = None
        if attn_mask is not None:
            if attn_mask.dim() != 4 or attn_mask.shape[1] != 1 or attn_mask.shape[2] != 1 or attn_mask.shape[-1] != L:
                raise ConfigError(f"ConvDenoiser honours only a padding attn_mask (B, 1, 1, L={L}), got "
                                  f"{tuple(attn_mask.shape)}: a convolution cannot follow a causal or block mask")
            keep = attn_mask[:, 0, 0, :, None].to(self.embed.weight.dtype)  # (B, L, 1)
        c = None
        if self.time_embed is not None:
            if t is None:
                raise ConfigError("this model has model.time_conditioned=true, so forward() needs the diffusion time "
                                  "`t` (B,) in [0, 1]; pass t, or build the model with model.time_conditioned=false")
            t = t.to(self.embed.weight.device)
            c = F.silu(self.time_embed(t.expand(B) if t.dim() == 0 else t))
        x = self.embed_input(tokens_or_probs, keep)
        for layer in self.layers:
            x = layer(x if keep is None else x * keep, c, keep)
        h = self.norm(x)
        mods = self.final_modulation(c) if self.final_modulation is not None and c is not None else None
        if logits_at is not None:
            # samplers draw few positions per call: run the head only there
            idx = logits_at[..., None].expand(-1, -1, h.shape[-1])
            h = h.gather(1, idx)
            if mods is not None and mods[0].shape[1] > 1:  # per-token t: keep the rows that were kept
                mods = tuple(m.gather(1, idx) for m in mods)
        if mods is not None:
            h = modulate(h, *mods)
        return h if return_hidden else self.head(h)

    def receptive_field(self) -> int:
        """Positions one output reads: 1 + (k - 1) * (1 + sum of the blocks' dilations) (input conv included)."""
        k = self.embed.kernel_size[0]
        return 1 + (k - 1) * (1 + sum(layer.conv.dilation[0] for layer in self.layers))

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Parameter count; ``non_embedding`` drops the input convolution and the output layer (V-sized)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(p.numel() for p in self.embed.parameters()) + sum(p.numel() for p in self.head[-1].parameters())
        return n
