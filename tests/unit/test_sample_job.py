"""dlm-sample's job: JSONL layout, reproducibility, length checks, atomic output."""

import json

import pytest
import torch

from dlm.data.tokenizers.char import CharTokenizer
from dlm.errors import ConfigError
from dlm.eval.sample_job import decode_sample, prompt_ids, sample_to_jsonl
from dlm.io.model_dir import save_model_dir
from dlm.io.record import Family
from dlm.io.spec import build
from dlm.samplers.ancestral import AncestralSampler
from dlm.samplers.autoregressive import AutoregressiveSampler

KEYS = {"text", "tokens", "nfe", "seconds"}


def export(path, family=Family.MASKED):
    tok = CharTokenizer()
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": 16, "attention": family.attention, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id}
    torch.manual_seed(0)
    return save_model_dir(path, model=build(spec), model_spec=spec, tokenizer=tok, family=family, seq_len=16)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export(tmp_path_factory.mktemp("m") / "model")


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_has_one_record_per_sample_with_the_documented_keys(model_dir, tmp_path):
    out = tmp_path / "s.jsonl"
    summary = sample_to_jsonl(model_dir, AncestralSampler(num_steps=8), num_samples=5, length=12, batch_size=2,
                              device="cpu", out=out)
    recs = read(out)
    assert len(recs) == 5 and all(set(r) == KEYS for r in recs)
    tok = CharTokenizer()
    for r in recs:
        assert len(r["tokens"]) == 12 and r["tokens"][0] == tok.bos_id
        assert tok.mask_id not in r["tokens"]
        assert r["text"] == decode_sample(r["tokens"], tok, 1)
        assert isinstance(r["nfe"], int) and 1 <= r["nfe"] <= 8
    assert summary["samples"] == 5 and summary["out"] == str(out) and summary["sampler"] == "AncestralSampler"
    assert summary["nfe"] == pytest.approx(sum(r["nfe"] for r in recs) / 5)
    assert summary["seconds_per_sample"] == pytest.approx(summary["seconds"] / 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl", "s.summary.json"]  # no temp file left
    assert json.loads((tmp_path / "s.summary.json").read_text())["settings"] == summary["settings"]


def test_an_existing_samples_file_is_replaced_only_by_a_rerun_of_its_settings(model_dir, tmp_path):
    out = tmp_path / "s.jsonl"

    def job(num_steps, **kw):
        return sample_to_jsonl(model_dir, AncestralSampler(num_steps=num_steps), num_samples=2, length=12,
                               device="cpu", out=out, **kw)

    job(8)
    before = out.read_text()
    job(8)  # the same settings: a rerun, same samples (timings differ)
    assert [r["tokens"] for r in read(out)] == [json.loads(x)["tokens"] for x in before.splitlines()]
    before = out.read_text()
    with pytest.raises(ConfigError, match=r"other settings \(sampler.num_steps: 8 -> 4; sampler.timesteps"):
        job(4)
    assert out.read_text() == before  # refused before any compute, nothing touched
    (tmp_path / "s.summary.json").unlink()
    with pytest.raises(ConfigError, match="has no readable s.summary.json"):
        job(8)  # a file of unknown origin is never overwritten silently
    job(4, overwrite=True)
    assert out.read_text() != before


def test_without_out_the_file_is_named_by_its_settings(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = sample_to_jsonl(model_dir, AncestralSampler(num_steps=8), num_samples=2, length=12, device="cpu")
    b = sample_to_jsonl(model_dir, AncestralSampler(num_steps=4), num_samples=2, length=12, device="cpu")
    assert a["out"] != b["out"] and a["out"].startswith("samples-") and a["out"].endswith(".jsonl")
    assert len(read(tmp_path / a["out"])) == len(read(tmp_path / b["out"])) == 2


def test_same_seed_same_samples_other_seed_other_samples(model_dir, tmp_path):
    def tokens(seed, name):
        sample_to_jsonl(model_dir, AncestralSampler(num_steps=8), num_samples=4, length=12, batch_size=3,
                        seed=seed, device="cpu", out=tmp_path / name)
        return [(r["tokens"], r["text"], r["nfe"]) for r in read(tmp_path / name)]

    assert tokens(0, "a.jsonl") == tokens(0, "b.jsonl")
    assert tokens(0, "a.jsonl") != tokens(1, "c.jsonl")


def test_prompt_follows_bos_and_ar_models_start_from_bos(tmp_path):
    ar = export(tmp_path / "ar", family=Family.AR)
    tok = CharTokenizer()
    sample_to_jsonl(ar, AutoregressiveSampler(), num_samples=2, length=10, prompt="ab", device="cpu",
                    out=tmp_path / "p.jsonl")
    for r in read(tmp_path / "p.jsonl"):
        assert r["tokens"][:3] == [tok.bos_id, *tok.encode("ab")] and r["text"].startswith("ab")
        assert r["nfe"] == 7


def test_decode_cuts_at_the_first_eos_after_the_prompt():
    tok = CharTokenizer()
    row = [tok.bos_id, *tok.encode("hi"), tok.eos_id, *tok.encode("junk")]
    assert decode_sample(row, tok, 1) == "hi"


def test_bad_lengths_are_refused_before_sampling(model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"length=17 .*model.max_seq_len=16"):
        sample_to_jsonl(model_dir, AncestralSampler(num_steps=8), num_samples=1, length=17, device="cpu",
                        out=tmp_path / "x.jsonl")
    with pytest.raises(ConfigError, match="length=4"):
        sample_to_jsonl(model_dir, AncestralSampler(num_steps=8), num_samples=1, length=4, prompt="abcd",
                        device="cpu", out=tmp_path / "x.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_a_failing_sampler_leaves_nothing_behind(model_dir, tmp_path):
    class Broken:
        extends_context = False

        def check_model(self, model):
            pass

        def __call__(self, model, **kwargs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sample_to_jsonl(model_dir, Broken(), num_samples=2, length=8, device="cpu", out=tmp_path / "x.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_shift_logits_models_are_refused_by_the_samplers(tmp_path):
    tok = CharTokenizer()
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": 16, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id, "shift_logits": True}
    path = save_model_dir(tmp_path / "m", model=build(spec), model_spec=spec, tokenizer=tok, family=Family.MASKED)
    with pytest.raises(ConfigError, match="shift_logits"):
        sample_to_jsonl(path, AncestralSampler(num_steps=4), num_samples=1, length=8, device="cpu",
                        out=tmp_path / "s.jsonl")
    assert not (tmp_path / "s.jsonl").exists()


def test_an_empty_prompt_is_refused_only_where_the_family_needs_one():
    tok = CharTokenizer()
    tok.bos_id = None
    assert prompt_ids(tok, None, family=Family.MASKED) == []
    assert prompt_ids(tok, "ab", family=Family.AR) == tok.encode("ab")
    with pytest.raises(ConfigError, match="needs a prompt"):
        prompt_ids(tok, None, family=Family.AR)


def test_a_sampler_that_cannot_decode_the_model_is_refused_before_sampling(tmp_path):
    ar = export(tmp_path / "ar", family=Family.AR)
    with pytest.raises(ConfigError, match="attention='causal'"):
        sample_to_jsonl(ar, AncestralSampler(num_steps=4), num_samples=1, length=8, device="cpu",
                        out=tmp_path / "s.jsonl")
    assert not (tmp_path / "s.jsonl").exists()


def test_strided_sampling_goes_past_the_context_other_samplers_do_not(model_dir, tmp_path):
    from dlm.samplers.strided import StridedSampler

    out = tmp_path / "long.jsonl"
    sample_to_jsonl(model_dir, StridedSampler(sampler=AncestralSampler(num_steps=4), stride=8), num_samples=2,
                    length=40, device="cpu", out=out)  # the model's context is 16
    assert [len(r["tokens"]) for r in read(out)] == [40, 40]
    with pytest.raises(ConfigError, match="length=40 exceeds the model's context"):
        sample_to_jsonl(model_dir, AncestralSampler(num_steps=4), num_samples=1, length=40, device="cpu",
                        out=tmp_path / "refused.jsonl")
    assert not (tmp_path / "refused.jsonl").exists()


def test_ntk_rope_override_samples_past_the_training_context(model_dir, tmp_path):
    out = tmp_path / "ntk.jsonl"
    summary = sample_to_jsonl(model_dir, AncestralSampler(num_steps=4), num_samples=2, length=32, device="cpu",
                              out=out, rope_scaling="ntk_auto:32")  # trained context: 16
    assert [len(r["tokens"]) for r in read(out)] == [32, 32]
    assert summary["overrides"]["max_seq_len"] == 32 and "rope_scaling" in summary["overrides"]


def test_a_letter_model_trained_without_bos_samples_without_bos(tmp_path):
    """DNA / protein rows are the letters alone unless the model kept a first (BOS) token: dlm-sample starts
    from what training started from (before, every sample began with a BOS the model never saw)."""
    from dlm.data.tokenizers.bio import DNATokenizer
    from dlm.eval.sample_job import rows_start_with_bos

    tok = DNATokenizer()
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": 16, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id}
    torch.manual_seed(0)
    for keep, first in ((False, None), (True, tok.bos_id)):
        path = save_model_dir(tmp_path / f"dna_{keep}", model=build(spec), model_spec=spec, tokenizer=tok,
                              family=Family.MASKED, seq_len=16, keep_first_token=keep)
        sample_to_jsonl(path, AncestralSampler(num_steps=4), num_samples=8, length=12, device="cpu",
                        out=tmp_path / f"s_{keep}.jsonl")
        rows = [r["tokens"] for r in read(tmp_path / f"s_{keep}.jsonl")]
        if first is None:  # position 0 is sampled like every other (before: a given BOS in every row)
            assert not all(r[0] == tok.bos_id for r in rows)
        else:
            assert all(r[0] == first for r in rows)
    assert rows_start_with_bos(CharTokenizer(), keep_first_token=False)  # text rows always start with BOS


def test_a_recording_sampler_writes_each_samples_nll_under_its_own_draws(model_dir, tmp_path):
    """One step from the all-mask canvas draws every token from softmax(logits / T) of one network call, so
    each record's sampler_nll is exactly -sum log softmax(logits / T) at its tokens; the samples themselves
    are those of the same sampler without recording."""
    from dlm.io.model_dir import load_model_dir

    temperature = 0.7
    plain = sample_to_jsonl(model_dir, AncestralSampler(num_steps=1, temperature=temperature), num_samples=5,
                            length=12, batch_size=2, device="cpu", out=tmp_path / "plain.jsonl")
    rec_summary = sample_to_jsonl(model_dir, AncestralSampler(num_steps=1, temperature=temperature,
                                                              record_trajectory=True),
                                  num_samples=5, length=12, batch_size=2, device="cpu", out=tmp_path / "rec.jsonl")
    plain_recs, recs = read(tmp_path / "plain.jsonl"), read(tmp_path / "rec.jsonl")
    assert [r["tokens"] for r in recs] == [r["tokens"] for r in plain_recs]
    assert "sampler_nll" not in plain_recs[0] and "sampler_nll_per_token" not in plain
    model = load_model_dir(model_dir).model
    tok = CharTokenizer()
    canvas = torch.full((1, 12), tok.mask_id)
    canvas[0, 0] = tok.bos_id
    with torch.no_grad():
        logits = model(canvas, None)[0, 1:].double()
    logits[:, tok.mask_id] = float("-inf")
    for r in recs:
        ids = torch.tensor(r["tokens"][1:])
        tempered = -logits.div(temperature).log_softmax(-1).gather(-1, ids[:, None]).sum()
        untempered = -logits.log_softmax(-1).gather(-1, ids[:, None]).sum()
        assert r["sampler_nll"] == pytest.approx(float(tempered), rel=1e-5)
        assert abs(r["sampler_nll"] - float(untempered)) > 1e-3  # the law it was drawn from, not p_theta's
    total = sum(r["sampler_nll"] for r in recs)
    assert rec_summary["sampler_nll_per_token"] == pytest.approx(total / (5 * 11))
    assert rec_summary["generated_per_sample"] == plain["generated_per_sample"] == 11  # BOS is the prompt
