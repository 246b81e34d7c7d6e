"""dlm-bench block scores every decoder under one rule: EOS never generated, and the AR judge's
softmax taken without the EOS column (issue 14: the AR baseline was generated with EOS banned but
scored with it allowed, reading gen-PPL 717 for text that scores 2.6 without EOS)."""

import json

import pytest
import torch

from dlm.bench.block_speed import NoEOS, _ar_nll, bench_block
from dlm.data.tokenizers.char import CharTokenizer
from dlm.io.hf_dir import dlm_to_hf, hf_to_dlm
from dlm.io.model_dir import save_model_dir
from dlm.io.record import Family
from dlm.io.spec import build
from dlm.types import DENOISER_ATTRIBUTES

transformers = pytest.importorskip("transformers")


def test_no_eos_removes_exactly_the_eos_column_and_keeps_the_contract():
    tok = CharTokenizer()
    spec = dict(_target_="dlm.models.transformer.Transformer", vocab_size=tok.vocab_size, mask_id=tok.mask_id,
                dim=32, n_layers=1, n_heads=4, max_seq_len=32, attention="block_causal", block_size=4)
    torch.manual_seed(0)
    model = build(spec).eval()
    with torch.no_grad():
        model.lm_head.weight[tok.eos_id] *= 100  # EOS would win most argmaxes
    wrapped = NoEOS(model, tok.eos_id)
    x = torch.randint(0, tok.vocab_size - 1, (2, 8))
    raw, out = model(x), wrapped(x)
    assert (raw.argmax(-1) == tok.eos_id).any()  # the control: the bare model does pick EOS
    assert torch.isneginf(out[..., tok.eos_id]).all() and not (out.argmax(-1) == tok.eos_id).any()
    keep = [i for i in range(tok.vocab_size) if i != tok.eos_id]
    assert torch.equal(out[..., keep], raw[..., keep])
    assert all(getattr(wrapped, a) == getattr(model, a) for a in DENOISER_ATTRIBUTES)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_block")
    tok = CharTokenizer()
    spec = dict(_target_="dlm.models.transformer.Transformer", vocab_size=tok.vocab_size, mask_id=tok.mask_id,
                dim=32, n_layers=1, n_heads=4, max_seq_len=64, attention="causal")
    torch.manual_seed(0)
    model = build(spec)
    with torch.no_grad():
        model.lm_head.weight[tok.eos_id] *= 100
    save_model_dir(root / "ar", model=model, model_spec=spec, tokenizer=tok, family=Family.AR)
    dlm_to_hf(root / "ar", root / "ar_hf")
    hf_to_dlm(root / "ar_hf", root / "block", attention="block_causal", block_size=4)
    return root


def test_every_decoder_is_generated_and_scored_without_eos(models, tmp_path):
    samplers = {"block_cached_static": {"_target_": "dlm.samplers.block.BlockSampler", "temperature": 0.0,
                                        "use_cache": True}}
    out = tmp_path / "block.json"
    bench_block(ar_hf=str(models / "ar_hf"), block_model=str(models / "block"), samplers=samplers,
                prompts=["hello world, this is"], prompt_tokens=4, gen_tokens=[8], rounds=1, out=str(out))
    report = json.loads(out.read_text())
    assert report["eos_rule"].startswith("banned") and {r["decoder"] for r in report["rows"]} == {
        "ar_hf_generate", "block_cached_static"}
    assert all(torch.isfinite(torch.tensor(r["gen_ppl_under_ar"])) for r in report["rows"])


def test_the_judge_nll_leaves_out_the_eos_column(models):
    hf = transformers.AutoModelForCausalLM.from_pretrained(models / "ar_hf").eval()
    eos = CharTokenizer().eos_id
    prompt, generated = torch.tensor([[1, 5, 6]]), torch.tensor([[7, 8, 9]])
    got, n = _ar_nll(hf, prompt, generated, eos)
    with torch.no_grad():
        logits = hf(torch.cat([prompt, generated], 1)).logits[:, 2:-1].float()
    full = torch.nn.functional.cross_entropy(logits[0], generated[0], reduction="sum")
    logits[..., eos] = float("-inf")
    want = torch.nn.functional.cross_entropy(logits[0], generated[0], reduction="sum")
    assert n == 3 and got == pytest.approx(float(want), rel=1e-6)
    assert float(full) > got  # with the EOS mass kept every token scores worse: the old bug
