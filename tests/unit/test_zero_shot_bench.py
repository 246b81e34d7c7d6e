"""``dlm-bench zero_shot`` (issue 15's benchmark): tiny models, a tiny WikiText-format file, no network.

Fails when: the WikiText article split or the LAMBADA-format stand-in is wrong (targets must be words, every
passage ``lambada_words`` long); the documents lm-eval scores are not the ones the adapter scores directly;
the converted HF model's per-document log-likelihoods differ from lm-eval's HF backend on the original.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")

from model_dirs import export_char_model  # noqa: E402

from dlm.bench.zero_shot import bench_zero_shot, lambada_standin, wikitext_articles  # noqa: E402
from dlm.io.record import Family  # noqa: E402

WIKI = "\n".join([  # the wiki.*.tokens layout: ' = Title = ' headings, ' @-@ ', spaced punctuation
    ' ',
    ' = Alpha Article = ',
    ' ',
    ' The alpha river flows @-@ north through the old town , past the mill and the church . Many people live near it today . ',
    ' ',
    ' = = History = = ',
    ' ',
    ' In 1900 the town built a bridge over the river , and the bridge still stands in the centre of town today ',
    ' ',
    ' = Beta Article = ',
    ' ',
    ' Beta is a small village with a school , a shop and a quiet harbour where the boats come in every morning ',
    '',
])


def export(path, family: Family):
    return export_char_model(path, family, width=32)


def hf_model(root: Path) -> Path:
    """A random Llama with a word-level tokenizer (the adapter and lm-eval's HF backend both load it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set(WIKI.replace("\n", " ").split())) + ["<s>", "</s>", "<unk>"]
    rust = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=rust, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    cfg = transformers.LlamaConfig(vocab_size=len(words) + 3, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                   bos_token_id=words.index("<s>"), eos_token_id=words.index("</s>"),
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(root)
    tok.save_pretrained(root)
    return root


def test_articles_and_lambada_standin(tmp_path):
    path = tmp_path / "wiki.test.tokens"
    path.write_text(WIKI)
    arts = wikitext_articles(path)
    assert len(arts) == 2 and arts[0].startswith("= Alpha Article =") and "History" in arts[0] and "Beta" not in arts[0]
    assert "flows-north" in arts[0] and " ," not in arts[0]  # detokenized
    items = lambada_standin(path, words=10, limit=5)
    assert len(items) == 3 and all(len(t.split(" ")) == 10 and t.split(" ")[-1].isalpha() for t in items)
    assert items[1].endswith("of town today") and items[2].endswith("every morning")
    assert lambada_standin(path, words=10, limit=1) == items[:1]


def test_bench_scores_through_lm_eval_agree_with_direct_scores_and_the_hf_backend(tmp_path):
    wiki = tmp_path / "wiki.test.tokens"
    wiki.write_text(WIKI)
    models = {"radd": str(export(tmp_path / "radd", Family.MASKED)), "ar": str(export(tmp_path / "ar", Family.AR))}
    out = tmp_path / "zero_shot.json"
    bench_zero_shot(models=models, hf_model=str(hf_model(tmp_path / "hf")), wikitext=str(wiki), num_docs=2,
                    lambada_words=10, num_lambada=3, mc_samples=2, batch_size=4, threads=1,
                    work_dir=str(tmp_path / "work"), out=str(out))
    rec = json.loads(out.read_text())
    rows = {r["model"]: r for r in rec["rows"]}
    assert set(rows) == {"radd", "ar", "hf_converted"}
    for r in rows.values():
        assert r["lm_eval_equals_direct"], r["model"]
        assert r["tokens_adapter"] > 0 and r["nll_adapter"] > 0 and r["nll_eval_ppl"] > 0
        assert 0 <= r["lambada_acc"] <= 1 and r["lambada_items"] == 3
    assert rows["ar"]["nll_adapter_stderr"] == 0 and rows["radd"]["nll_adapter_stderr"] > 0
    hf = rows["hf_converted"]
    assert hf["max_rel_delta_per_doc"] < 1e-6 and hf["hf_parity_met"]
    assert hf["bits_per_byte"] == pytest.approx(hf["hf_backend_bits_per_byte"], rel=1e-6)
    assert rec["data"]["articles"] == 2 and rec["provenance"]["seed"] == 0
    # another HF model in the same work_dir is converted anew, never scored from the first one's conversion
    other = hf_model(tmp_path / "hf2")
    torch.manual_seed(1)
    state = transformers.LlamaForCausalLM.from_pretrained(other)
    for p in state.parameters():
        p.data.add_(0.5 * torch.randn_like(p))
    state.save_pretrained(other)
    bench_zero_shot(models={}, hf_model=str(other), wikitext=str(wiki), num_docs=2, lambada_words=10, num_lambada=3,
                    mc_samples=2, batch_size=4, threads=1, work_dir=str(tmp_path / "work"), out=str(out))
    [again] = json.loads(out.read_text())["rows"]
    assert again["hf_parity_met"] and again["nll_adapter"] != hf["nll_adapter"]
