"""The Transformer denoiser: inputs, time conditioning, masks, presets and HF Llama/Qwen parity."""

from pathlib import Path

import pytest
import torch
import yaml

from dlm.errors import ConfigError
from dlm.models.transformer import Transformer, default_ffn_dim
from dlm.nn.attention import padding_mask_to_attn_mask

V, MASK = 50, 49
CONF = Path(__file__).resolve().parents[2] / "conf" / "model"


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    args = dict(vocab_size=V, mask_id=MASK, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)
    return Transformer(**(args | kw)).eval()


def ids(B=2, L=8, seed=0):
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))


def test_shapes_and_protocol_attributes():
    m = tiny()
    assert m(ids()).shape == (2, 8, V)
    assert (m.vocab_size, m.mask_id, m.time_conditioned, m.attention, m.max_seq_len) == (
        V,
        MASK,
        False,
        "bidirectional",
        16,
    )


def test_ids_and_exact_one_hot_give_identical_logits():
    m, x = tiny(), ids()
    probs = torch.nn.functional.one_hot(x, V).float()
    assert torch.equal(m(x), m(probs))


def test_probs_input_is_differentiable():
    m = tiny()
    probs = torch.softmax(torch.randn(2, 8, V), -1).requires_grad_()
    m(probs).logsumexp(-1).sum().backward()
    assert probs.grad is not None and probs.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="vocab_size"):
        m(torch.rand(2, 8, V + 1))


def test_time_free_model_has_no_time_parameters_and_ignores_t():
    m = tiny()
    assert not any("time" in n or "adaLN" in n or "modulation" in n for n, _ in m.named_parameters())
    x = ids()
    assert torch.equal(m(x), m(x, torch.rand(2)))


def test_time_conditioned_at_init_equals_time_free_then_depends_on_t():
    free, cond = tiny(), tiny(time_conditioned=True, cond_dim=16)
    missing, unexpected = cond.load_state_dict(free.state_dict(), strict=False)
    assert not unexpected and all("time_embed" in k or "modulation" in k for k in missing)
    x, t = ids(), torch.tensor([0.1, 0.9])
    assert torch.allclose(cond(x, t), free(x), atol=1e-6)
    with torch.no_grad():
        for name, p in cond.named_parameters():
            if "modulation" in name:
                p.normal_(0, 0.1)
    assert not torch.allclose(cond(x, t), cond(x, torch.tensor([0.5, 0.5])), atol=1e-4)
    assert cond(x, torch.tensor(0.3)).shape == (2, 8, V)  # scalar t broadcasts
    assert cond(x, torch.rand(2, 8)).shape == (2, 8, V)  # per-token t (block diffusion)
    with pytest.raises(ValueError, match="`t`"):
        cond(x)


def test_qk_norm_on_and_off():
    off, on = tiny(), tiny(qk_norm=True)
    assert not any("q_norm" in n for n, _ in off.named_parameters())
    assert {"layers.0.self_attn.q_norm.weight", "layers.0.self_attn.k_norm.weight"} <= set(on.state_dict())
    x = ids()
    assert torch.isfinite(on(x)).all()
    on.load_state_dict(off.state_dict(), strict=False)
    assert not torch.allclose(on(x), off(x), atol=1e-4)


def test_padding_rows_finite_and_real_tokens_unaffected_by_pads():
    for attention in ("bidirectional", "causal"):
        m = tiny(attention=attention)
        x = ids(L=6)
        pad = torch.ones(2, 6, dtype=torch.long)
        pad[1, :2] = 0  # left padding: under causal attention these queries see no real key
        out = m(x, attn_mask=padding_mask_to_attn_mask(pad))
        assert torch.isfinite(out).all()
        # the second sequence's real tokens, evaluated alone at the same positions
        alone = m(x[1:, 2:], positions=torch.arange(2, 6))
        assert torch.allclose(out[1, 2:], alone[0], atol=1e-5)


def test_causal_model_ignores_the_future_bidirectional_does_not():
    x, y = ids(seed=0), ids(seed=1)
    y[:, :5] = x[:, :5]
    causal, bidir = tiny(attention="causal"), tiny()
    assert torch.allclose(causal(x)[:, :5], causal(y)[:, :5], atol=1e-6)
    assert not torch.allclose(bidir(x)[:, :5], bidir(y)[:, :5], atol=1e-4)


