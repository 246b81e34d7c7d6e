"""Generative perplexity (HF and dlm judges, MDLM EOS weighting, context windows) and diversity."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from dlm.data.tokenizers.char import CharTokenizer
from dlm.errors import CheckpointError, ConfigError
from dlm.eval.diversity import distinct_n, mean_entropy, unigram_entropy
from dlm.eval.gen_job import eval_gen_file
from dlm.eval.gen_ppl import eos_weights, generative_perplexity, load_judge, scored_sequences
from dlm.io.model_dir import save_model_dir
from dlm.io.record import Family
from dlm.io.spec import build
from dlm.nn.next_token import next_token_nll

EOT = "<|endoftext|>"
SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "the bird sang a song",
             "my cat and your dog are friends", "we sat in the sun"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random GPT-2 with an offline-trained word-level tokenizer, saved like a hub checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    rust = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    rust.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    rust.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[UNK]", EOT]))
    tok = PreTrainedTokenizerFast(tokenizer_object=rust, eos_token=EOT, unk_token="[UNK]")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
    path = tmp_path_factory.mktemp("hf") / "judge"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def export_dlm(path, *, family: Family):
    tok = CharTokenizer()
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": 32, "attention": family.attention, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id}
    torch.manual_seed(0)
    model = build(spec)
    return save_model_dir(path, model=model, model_spec=spec, tokenizer=tok, family=family, seq_len=32), model, tok


def hf_token_nll(judge, ids: list[int]) -> torch.Tensor:
    """Per-target NLL of ids[1:] from the HF model's own forward (float32)."""
    x = torch.tensor([ids])
    return F.cross_entropy(judge.model(input_ids=x).logits[0, :-1].float(), x[0, 1:], reduction="none")


def test_hf_judge_equals_token_weighted_hf_loss(hf_dir):
    judge = load_judge(hf_dir)
    assert judge.bos_id == judge.eos_id == judge.tokenizer.eos_token_id  # GPT-2 style: EOS doubles as BOS
    texts = ["the cat sat on the mat", "a dog ran", "we sat in the sun and the bird sang"]
    nll_sum, n = 0.0, 0
    for text in texts:
        ids = [judge.eos_id, *judge.tokenizer.encode(text)]
        x = torch.tensor([ids])
        loss = judge.model(input_ids=x, labels=x).loss.item()  # HF's mean next-token NLL
        nll_sum += loss * (len(ids) - 1)
        n += len(ids) - 1
    res = generative_perplexity(texts, judge, batch_size=2)
    assert res["tokens"] == n == sum(len(t.split()) for t in texts)  # first real token scored too
    assert res["nll"] == pytest.approx(nll_sum / n, rel=1e-5, abs=1e-6)
    assert res["gen_ppl"] == pytest.approx(math.exp(nll_sum / n), rel=1e-5)


def test_eos_rule_counts_non_eos_targets_and_the_first_eos_only():
    E = 2
    targets = torch.tensor([5, E, 7, 8, E, E, 9])
    assert eos_weights(targets, E).tolist() == [1, 1, 1, 1, 0, 0, 1]
    assert eos_weights(targets, None).tolist() == [1] * 7


def test_eos_rule_inside_generative_perplexity(hf_dir):
    judge = load_judge(hf_dir)
    text = f"the cat {EOT} a dog {EOT} {EOT} ran"
    ids = [judge.eos_id, *judge.tokenizer.encode(text)]
    E = judge.eos_id
    targets = ids[1:]
    assert targets.count(E) == 3
    # the prepended EOS-as-BOS is context, not "the first EOS": the first EOS target still counts
    expected_w = torch.tensor([1.0, 1, 1, 1, 1, 0, 0, 1])
    assert [t == E for t in targets] == [False, False, True, False, False, True, True, False]
    nll = hf_token_nll(judge, ids)
    res = generative_perplexity([text], judge)
    assert res["tokens"] == 6
    assert res["nll"] == pytest.approx((expected_w * nll).sum().item() / 6, rel=1e-5)


