"""Hugging Face causal-LM checkpoints (Llama, Qwen2, Qwen3) <-> dlm ``Transformer``s: the translation.

dlm's ``Transformer`` uses the HF module names (``embed_tokens``, ``layers.{i}.self_attn.q_proj``,
``mlp.gate_proj``, ``norm``, ``lm_head``), so a family is a config translation plus a weight-name
map (HF nests the body under ``model.``). In ``attention="causal"`` the converted model computes
the HF model's logits; ``attention="block_causal"`` reuses the same weights as a block-diffusion
model (SDAR: no new parameters, no time input).

Mask token: absorbing diffusion needs one. When the checkpoint's embedding has spare rows beyond
the tokenizer (Qwen3: 151,936 rows for 151,669 tokens) the first spare row, id len(tokenizer),
becomes [MASK] (as SDAR does); otherwise the embedding and head grow by one row, initialised to
the mean row (a neutral start for a token the model has never seen). The mask token string
(``<|mask|>``) is registered on the tokenizer at that id (``hf_tokenizer.py``), so the exported
tokenizer and ``AutoTokenizer`` agree with the model's ``mask_id``.

This module maps configs and weights in memory (``dlm_model_from_hf``, ``hf_model_from_dlm``); reading
and writing the directories on either side (``hf_to_dlm``, ``dlm_to_hf``, ``convert``: what
``dlm-convert`` runs) is storage and lives in ``dlm.io.hf_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from dlm.errors import ConfigError
from dlm.models.transformer import Transformer


@dataclass(frozen=True)
class HFFamily:
    """What distinguishes a family: its HF architecture class and the flags of our backbone."""

    architecture: str
    qkv_bias: bool
    qk_norm: bool
    renames: tuple[tuple[str, str], ...] = ()  # (hf name fragment, dlm name fragment) beyond the prefix


FAMILIES: dict[str, HFFamily] = {
    "llama": HFFamily("LlamaForCausalLM", qkv_bias=False, qk_norm=False),
    "qwen2": HFFamily("Qwen2ForCausalLM", qkv_bias=True, qk_norm=False),
    "qwen3": HFFamily("Qwen3ForCausalLM", qkv_bias=False, qk_norm=True),
}


def _family(model_type: str) -> HFFamily:
    if model_type not in FAMILIES:
        extra = (" GPT-2 uses learned absolute position embeddings, which the RoPE backbone does not have."
                 if model_type == "gpt2" else "")
        raise ConfigError(f"unsupported checkpoint family model_type={model_type!r}; supported: "
                          f"{', '.join(FAMILIES)}.{extra}")
    return FAMILIES[model_type]


def rope_scaling_of(cfg) -> tuple[str | None, dict | None]:
    """(rope type, the scaling dict) of a HF config: ``rope_scaling`` (older configs, ``type`` or
    ``rope_type``) or ``rope_parameters`` (transformers >= 5); (None, None) without either."""
    scaling = getattr(cfg, "rope_scaling", None) or getattr(cfg, "rope_parameters", None)
    if not scaling:
        return None, None
    return scaling.get("rope_type") or scaling.get("type"), dict(scaling)


def _check_semantics(cfg) -> None:
    """Refuse configs whose maths the backbone does not implement (silently wrong logits otherwise).

    ``dynamic`` RoPE scaling gets its own reason: HF's dynamic NTK recomputes the frequencies on every
    call from the current sequence length (base' = base * (f * L / L_orig - (f - 1))^(D / (D - 2)) once
    L > L_orig), so keys cached at one length were rotated with another base than later queries: a KV
    cache (block decoding, dKV-Cache) then mixes rotations (transformers issue #25104; research note
    block_diffusion_kv_rope.md §7.4). dlm's NTK is static (``dlm.nn.rope``): one base for every length.
    """
    kind, scaling = rope_scaling_of(cfg)
    if kind == "dynamic":
        raise ConfigError(f"rope_scaling={scaling}: dynamic NTK is refused: it recomputes the RoPE base from the "
                          "current sequence length on every call, so keys cached at one length (block decoding's KV "
                          "cache, dKV-Cache) were rotated with another base than later queries (transformers #25104); "
                          "remove rope_scaling from config.json and extend the context after conversion with dlm's "
                          "static NTK (rope_scaling=ntk_auto:<target_len>)")
    if kind not in (None, "default"):
        raise ConfigError(f"rope_scaling={scaling} is not supported by the converter; dlm extends context with "
                          "its own NTK scaling (model.rope_scaling) after conversion")
    if getattr(cfg, "use_sliding_window", False):
        raise ConfigError("use_sliding_window=true is not supported: dlm attends over the whole context")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ConfigError(f"{cfg.model_type}: attention_bias / mlp_bias = true (biases the backbone does not have) "
                          "are not supported by the converter")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act={cfg.hidden_act!r}: the backbone's MLP is SwiGLU (silu)")


def model_kwargs_from_hf(cfg) -> dict:
    """Transformer keyword arguments from a HF config (vocab_size / mask_id set by the caller)."""
    fam = _family(cfg.model_type)
    _check_semantics(cfg)
    return {
        "_target_": "dlm.models.transformer.Transformer",
        "dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
        "n_kv_heads": getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        "ffn_dim": cfg.intermediate_size, "max_seq_len": cfg.max_position_embeddings,
        "rope_theta": float(getattr(cfg, "rope_theta", None) or (cfg.rope_parameters or {}).get("rope_theta", 1e4)),
        "norm_eps": cfg.rms_norm_eps, "tie_embeddings": bool(cfg.tie_word_embeddings),
        "qkv_bias": fam.qkv_bias, "qk_norm": fam.qk_norm, "time_conditioned": False,
    }


def state_hf_to_dlm(state: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    """HF names -> dlm names: drop the ``model.`` prefix, apply the family's renames."""
    fam = _family(model_type)
    out = {}
    for name, w in _progress(state, "HF -> dlm weights"):
        if "rotary_emb" in name:  # derived buffers, recomputed by the backbone
            continue
        new = name.removeprefix("model.")
        for hf_part, dlm_part in fam.renames:
            new = new.replace(hf_part, dlm_part)
        out[new] = w
    return out


