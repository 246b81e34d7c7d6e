"""Exact perplexity of a converted HF causal LM equals the HF model's own, for both mask placements.

dlm-eval-ppl scores an AR model with the softmax its distribution is defined by (model.json
``ar_softmax``): a HF model with the mask on one of its own rows (a spare row) normalises over every
row, one whose mask row dlm-convert appended has no such row. Compared with ``transformers``' loss on
the very rows dlm scored (fp32, tiny random Llama and Qwen3 saved with save_pretrained).
"""

import json
import math
import random

import pytest
import torch
from test_convert_hf import WORDS, hf_dir

from dlm.data.blocks import corpus_blocks
from dlm.eval.model_dir import eval_ppl_model_dir
from dlm.eval.perplexity import ExactNLL, evaluate_perplexity
from dlm.io.hf_dir import dlm_to_hf, hf_to_dlm
from dlm.io.migrate import migrate
from dlm.io.model_dir import load_model_dir
from dlm.io.record import ModelRecord

pytest.importorskip("transformers")

PLACEMENTS = {"mask_on_spare_row": (6, "full"), "mask_on_new_row": (0, "without_mask")}


def text_file(path):
    rng = random.Random(0)
    words = WORDS[2:10]
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(30)))
    return path


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_exact_perplexity_of_a_converted_model_is_the_hf_models(tmp_path, family, placement):
    spare_rows, ar_softmax = PLACEMENTS[placement]
    src, hf = hf_dir(tmp_path, family, spare_rows=spare_rows)
    out = hf_to_dlm(src, tmp_path / "dlm")
    assert out["resized"] is (spare_rows == 0)
    loaded = load_model_dir(tmp_path / "dlm")
    assert loaded.record.ar_softmax == ar_softmax
    data = text_file(tmp_path / "t.txt")
    res = eval_ppl_model_dir(tmp_path / "dlm", dataset="t", source=str(data), split="test", seq_len=16,
                             batch_size=4, device="cpu", cache_dir=tmp_path / "cache")
    rows = corpus_blocks(source=str(data), split="test", tokenizer=loaded.tokenizer, seq_len=16,
                         cache_dir=tmp_path / "cache")
    ids = torch.stack([rows[i]["input_ids"] for i in range(len(rows))])
    with torch.no_grad():
        hf_nll = hf(input_ids=ids, labels=ids).loss.item()  # mean over every target 1..L-1
    assert res["method"] == "exact" and res["ar_softmax"] == ar_softmax
    assert res["tokens"] == ids.shape[0] * (ids.shape[1] - 1)
    assert res["nll"] == pytest.approx(hf_nll, rel=1e-5, abs=1e-6)
    assert res["ppl"] == pytest.approx(math.exp(hf_nll), rel=1e-5)
    if ar_softmax == "full":  # the other normalisation is measurably off: the test can tell them apart
        other = evaluate_perplexity(loaded.model, [{"input_ids": ids}], ExactNLL(ar_softmax="without_mask"))
        assert abs(other["nll"] - hf_nll) > 1e-3


def test_a_dlm_trained_ar_model_keeps_its_normalisation_through_the_hf_round_trip(tmp_path):
    from dlm.data.tokenizers.char import CharTokenizer
    from dlm.io.model_dir import save_model_dir
    from dlm.io.record import Family
    from dlm.io.spec import build

    tok = CharTokenizer()
    spec = dict(_target_="dlm.models.transformer.Transformer", vocab_size=tok.vocab_size, mask_id=tok.mask_id,
                dim=32, n_layers=1, n_heads=4, max_seq_len=32, attention="causal")
    save_model_dir(tmp_path / "ar", model=build(spec), model_spec=spec, tokenizer=tok, family=Family.AR)
    assert json.loads((tmp_path / "ar" / "model.json").read_text())["ar_softmax"] == "without_mask"
    dlm_to_hf(tmp_path / "ar", tmp_path / "hf")
    hf_to_dlm(tmp_path / "hf", tmp_path / "back")
    assert load_model_dir(tmp_path / "back").record.ar_softmax == "without_mask"


@pytest.mark.parametrize(("meta", "expected"), [
    ({"kind": "ar", "model": {"vocab_size": 10, "mask_id": 9}}, "without_mask"),  # dlm-trained
    ({"kind": "ar", "model": {"vocab_size": 10, "mask_id": 7}, "converted_from": {}}, "full"),  # spare row
    ({"kind": "ar", "model": {"vocab_size": 10, "mask_id": 9}, "converted_from": {}}, "without_mask"),  # appended
    ({"kind": "diffusion", "model": {"vocab_size": 10, "mask_id": 9}}, None),
])
def test_older_directories_get_the_normalisation_they_were_made_with(meta, expected):
    migrated, notes = migrate({"format": 2, **meta})
    assert migrated.get("ar_softmax") == expected and migrated["format"] == 3
    assert ModelRecord.from_meta(migrated).ar_softmax == expected
    assert bool(notes) is (expected is not None)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_a_converted_judge_scores_samples_as_the_hf_judge_does(tmp_path, placement):
    from dlm.eval.gen_ppl import generative_perplexity, load_judge

    src, _ = hf_dir(tmp_path, "qwen3", spare_rows=PLACEMENTS[placement][0])
    hf_to_dlm(src, tmp_path / "dlm")
    texts = ["the cat sat on the mat", "a dog ran", "the mat sat on a cat the dog ran"]
    ours = generative_perplexity(texts, load_judge(tmp_path / "dlm"), batch_size=2)
    theirs = generative_perplexity(texts, load_judge(src), batch_size=2)
    assert ours["tokens"] == theirs["tokens"]
    assert ours["nll"] == pytest.approx(theirs["nll"], rel=1e-5)