def test_long_texts_are_scored_in_windows_covering_each_target_once(hf_dir):
    judge = load_judge(hf_dir)
    judge.max_len = 4
    ids = list(range(3, 13))  # 10 ids -> 11 with the context token -> 10 targets
    rows = scored_sequences([ids], judge)
    assert all(len(r) <= 4 for r, _ in rows)
    targets = [t for r, _ in rows for t in r[1:]]
    assert targets == ids and sum(len(w) for _, w in rows) == 10
    # max_len truncates before windowing
    assert sum(len(w) for _, w in scored_sequences([ids], judge, max_len=5)) == 5


def test_dlm_ar_model_dir_judge_excludes_the_mask_column(tmp_path):
    path, model, tok = export_dlm(tmp_path / "ar", family=Family.AR)
    judge = load_judge(path)
    texts = ["hello world", "print(x)"]
    nll_sum, n = 0.0, 0
    for text in texts:
        x = torch.tensor([[tok.bos_id, *tok.encode(text)]])
        nll = next_token_nll(model(x), x, tok.mask_id)
        nll_sum, n = nll_sum + nll.sum().item(), n + nll.numel()
    res = generative_perplexity(texts, judge, batch_size=8)
    assert res["tokens"] == n
    assert res["gen_ppl"] == pytest.approx(math.exp(nll_sum / n), rel=1e-5)


def test_diffusion_dir_and_unknown_dirs_are_refused(tmp_path):
    path, _, _ = export_dlm(tmp_path / "diff", family=Family.MASKED)
    with pytest.raises(ConfigError, match="kind 'ar'"):
        load_judge(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_judge(tmp_path / "empty")


def test_diversity_hand_values():
    assert unigram_entropy([1, 1, 2, 3]) == pytest.approx(1.5 * math.log(2))
    assert unigram_entropy([7, 7, 7]) == 0.0 and unigram_entropy([]) == 0.0
    assert mean_entropy([[1, 1, 2, 3], [7, 7, 7]]) == pytest.approx(0.75 * math.log(2))
    seqs = [[1, 2, 1, 2], [1, 2, 3]]
    assert distinct_n(seqs, 1) == pytest.approx(3 / 7)
    assert distinct_n(seqs, 2) == pytest.approx(3 / 5)  # (1,2) x3, (2,1), (2,3)
    assert distinct_n(seqs, 3) == 1.0
    assert distinct_n(seqs, 5) == 0.0


def test_eval_gen_file_writes_the_record_next_to_the_samples(hf_dir, tmp_path):
    samples = tmp_path / "s.jsonl"
    texts = ["the cat sat", "the cat sat on the mat", "a dog ran in the park"]
    samples.write_text("".join(json.dumps({"text": t, "tokens": [1, 2]}) + "\n" for t in texts))
    res = eval_gen_file(samples, hf_dir, batch_size=2, device="cpu")
    on_disk = json.loads((tmp_path / "s.gen_eval.json").read_text())
    assert res["out"] == str(tmp_path / "s.gen_eval.json")
    assert on_disk["gen_ppl"] == pytest.approx(res["gen_ppl"]) and on_disk["num_samples"] == 3
    judge = load_judge(hf_dir)
    ids = [judge.encode(t) for t in texts]
    assert res["entropy_tokens"] == "judge" and res["entropy"] == pytest.approx(mean_entropy(ids))
    assert res["distinct_1"] == pytest.approx(distinct_n(ids, 1))
    assert res["gen_ppl"] == pytest.approx(generative_perplexity(texts, judge)["gen_ppl"], rel=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    eval_gen_file(samples, hf_dir, batch_size=4, device="cpu")  # the same settings (batch size changes nothing)
    samples.write_text(json.dumps({"text": "other samples", "tokens": [1]}) + "\n")
    with pytest.raises(ConfigError, match="holds a result of other settings \\(samples_sha1"):
        eval_gen_file(samples, hf_dir, device="cpu")  # new samples in the same file: the old score is kept
    assert json.loads((tmp_path / "s.gen_eval.json").read_text())["num_samples"] == 3


def test_eval_gen_file_refuses_missing_or_empty_samples(hf_dir, tmp_path):
    with pytest.raises(ConfigError, match="nothing.jsonl"):
        eval_gen_file(tmp_path / "nothing.jsonl", hf_dir)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="empty.jsonl is empty"):
        eval_gen_file(tmp_path / "empty.jsonl", hf_dir)