def test_too_long_input_names_the_fix():
    m = tiny(max_seq_len=1024)
    with pytest.raises(ValueError) as err:
        m(torch.zeros(1, 2048, dtype=torch.long))
    msg = str(err.value)
    assert msg.startswith(
        "sequence length 2048 exceeds model.max_seq_len=1024; extend the context with NTK RoPE"
    )
    assert "model.rope_scaling" in msg and "data.seq_len" in msg


def test_bad_configs_raise_config_errors():
    with pytest.raises(ConfigError, match="n_kv_heads"):
        tiny(n_kv_heads=3)
    with pytest.raises(ConfigError, match="mask_id"):
        tiny(mask_id=V)
    with pytest.raises(ConfigError, match="n_heads"):
        tiny(n_heads=5)


def test_init_scheme_and_tied_embeddings():
    m = tiny(n_layers=8, dim=64, init_std=0.02)
    assert m.layers[0].self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert m.layers[0].mlp.down_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.1)
    assert (m.norm.weight == 1).all()
    tied = tiny(tie_embeddings=True)
    assert tied.lm_head.weight is tied.embed_tokens.weight
    assert tied.num_parameters(non_embedding=False) == tied.num_parameters() + V * 32


def test_half_precision_keeps_float32_rope_frequencies():
    m = tiny()
    ref = m.inv_freq.clone()
    m.to(torch.bfloat16)
    assert m.inv_freq.dtype == torch.float32 and torch.equal(m.inv_freq, ref)
    assert m(ids()).dtype == torch.bfloat16
    assert m(torch.nn.functional.one_hot(ids(), V).float()).dtype == torch.bfloat16


def _preset(name: str) -> dict:
    cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    assert cfg.pop("_target_") == "dlm.models.transformer.Transformer"
    assert "vocab_size" not in cfg and "mask_id" not in cfg
    return cfg


@pytest.mark.parametrize("name", ["tiny", "demo", "small", "medium"])
def test_presets_instantiate(name):
    with torch.device("meta"):  # no memory, no init cost: we only check the keys and sizes
        m = Transformer(vocab_size=50258, mask_id=50257, **_preset(name))
    assert m.attention == "bidirectional" and not m.time_conditioned


def test_small_preset_matches_gpt2_small_non_embedding_size():
    with torch.device("meta"):
        m = Transformer(vocab_size=50258, mask_id=50257, **_preset("small"))
    n = m.num_parameters()
    print(f"small preset: {n / 1e6:.1f}M non-embedding parameters (GPT-2 small: 85M)")
    assert 80e6 <= n <= 95e6
    assert default_ffn_dim(768) == 2048 and default_ffn_dim(64) == 192


# HF parity: the parameter names are a prefix strip away from HF Llama / Qwen, and the maths is
# bit-for-bit identical (float32 here; bf16 too once HF's inv_freq is kept in float32).
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, {"qkv_bias": True}),
    "qwen3": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        {"head_dim": 16, "tie_word_embeddings": True},
        {"head_dim": 16, "qk_norm": True, "tie_embeddings": True},
    ),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_hf_causal_lm_exactly(family):
    transformers = pytest.importorskip("transformers")
    cfg_name, model_name, hf_kw, our_kw = FAMILIES[family]
    hf_kw = dict(tie_word_embeddings=False) | hf_kw
    config = getattr(transformers, cfg_name)(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=1e6,
        attn_implementation="sdpa",
        **hf_kw,
    )
    torch.manual_seed(0)
    hf = getattr(transformers, model_name)(config).eval()
    ours = Transformer(
        vocab_size=V,
        mask_id=MASK,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_dim=96,
        attention="causal",
        rope_theta=1e6,
        attn_backend="sdpa",
        **our_kw,
    ).eval()
    ours.load_state_dict({k.removeprefix("model."): v for k, v in hf.state_dict().items()}, strict=True)
    x = ids(L=12)
    with torch.no_grad():
        assert torch.equal(ours(x), hf(x).logits)


def test_logits_at_with_per_token_time_matches_full_logits():
    torch.manual_seed(0)
    m = Transformer(vocab_size=20, mask_id=19, dim=32, n_layers=1, n_heads=4, time_conditioned=True,
                    cond_dim=16).eval()
    torch.nn.init.normal_(m.final_modulation.linear.weight)  # non-zero final modulation
    x, at = torch.randint(0, 19, (2, 8)), torch.tensor([[1, 5], [0, 7]])
    for t in (torch.rand(2, 8), torch.rand(2)):
        full = m(x, t).gather(1, at[..., None].expand(-1, -1, 20))
        torch.testing.assert_close(m(x, t, logits_at=at), full)