def state_dlm_to_hf(state: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    """The inverse of ``state_hf_to_dlm``."""
    fam = _family(model_type)
    out = {}
    for name, w in _progress(state, "dlm -> HF weights"):
        new = name
        for hf_part, dlm_part in fam.renames:
            new = new.replace(dlm_part, hf_part)
        out[new if new.startswith("lm_head") else f"model.{new}"] = w
    return out


def _progress(state: dict, desc: str):
    """Iterate a state dict with a progress bar (shown on a terminal only)."""
    return tqdm(state.items(), desc=desc, total=len(state), unit="tensor", leave=False, disable=None)


def _grow(w: torch.Tensor) -> torch.Tensor:
    return torch.cat([w, w.mean(0, keepdim=True)], dim=0)


def check_target(attention: str, block_size: int | None, max_seq_len: int) -> None:
    """Refuse a conversion target the backbone cannot be: the attention, and a block size that divides the context."""
    if attention not in ("causal", "block_causal", "bidirectional"):
        raise ConfigError(f"attention={attention!r}; choose causal, block_causal or bidirectional")
    if attention == "block_causal":
        if not block_size or block_size < 1:
            raise ConfigError("attention=block_causal needs block_size=<tokens per block> (SDAR uses 4)")
        if max_seq_len % block_size:
            raise ConfigError(f"block_size={block_size} does not divide the context max_position_embeddings="
                              f"{max_seq_len}; pick a divisor such as 4")


def dlm_model_from_hf(hf_state: dict[str, torch.Tensor], cfg, *, attention: str, block_size: int | None,
                      mask_id: int, resized: bool) -> tuple[Transformer, dict]:
    """(the dlm Transformer holding the HF weights, its JSON spec) for an HF state dict and config.

    ``resized``: no spare embedding row for [MASK], so the embedding (and an untied head) grow by one
    mean row (a neutral start for a token the model has never seen).
    """
    kwargs = model_kwargs_from_hf(cfg)
    check_target(attention, block_size, kwargs["max_seq_len"])
    state = state_hf_to_dlm(hf_state, cfg.model_type)
    if resized:
        state["embed_tokens.weight"] = _grow(state["embed_tokens.weight"])
        if not kwargs["tie_embeddings"]:
            state["lm_head.weight"] = _grow(state["lm_head.weight"])
    if kwargs["tie_embeddings"]:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    kwargs.update(vocab_size=cfg.vocab_size + int(resized), mask_id=mask_id, attention=attention,
                  block_size=block_size if attention == "block_causal" else None)
    model = Transformer(**{k: v for k, v in kwargs.items() if k != "_target_"})
    model.load_state_dict(state)
    return model, kwargs


def hf_config_from_model(model, model_type: str, tokenizer):
    """A HF config for a dlm Transformer (the inverse of ``model_kwargs_from_hf``)."""
    from transformers import AutoConfig

    fam = _family(model_type)
    if model.time_conditioned or model.rope_scaling is not None:
        raise ConfigError("a time-conditioned or RoPE-scaled dlm model has no Hugging Face causal-LM equivalent")
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    if (attn.q_norm is not None) != fam.qk_norm or (attn.q_proj.bias is not None) != fam.qkv_bias:
        raise ConfigError(f"model_type={model_type} does not match this model (qk_norm="
                          f"{attn.q_norm is not None}, qkv_bias={attn.q_proj.bias is not None}); leave model_type unset")
    cfg = AutoConfig.for_model(
        model_type, vocab_size=model.vocab_size, hidden_size=model.dim, num_hidden_layers=model.n_layers,
        num_attention_heads=attn.n_heads, num_key_value_heads=attn.n_kv_heads, head_dim=model.head_dim,
        intermediate_size=mlp.gate_proj.out_features, max_position_embeddings=model.max_seq_len,
        rope_theta=model.rope_theta, rms_norm_eps=model.norm.eps,
        tie_word_embeddings=model.lm_head.weight is model.embed_tokens.weight,
        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
        architectures=[fam.architecture], torch_dtype="float32")
    cfg.mask_token_id = model.mask_id
    return cfg


def hf_model_from_dlm(model: Transformer, tokenizer, *, model_type: str | None = None):
    """(the HF causal LM holding ``model``'s weights, its model_type). ``model_type`` defaults from the
    weights: q/k-norm -> qwen3, q/k/v bias -> qwen2, else llama."""
    from transformers import AutoModelForCausalLM

    attn = model.layers[0].self_attn
    model_type = model_type or ("qwen3" if attn.q_norm is not None else "qwen2" if attn.q_proj.bias is not None
                                else "llama")
    cfg = hf_config_from_model(model, model_type, tokenizer)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    state = state_dlm_to_hf(model.state_dict(), model_type)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [m for m in missing if "rotary_emb" not in m and not (m == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise ConfigError(f"weights do not map onto {model_type}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return hf, model_type
