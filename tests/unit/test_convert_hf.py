"""dlm-convert: HF Llama / Qwen2 / Qwen3 directories <-> dlm model directories, offline, tiny random models.

Parity is the point: a converted model in causal mode computes the HF logits (fp32, atol 1e-4),
the round trip is exact, and the mask token lands on a spare row or a new mean row."""

import json

import pytest
import torch

from dlm.errors import ConfigError
from dlm.io.hf_dir import convert, dlm_to_hf, hf_to_dlm
from dlm.io.model_dir import load_model_dir, save_model_dir
from dlm.io.record import Family
from dlm.nn.attention import padding_mask_to_attn_mask

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

# "<unk>" is its own token: a word as unk would become an added token and split other words
WORDS = ["<s>", "</s>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "<unk>"]
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16, "tie_word_embeddings": True}),
}


def hf_dir(tmp_path, family: str, *, spare_rows: int = 6, max_pos: int = 64):
    """A random-init HF causal LM + a word-level fast tokenizer, saved offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    cfg_name, model_name, extra = FAMILIES[family]
    rust = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=rust, bos_token="<s>", eos_token="</s>",
                                               unk_token="<unk>")
    config = getattr(transformers, cfg_name)(
        vocab_size=len(WORDS) + spare_rows, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_pos, rms_norm_eps=1e-6,
        rope_theta=1e4, bos_token_id=0, eos_token_id=1, **({"tie_word_embeddings": False} | extra))
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).eval()
    path = tmp_path / f"hf_{family}_{spare_rows}"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model


@pytest.mark.parametrize("family", FAMILIES)
def test_converted_model_matches_hf_logits(tmp_path, family):
    src, hf = hf_dir(tmp_path, family)
    out = hf_to_dlm(src, tmp_path / "dlm")
    n_tok = len(transformers.AutoTokenizer.from_pretrained(src))  # some families add special tokens
    assert out["model_type"] == family and out["mask_id"] == n_tok and not out["resized"]
    loaded = load_model_dir(tmp_path / "dlm")
    assert loaded.family is Family.AR and loaded.model.mask_id == loaded.tokenizer.mask_id == n_tok
    x = torch.randint(0, len(WORDS), (2, 12))
    pad = torch.ones_like(x)
    pad[1, :3] = 0  # left padding
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), hf(x).logits, atol=1e-4, rtol=0)
        got, want = loaded.model(x, attn_mask=padding_mask_to_attn_mask(pad)), hf(x, attention_mask=pad).logits
        torch.testing.assert_close(got[:, 3:], want[:, 3:], atol=1e-4, rtol=0)


def test_no_spare_row_appends_a_mean_mask_row(tmp_path):
    src, hf = hf_dir(tmp_path, "llama", spare_rows=0)
    out = hf_to_dlm(src, tmp_path / "dlm")
    assert out["resized"] and out["mask_id"] == len(WORDS) and out["vocab_size"] == len(WORDS) + 1
    model = load_model_dir(tmp_path / "dlm").model
    emb = model.embed_tokens.weight
    torch.testing.assert_close(emb[-1], hf.model.embed_tokens.weight.mean(0))
    x = torch.randint(0, len(WORDS), (1, 8))
    with torch.no_grad():  # the old vocabulary's logits are untouched
        torch.testing.assert_close(model(x)[..., :-1], hf(x).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_to_hf_is_exact(tmp_path, family):
    src, hf = hf_dir(tmp_path, family)
    hf_to_dlm(src, tmp_path / "dlm")
    back = convert(str(tmp_path / "dlm"), str(tmp_path / "hf_back"))  # direction inferred: to_hf
    assert back["direction"] == "to_hf" and back["model_type"] == family
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf_back").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf_back")
    assert tok.convert_tokens_to_ids("cat") == WORDS.index("cat")
    x = torch.randint(0, len(WORDS), (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, hf(x).logits, atol=0, rtol=0)


def test_block_causal_conversion_and_tokenizer(tmp_path):
    src, hf = hf_dir(tmp_path, "qwen3")
    out = hf_to_dlm(src, tmp_path / "blk", attention="block_causal", block_size=4)
    loaded = load_model_dir(tmp_path / "blk")
    assert out["kind"] == loaded.family.kind == "block" and loaded.model.block_size == 4
    assert loaded.tokenizer.mask_id == loaded.model.mask_id
    ids = loaded.tokenizer.encode("the cat sat")
    assert ids == [WORDS.index(w) for w in ("the", "cat", "sat")]
    assert ids == transformers.AutoTokenizer.from_pretrained(src).encode("the cat sat", add_special_tokens=False)
    meta = json.loads((tmp_path / "blk" / "model.json").read_text())
    assert meta["converted_from"]["model_type"] == "qwen3"
    # block size 1 is the causal model exactly; with 4 a query also sees the rest of its block
    hf_to_dlm(src, tmp_path / "blk1", attention="block_causal", block_size=1)
    x = torch.randint(0, len(WORDS), (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(load_model_dir(tmp_path / "blk1").model(x), hf(x).logits, atol=1e-4, rtol=0)
        assert not torch.allclose(loaded.model(x)[:, 0], hf(x).logits[:, 0], atol=1e-3)


def test_dlm_tokenizer_survives_the_hf_round_trip(tmp_path):
    from dlm.data.tokenizers.char import CharTokenizer
    from dlm.models.transformer import Transformer

    tok = CharTokenizer()
    spec = dict(_target_="dlm.models.transformer.Transformer", vocab_size=tok.vocab_size, mask_id=tok.mask_id,
                dim=32, n_layers=1, n_heads=4, max_seq_len=32, attention="causal")
    model = Transformer(**{k: v for k, v in spec.items() if k != "_target_"})
    save_model_dir(tmp_path / "ar", model=model, model_spec=spec, tokenizer=tok, family=Family.AR)
    dlm_to_hf(tmp_path / "ar", tmp_path / "hf")
    assert (tmp_path / "hf" / "dlm_tokenizer").is_dir()
    hf_to_dlm(tmp_path / "hf", tmp_path / "back", attention="block_causal", block_size=4)
    back = load_model_dir(tmp_path / "back")
    assert back.tokenizer.encode("hello") == tok.encode("hello") and back.model.mask_id == tok.mask_id
    x = torch.randint(0, tok.vocab_size - 1, (1, 8))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=0)


def test_bad_input_names_the_fix(tmp_path):
    gpt2 = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20)).save_pretrained(gpt2)
    with pytest.raises(ConfigError, match="llama, qwen2, qwen3.*absolute position"):
        hf_to_dlm(gpt2, tmp_path / "x")
    src, _ = hf_dir(tmp_path, "llama")
    with pytest.raises(ConfigError, match="mask_id=99"):
        hf_to_dlm(src, tmp_path / "x", mask_id=99)
    with pytest.raises(ConfigError, match="block_size=5 does not divide"):
        hf_to_dlm(src, tmp_path / "x", attention="block_causal", block_size=5)
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_mask_token_is_registered_at_the_mask_id_in_both_directions(tmp_path):
    src, _ = hf_dir(tmp_path, "qwen3")
    out = hf_to_dlm(src, tmp_path / "dlm")
    loaded = load_model_dir(tmp_path / "dlm")
    tok, m = loaded.tokenizer, out["mask_id"]
    assert tok.mask_id == loaded.model.mask_id == m and tok.vocab_size <= loaded.model.vocab_size
    ids = tok.encode("the <|mask|> cat")
    assert ids == [WORDS.index("the"), m, WORDS.index("cat")]
    assert tok.decode(ids) == "the cat" and "<|mask|>" in tok.decode(ids, skip_special=False)
    back = dlm_to_hf(tmp_path / "dlm", tmp_path / "hf")
    assert back["hf_tokenizer"]
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert auto.mask_token == "<|mask|>" and auto.mask_token_id == m
    assert transformers.AutoConfig.from_pretrained(tmp_path / "hf").mask_token_id == m
    assert not list(tmp_path.glob(".hf.*"))  # the temporary export directory was renamed away


def test_dlm_tokenizer_with_appended_mask_exports_it(tmp_path):
    """A dlm model trained with an HF tokenizer whose [MASK] was appended (GPT-2 style)."""
    from dlm.data.tokenizers.hf import HFTokenizer
    from dlm.models.transformer import Transformer

    src, _ = hf_dir(tmp_path, "llama")
    tok = HFTokenizer(str(src))
    spec = dict(_target_="dlm.models.transformer.Transformer", vocab_size=tok.vocab_size, mask_id=tok.mask_id,
                dim=32, n_layers=1, n_heads=4, max_seq_len=32, attention="causal")
    save_model_dir(tmp_path / "ar", model=Transformer(**{k: v for k, v in spec.items() if k != "_target_"}),
                   model_spec=spec, tokenizer=tok, family=Family.AR)
    dlm_to_hf(tmp_path / "ar", tmp_path / "hf", model_type="llama")
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert auto.mask_token_id == tok.mask_id and auto.encode("the cat", add_special_tokens=False) == tok.encode("the cat")


def test_explicit_mask_id(tmp_path):
    src, _ = hf_dir(tmp_path, "llama", spare_rows=6)
    n = len(WORDS)
    out = hf_to_dlm(src, tmp_path / "own", mask_id=WORDS.index("ran"))  # an existing token becomes [MASK]
    loaded = load_model_dir(tmp_path / "own")
    assert not out["resized"] and loaded.model.mask_id == loaded.tokenizer.mask_id == WORDS.index("ran")
    for bad, msg in ((n + 2, "no token can name it"), (n + 6, "no token can name it"), (n + 7, "outside the vocabulary"),
                     (-1, "outside the vocabulary")):
        with pytest.raises(ConfigError, match=f"mask_id={bad}.*{msg}"):
            hf_to_dlm(src, tmp_path / "x", mask_id=bad)
    assert not (tmp_path / "x").exists()


def test_choose_mask_id_rules():
    from dlm.convert.hf_tokenizer import choose_mask_id

    assert choose_mask_id(10, 16) == (10, False)  # first spare row
    assert choose_mask_id(10, 10) == (10, True)  # no spare row: grow
    assert choose_mask_id(10, 16, existing=3) == (3, False)  # the tokenizer's own mask token
    assert choose_mask_id(10, 16, mask_id=4, existing=3) == (4, False)
    with pytest.raises(ConfigError, match="12 tokens but the checkpoint only 10"):
        choose_mask_id(12, 10)


def test_export_of_a_block_model_warns_and_direction_errors(tmp_path):
    src, _ = hf_dir(tmp_path, "qwen2")
    hf_to_dlm(src, tmp_path / "blk", attention="block_causal", block_size=4)
    with pytest.warns(UserWarning, match="block_causal"):
        dlm_to_hf(tmp_path / "blk", tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "dlm_conversion.json").read_text())["block_size"] == 4
    with pytest.raises(ConfigError, match="neither model.json"):
        convert(str(tmp_path / "nothing"), str(tmp_path / "y"))
    with pytest.raises(ConfigError, match="apply to direction=to_dlm"):
        convert(str(tmp_path / "blk"), str(tmp_path / "y"), attention="block_causal", block_size=4)
    with pytest.raises(ConfigError, match="rope_scaling"):
        cfg = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1,
                                       intermediate_size=64, max_position_embeddings=64, vocab_size=16,
                                       rope_scaling={"rope_type": "linear", "factor": 2.0})
        from dlm.convert.hf import model_kwargs_from_hf
        model_kwargs_from_hf(cfg)


@pytest.mark.slow
def test_cli_round_trip(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("dlm-convert", path=str(Path(sys.executable).parent))
    assert exe, "dlm-convert is not installed (pip install -e .)"
    src, _ = hf_dir(tmp_path, "llama", spare_rows=0)
    run = [subprocess.run([exe, f"src={a}", f"dst={b}", *more], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300) for a, b, more in ((src, tmp_path / "d", ["attention=block_causal", "block_size=4"]),
                                                          (tmp_path / "d", tmp_path / "h", []))]
    for proc in run:
        assert proc.returncode == 0, proc.stderr
    first, second = (json.loads(p.stdout.strip().splitlines()[-1]) for p in run)
    assert first["direction"] == "to_dlm" and first["resized"] and first["mask_id"] == len(WORDS)
    assert second["direction"] == "to_hf" and second["vocab_size"] == len(WORDS) + 1
    assert {"src", "dst", "model_type", "seconds"} <= set(first)
