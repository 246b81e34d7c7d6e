"""One configurable decoder-style transformer (Llama / Qwen2 / Qwen3 family) used as a denoiser.

    x_0 = E[tokens]  or  probs @ E                      (soft one-hot input, for reward gradients)
    x  <- x + (1 + g_a) * Attn(mod(RMSNorm(x), s_a, c_a))   (RoPE, GQA, optional q/k RMSNorm)
    x  <- x + (1 + g_m) * SwiGLU(mod(RMSNorm(x), s_m, c_m))
    logits = lm_head(mod(RMSNorm(x), s_f, c_f))

mod(h, shift, scale) = h * (1 + scale) + shift. With ``time_conditioned=False`` (RADD's time-free
network) there is no modulation at all (shift = scale = gate = 0) and no time parameters. With
``time_conditioned=True`` they come from adaLN (MDLM's DDiT): SiLU(TimestepEmbedding(t)) through a
zero-initialised linear per block and one for the final norm. The gate enters as (1 + g) rather
than DiT's adaLN-Zero g, so that at initialisation the conditioned model equals the time-free
one with the same shared weights (a time-free checkpoint can be fine-tuned with time, and blocks
are not identities at init).

Parameter names follow HF Llama / Qwen (``embed_tokens``, ``layers.{i}.self_attn.q_proj`` ...,
``norm``, ``lm_head``), so converting a checkpoint is a name map.
Shapes: B batch, L sequence, V vocab (including mask), H heads, D head_dim.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlm.errors import ConfigError
from dlm.nn.attention import AttentionBackend, attention
from dlm.nn.block_mask import block_causal_mask
from dlm.nn.mlp import SwiGLU
from dlm.nn.norm import RMSNorm
from dlm.nn.rope import RopeScaling, apply_rope, rope_frequencies, rope_tables
from dlm.nn.time_embedding import AdaLNModulation, TimestepEmbedding, modulate
from dlm.types import AttentionCache


class SelfAttention(nn.Module):
    """Multi-head self-attention with GQA, RoPE and optional Qwen3 q/k-norm (RMSNorm over D per head,
    before RoPE). x (B, L, dim) -> (B, L, dim)."""

    def __init__(
        self,
        *,
        dim: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        qkv_bias: bool,
        qk_norm: bool,
        norm_eps: float,
        mode: Literal["bidirectional", "causal"],
        backend: AttentionBackend,
    ) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.mode, self.backend = mode, backend
        self.q_proj = nn.Linear(dim, n_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps=norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, eps=norm_eps) if qk_norm else None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Tensor | None,
                cache: AttentionCache | None = None, layer_idx: int = 0, store_cache: bool = False) -> Tensor:
        """``cache``: keys / values of committed tokens, read (and appended to when ``store_cache``)."""
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, L, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        k_all, v_all = k, v
        if cache is not None:
            k_all, v_all = cache.extend(layer_idx, k, v, store=store_cache)
        out = attention(q, k_all, v_all, mode=self.mode, attn_mask=attn_mask, backend=self.backend)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim))


class Block(nn.Module):
    """Pre-norm block around a built ``self_attn``; ``adaLN_modulation`` (6 chunks) exists only when
    time-conditioned (cond_dim not None)."""

    def __init__(
        self,
        *,
        self_attn: SelfAttention,
        dim: int,
        ffn_dim: int,
        norm_eps: float,
        dropout: float,
        cond_dim: int | None,
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim, eps=norm_eps)
        self.self_attn = self_attn
        self.post_attention_layernorm = RMSNorm(dim, eps=norm_eps)
        self.mlp = SwiGLU(dim, ffn_dim)
        # p = 0 (every converted and inference model): no module call per sub-layer
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.adaLN_modulation = AdaLNModulation(cond_dim, dim, 6) if cond_dim is not None else None

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Tensor | None, c: Tensor | None,
        cache: AttentionCache | None = None, layer_idx: int = 0, store_cache: bool = False,
    ) -> Tensor:
        kv = dict(cache=cache, layer_idx=layer_idx, store_cache=store_cache)
        if self.adaLN_modulation is None or c is None:
            x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, **kv))
            return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c)
        h = modulate(self.input_layernorm(x), shift_a, scale_a)
        x = x + (1 + gate_a) * self.dropout(self.self_attn(h, cos, sin, attn_mask, **kv))
        h = modulate(self.post_attention_layernorm(x), shift_m, scale_m)
        return x + (1 + gate_m) * self.dropout(self.mlp(h))


def default_ffn_dim(dim: int, multiple_of: int = 64) -> int:
    """SwiGLU hidden size 8/3 * dim (same parameters as a 4 * dim GELU MLP), rounded up to ``multiple_of``."""
    return multiple_of * math.ceil(8 * dim / 3 / multiple_of)


class Transformer(nn.Module):
    """Denoiser backbone: tokens (B, L) int or probs (B, L, V) float, t (B,) / (B, L) -> logits (B, L, V).

    ``head_dim`` defaults to dim // n_heads (Qwen3 checkpoints set it explicitly);
    ``ffn_dim`` defaults to ``default_ffn_dim(dim)``; ``n_kv_heads`` to ``n_heads`` (no GQA).
    ``dropout`` is residual dropout on each sub-layer output (as MDLM's DDiT).
    ``shift_logits``: the model was trained to predict token i at output i - 1 (the AR-style reading
    of Dream / Fast-dLLM v2); the forward pass is unchanged, samplers and evaluators read it.
    Precision: no autocast inside; the caller (Lightning, a sampler's ``dtype``) owns it.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        mask_id: int,
        dim: int,
        n_layers: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        ffn_dim: int | None = None,
        max_seq_len: int = 1024,
        attention: Literal["bidirectional", "causal", "block_causal"] = "bidirectional",
        block_size: int | None = None,
        time_conditioned: bool = False,
        cond_dim: int = 128,
        qk_norm: bool = False,
        qkv_bias: bool = False,
        rope_theta: float = 10000.0,
        rope_scaling: RopeScaling | None = None,
        norm_eps: float = 1e-6,
        tie_embeddings: bool = False,
        dropout: float = 0.0,
        attn_backend: AttentionBackend = "auto",
        init_std: float = 0.02,
        shift_logits: bool = False,
    ) -> None:
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        if not 0 <= mask_id < vocab_size:
            raise ConfigError(f"mask_id={mask_id} must be a token id in [0, vocab_size={vocab_size})")
        if head_dim is None and dim % n_heads:
            raise ConfigError(
                f"model.dim={dim} is not divisible by model.n_heads={n_heads}; change one of them"
            )
        if n_heads % n_kv_heads:
            raise ConfigError(f"model.n_heads={n_heads} must be a multiple of model.n_kv_heads={n_kv_heads}")
        if attention not in ("bidirectional", "causal", "block_causal"):
            raise ConfigError(
                f"unknown model.attention={attention!r}; choose 'bidirectional', 'causal' or 'block_causal'"
            )
        if attention == "block_causal" and (block_size is None or block_size < 1):
            raise ConfigError(f"model.attention=block_causal needs model.block_size >= 1 (got {block_size})")
        if attention == "block_causal" and max_seq_len % block_size:
            raise ConfigError(f"model.block_size={block_size} does not divide model.max_seq_len={max_seq_len}; "
                              "pick a block size that divides the context")
        self.vocab_size, self.mask_id, self.max_seq_len = vocab_size, mask_id, max_seq_len
        self.attention, self.time_conditioned = attention, time_conditioned
        # how the outputs are read (token i from output i - 1: Dream / Fast-dLLM v2 block models);
        # a property of the trained weights, so it is saved with the model spec
        self.shift_logits = shift_logits
        self.block_size = block_size if attention == "block_causal" else None
        self.dim, self.n_layers, self.init_std = dim, n_layers, init_std
        self.head_dim = head_dim or dim // n_heads
        self.rope_theta, self.rope_scaling = rope_theta, rope_scaling

        self.embed_tokens = nn.Embedding(vocab_size, dim)
        self.time_embed = TimestepEmbedding(cond_dim) if time_conditioned else None
        self.layers = nn.ModuleList(
            Block(
                self_attn=SelfAttention(
                    dim=dim,
                    n_heads=n_heads,
                    n_kv_heads=n_kv_heads,
                    head_dim=self.head_dim,
                    qkv_bias=qkv_bias,
                    qk_norm=qk_norm,
                    norm_eps=norm_eps,
                    # block-causal structure arrives as an explicit mask (see ``structure_mask``)
                    mode="causal" if attention == "causal" else "bidirectional",
                    backend=attn_backend,
                ),
                dim=dim,
                ffn_dim=ffn_dim or default_ffn_dim(dim),
                norm_eps=norm_eps,
                dropout=dropout,
                cond_dim=cond_dim if time_conditioned else None,
            )  # fmt: skip
            for _ in range(n_layers)
        )
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.final_modulation = AdaLNModulation(cond_dim, dim, 2) if time_conditioned else None
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # Non-persistent: derived from (theta, scaling), never part of a checkpoint.
        self.register_buffer("inv_freq", self._rope_frequencies(), persistent=False)
        self.reset_parameters()

    def _rope_frequencies(self) -> Tensor:
        return rope_frequencies(self.head_dim, theta=self.rope_theta, scaling=self.rope_scaling)

    def _apply(self, fn, recurse: bool = True):  # torch's (untyped) signature
        # Module.to(bf16) / to_empty() would cast or wipe the RoPE frequencies; recompute them in
        # float32 (the same CPU values HF uses) on whatever device the buffer now lives on.
        super()._apply(fn, recurse)
        self.inv_freq = self._rope_frequencies().to(self.inv_freq.device)
        return self

    def reset_parameters(self) -> None:
        """N(0, init_std) for linear and embedding weights, zero biases, unit norms; output projections
        (o_proj, down_proj) use init_std / sqrt(2 * n_layers) (GPT-2: keeps the residual stream's
        variance O(1) in depth); adaLN modulations are zeroed last."""
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=self.init_std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                m.reset_parameters()
        out_std = self.init_std / math.sqrt(2 * self.n_layers)
        for layer in self.layers:
            nn.init.normal_(layer.self_attn.o_proj.weight, mean=0.0, std=out_std)
            nn.init.normal_(layer.mlp.down_proj.weight, mean=0.0, std=out_std)
        for m in self.modules():
            if isinstance(m, AdaLNModulation):
                m.reset_parameters()

    def shard_units(self) -> list[nn.Module]:
        """The sharding units of FSDP2 (``dlm.types.Shardable``): one per transformer block."""
        return list(self.layers)

    def embed(self, tokens_or_probs: Tensor) -> Tensor:
        """ids (B, L) -> E[ids]; probs (B, L, V) -> probs @ E (differentiable in probs). -> (B, L, dim)."""
        if not tokens_or_probs.is_floating_point():
            return self.embed_tokens(tokens_or_probs)
        if tokens_or_probs.shape[-1] != self.vocab_size:
            raise ConfigError(
                f"probability input has last dimension {tokens_or_probs.shape[-1]}, expected "
                f"model.vocab_size={self.vocab_size} (token ids must be an integer tensor)"
            )
        weight = self.embed_tokens.weight
        return tokens_or_probs.to(weight.dtype) @ weight

    def block_causal_mask(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        """(L, S) bool block-causal mask of this model's ``block_size`` (see ``dlm.nn.block_mask``)."""
        return block_causal_mask(q_positions, k_positions, self.block_size or 1)

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
        """Logits (B, L, V), or (B, K, V) at the positions ``logits_at`` (B, K) long.

        tokens_or_probs: (B, L) int ids or (B, L, V) float probabilities. t: (B,) (or (B, L)) diffusion
        time in [0, 1]; required iff ``time_conditioned``, ignored otherwise. positions: RoPE positions
        (L,) or (B, L), default arange(L) (after the cached tokens when ``cache`` is given).
        attn_mask: boolean "may attend" mask broadcastable to (B, H, L, S) (S = cached + L keys):
        ANDed with causal attention; for ``block_causal`` it *replaces* the default block-causal mask
        (the block-diffusion objective passes its own [x_t ; x_0] mask); padding enters here too, as
        ``dlm.nn.attention.padding_mask_to_attn_mask(attention_mask)`` (B, 1, 1, S). logits_at: (B, K)
        positions whose logits are wanted (the rest are not computed). cache: committed keys / values
        (``dlm.types.AttentionCache``, e.g. ``dlm.cache.kv.KVCache``) every query may see;
        ``store_cache`` appends this call's keys / values to it. return_hidden: return the final
        normed hidden states (B, L, dim) instead of logits.
        """
        return self.forward_embeddings(self.embed(tokens_or_probs), t, positions=positions, attn_mask=attn_mask,
                                       logits_at=logits_at, cache=cache, store_cache=store_cache,
                                       return_hidden=return_hidden)

    def forward_embeddings(
        self,
        x: Tensor,
        t: Tensor | None = None,
        *,
        positions: Tensor | None = None,
        attn_mask: Tensor | None = None,
        logits_at: Tensor | None = None,
        cache: AttentionCache | None = None,
        store_cache: bool = False,
        return_hidden: bool = False,
    ) -> Tensor:
        """``forward`` after the embedding: x (B, L, dim) input vectors. A network that builds its own
        input vectors (the EDLM energy fuses E[x_t] and E[x_0]) runs this body unchanged."""
        B, L = x.shape[:2]
        past = cache.length if cache is not None else 0
        # the context limit is on RoPE positions, not on the token count: [x_t ; x_0] training
        # inputs hold 2L tokens at L positions
        needed = past + L if positions is None else int(positions.max()) + 1
        if needed > self.max_seq_len:
            raise ConfigError(
                f"sequence length {needed} exceeds model.max_seq_len={self.max_seq_len}; extend the context "
                f"with NTK RoPE scaling (model.rope_scaling, e.g. NTKAuto(train_len={self.max_seq_len}, "
                f"target_len={needed}), and model.max_seq_len={needed}) or truncate the input (data.seq_len)"
            )
        c = None
        if self.time_embed is not None:
            if t is None:
                raise ConfigError(
                    "this model has model.time_conditioned=true, so forward() needs the diffusion time `t` "
                    "(B,) in [0, 1]; pass t, or build the model with model.time_conditioned=false"
                )
            t = t.to(x.device).expand(B) if t.dim() == 0 else t.to(x.device)
            c = F.silu(self.time_embed(t))

        if positions is None:
            positions = torch.arange(past, past + L, device=x.device)
        cos, sin = rope_tables(positions, self.inv_freq)
        if attn_mask is None and self.attention == "block_causal":
            if positions.dim() != 1:
                raise ConfigError("block_causal attention with per-row positions needs an explicit attn_mask")
            k_positions = positions if cache is None or cache.positions is None else torch.cat(
                [cache.positions.to(positions.device), positions])
            attn_mask = self.block_causal_mask(positions, k_positions)

        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, attn_mask, c, cache=cache, layer_idx=i, store_cache=store_cache)
        if cache is not None and store_cache:
            cache.commit_positions(positions if positions.dim() == 1 else positions[0])
        h = self.norm(x)
        mods = self.final_modulation(c) if self.final_modulation is not None and c is not None else None
        if logits_at is not None:
            # samplers draw few positions per call; the V-wide head is most of a small model's cost
            idx = logits_at[..., None].expand(-1, -1, h.shape[-1])
            h = h.gather(1, idx)
            if mods is not None and mods[0].shape[1] > 1:  # per-token t: keep the rows that were kept
                mods = tuple(m.gather(1, idx) for m in mods)
        if mods is not None:
            h = modulate(h, *mods)
        if return_hidden:
            return h
        return self.lm_head(h)

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Parameter count (tied weights once). ``non_embedding`` drops the token embedding and the
        output head (the vocabulary-sized matrices), as in Kaplan et al.'s scaling-law counts."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed_tokens.weight.numel()
            if self.lm_head.weight is not self.embed_tokens.weight:
                n -= self.lm_head.weight.numel()
        return n
