"""No wrong or lost result with exit code 0 (issue 14): non-finite weights and outputs stop the job,
inconsistent or unknown settings are refused before compute, evaluation results are named by their
settings and never overwritten by another setting's, messages name the option of the command in use."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dlm.data.corpus import EVAL_PPL_KEYS, load_documents
from dlm.data.tokenizers.char import CharTokenizer
from dlm.errors import CheckpointError, ConfigError, NonFiniteError, OfflineError
from dlm.eval.model_dir import eval_ppl_model_dir
from dlm.eval.result_files import check_result_path, result_name
from dlm.eval.sample_job import sample_to_jsonl
from dlm.io.model_dir import load_model_dir, save_model_dir
from dlm.io.record import Family
from dlm.io.spec import build
from dlm.samplers.ancestral import AncestralSampler


def export(path, family=Family.MASKED, **spec_kw):
    tok = CharTokenizer()
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": 32, "attention": family.attention, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id,
            **spec_kw}
    torch.manual_seed(0)
    return save_model_dir(path, model=build(spec), model_spec=spec, tokenizer=tok, family=family, seq_len=16,
                          schedule_spec=None if family is Family.AR else
                          {"_target_": "dlm.diffusion.schedule.LogLinearSchedule"})


def set_weight(path, name, value):
    state = load_file(str(path / "model.safetensors"))
    state[name] = torch.full_like(state[name], value) if isinstance(value, float) else value
    save_file(state, str(path / "model.safetensors"))


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("the quick brown fox jumps over the lazy dog\n" * 12)
    return path


def evaluate(model_dir, text, tmp_path, **kw):
    kw = {"dataset": str(text), "source": str(text), "split": "test", "batch_size": 4, "num_samples": 2,
          "device": "cpu", "cache_dir": tmp_path / "cache", **kw}
    return eval_ppl_model_dir(model_dir, **kw)


# ---- item 2: non-finite weights and outputs ----------------------------------------------------------

def test_nan_weights_are_refused_at_load_naming_the_file_and_the_tensor(tmp_path):
    path = export(tmp_path / "m")
    set_weight(path, "layers.0.mlp.up_proj.weight", float("nan"))
    with pytest.raises(CheckpointError, match=r"model.safetensors is corrupt: tensor 'layers.0.mlp.up_proj.weight'"
                                              r" .* NaN"):
        load_model_dir(path)
    set_weight(path, "layers.0.mlp.up_proj.weight", torch.tensor([float("inf")]).expand(64 * 3, 32).clone())
    with pytest.raises(CheckpointError, match="0 NaN and 6144 inf"):
        load_model_dir(path)


@pytest.fixture
def overflowing(tmp_path):
    """Finite weights whose logits overflow float32 (inf - inf = NaN inside the softmax)."""
    path = export(tmp_path / "m")
    huge = torch.full((CharTokenizer().vocab_size, 32), 3e38)
    huge[:, ::2] = -3e38
    set_weight(path, "lm_head.weight", huge)
    return path


def test_non_finite_scores_stop_the_evaluation_and_nothing_is_written(overflowing, text, tmp_path):
    with pytest.raises(NonFiniteError, match=r"not finite \(NLL nan\) on row\(s\) 0, 1, 2, 3"):
        evaluate(overflowing, text, tmp_path)
    assert not (overflowing / "eval").exists()


def test_non_finite_logits_stop_sampling_and_nothing_is_written(overflowing, tmp_path):
    out = tmp_path / "s.jsonl"
    with pytest.raises(NonFiniteError, match="dlm-sample batch 1 of 2 .* logits hold NaN/inf"):
        sample_to_jsonl(overflowing, AncestralSampler(num_steps=4), num_samples=4, batch_size=2, length=8,
                        device="cpu", out=out)
    assert not out.exists() and list(tmp_path.glob(".s.jsonl*")) == []


# ---- item 3 (eval part): counts that would silently fall back to a default -----------------------------

@pytest.mark.parametrize(("key", "value"), [("seq_len", 0), ("seq_len", -8), ("batch_size", 0),
                                            ("num_samples", 0), ("max_tokens", -1), ("method", "simpson")])
def test_eval_refuses_non_positive_counts(tmp_path, text, key, value):
    path = export(tmp_path / "m")
    with pytest.raises(ConfigError, match=f"{key}={value!r}"):
        evaluate(path, text, tmp_path, **{key: value})
    assert not (path / "eval").exists()


# ---- item 4: results named by their settings, never overwritten by another setting's ---------------------

def test_results_of_different_settings_get_different_files(tmp_path, text):
    path = export(tmp_path / "m")
    a = evaluate(path, text, tmp_path, max_tokens=200)
    b = evaluate(path, text, tmp_path, max_tokens=300)
    c = evaluate(path, text, tmp_path, num_samples=3)
    d = evaluate(path, text, tmp_path, seq_len=8)
    e = evaluate(path, text, tmp_path, seed=1)
    outs = {r["out"] for r in (a, b, c, d, e)}
    assert len(outs) == 5 and all(o.startswith(str(path / "eval" / "t-test-")) for o in outs)
    for r in (a, b, c, d, e):
        on_disk = json.loads(open(r["out"]).read())
        assert on_disk["settings"] == r["settings"] and on_disk["nll"] == r["nll"]
    assert a["settings"]["max_tokens"] == 200 and c["settings"]["t_samples"] == 3 and d["settings"]["seq_len"] == 8
    again = evaluate(path, text, tmp_path, max_tokens=200)  # same settings: the same file, replaced
    assert again["out"] == a["out"] and again["nll"] == a["nll"]


def test_two_data_files_with_one_stem_do_not_collide(tmp_path):
    path = export(tmp_path / "m")
    results = []
    for folder, line in (("a", "the quick brown fox\n"), ("b", "jumps over the lazy dog\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "test.txt").write_text(line * 20)
        results.append(evaluate(path, tmp_path / folder / "test.txt", tmp_path))
    assert results[0]["out"] != results[1]["out"] and len(list((path / "eval").iterdir())) == 2


def test_an_explicit_out_holding_another_result_is_refused_before_compute(tmp_path, text):
    path = export(tmp_path / "m")
    out = tmp_path / "r.json"
    first = evaluate(path, text, tmp_path, out=out, max_tokens=200)
    with pytest.raises(ConfigError, match=r"out=.*r.json holds a result of other settings \(max_tokens: 200 -> 300"):
        evaluate(path, text, tmp_path, out=out, max_tokens=300)
    assert json.loads(out.read_text())["nll"] == first["nll"]
    other = tmp_path / "notes.json"
    other.write_text('{"ppl": 3.0}')
    with pytest.raises(ConfigError, match="notes.json holds a result without recorded settings"):
        evaluate(path, text, tmp_path, out=other)
    assert other.read_text() == '{"ppl": 3.0}'


def test_result_names_are_readable_and_check_is_a_no_op_on_a_fresh_path(tmp_path):
    settings = {"seq_len": 16, "data": {"source": "/x/test.txt"}}
    name = result_name("test", "validation", settings)
    assert name.startswith("test-validation-") and name.endswith(".json") and len(name) == len("test-validation-") + 15
    assert name == result_name("test", "validation", dict(reversed(list(settings.items()))))
    check_result_path(tmp_path / "absent.json", settings)
    (tmp_path / "d.json").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        check_result_path(tmp_path / "d.json", settings)


# ---- item 6 (part): the offline message names the option of the command in use -------------------------

def test_offline_message_names_the_option_of_the_command(monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineError) as info:
        load_documents("wikitext2", "test", keys=EVAL_PPL_KEYS)
    msg = str(info.value)
    assert "data=/path/to/file.txt" in msg and "data=/path/to/file.jsonl" in msg and "data.source" not in msg


def test_malformed_jsonl_names_the_line_and_the_option_of_the_command(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2 has no string field 'text'.*data= reads the field"):
        list(load_documents(str(bad), "test", keys=EVAL_PPL_KEYS))
    with pytest.raises(ConfigError, match="set data.text_field"):
        list(load_documents(str(bad), "test"))


def test_convert_refuses_an_existing_non_empty_dst_unless_overwrite(tmp_path):
    pytest.importorskip("transformers")
    from test_convert_hf import hf_dir

    from dlm.io.hf_dir import convert

    src, _ = hf_dir(tmp_path, "llama")
    (tmp_path / "empty").mkdir()
    convert(str(src), str(tmp_path / "empty"))  # an empty directory is not a result to lose
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"dst=.*dst exists and is not empty; pass overwrite=true"):
        convert(str(src), str(dst))
    assert (dst / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="is the source directory"):
        convert(str(src), str(src), overwrite=True)
    convert(str(src), str(dst), overwrite=True)
    assert (dst / "model.json").is_file() and not (dst / "notes.txt").exists()
    with pytest.raises(ConfigError, match="exists and is not empty"):
        convert(str(dst), str(tmp_path / "empty"))  # the other direction too
