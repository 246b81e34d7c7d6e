"""Long context: dlm-eval-ppl lengths= (one model, several row lengths, same documents), the context
refusal and its fix, the rope override recorded, UltraLLaDA's diffusion-aware NTK, and dlm-convert's
refusal of HF dynamic RoPE scaling (its frequencies change with the length: a KV cache hazard)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from cli_helpers import BIN

from dlm.data.tokenizers.char import CharTokenizer
from dlm.errors import ConfigError
from dlm.eval.lengths import eval_ppl_lengths
from dlm.eval.model_dir import eval_ppl_model_dir, plan_length, prepare_ppl_job
from dlm.io.model_dir import load_model_dir, save_model_dir
from dlm.io.record import Family
from dlm.io.spec import build
from dlm.nn.rope import NTKAuto, NTKAutoDiffusion, critical_dim

TOK = CharTokenizer()
SCHEDULE = {"_target_": "dlm.diffusion.schedule.LogLinearSchedule"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": 32, "attention": "bidirectional", "vocab_size": TOK.vocab_size, "mask_id": TOK.mask_id}
    torch.manual_seed(0)
    return save_model_dir(tmp_path_factory.mktemp("m") / "model", model=build(spec), model_spec=spec, tokenizer=TOK,
                          family=Family.MASKED, seq_len=32, schedule_spec=SCHEDULE)


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "docs.txt"
    docs = [f"document {i}: " + "the quick brown fox jumps over the lazy dog " * (2 + i % 3) for i in range(6)]
    path.write_text("\n\n\n".join(docs))
    return path


def job_kwargs(text: Path, tmp: Path, **kw) -> dict:
    return {"dataset": str(text), "source": str(text), "split": "test", "num_samples": 3, "batch_size": 4,
            "device": "cpu", "cache_dir": tmp / "cache", **kw}


def test_lengths_equal_separate_runs_at_each_length(model_dir, text, tmp_path):
    kw = job_kwargs(text, tmp_path, max_tokens=300)
    alone = {n: eval_ppl_model_dir(model_dir, seq_len=n, out=tmp_path / f"alone{n}.json", **kw) for n in (16, 32)}
    lines: list[dict] = []
    summary = eval_ppl_lengths(model_dir, lengths=[16, 32], out=tmp_path / "both.json", report=lines.append, **kw)
    assert [r["seq_len"] for r in lines] == [16, 32]
    for line, row in zip(lines, summary["results"], strict=True):
        one = alone[line["seq_len"]]
        # the Monte Carlo estimate of a length in this run is the separate run's, to the last digit
        assert (line["nll"], line["nll_stderr"], line["tokens"], line["sequences"]) == \
               (one["nll"], one["nll_stderr"], one["tokens"], one["sequences"])
        assert line["settings"] == one["settings"] and row["nll"] == line["nll"] and row["out"] == line["out"]
    assert lines[0]["nll"] != lines[1]["nll"]
    # negative control: the numbers are stochastic, so the equality above is not trivial
    other_seed = eval_ppl_model_dir(model_dir, seq_len=16, out=tmp_path / "seed1.json", **{**kw, "seed": 1})
    assert other_seed["nll"] != alone[16]["nll"]
    # every length and the summary in its own file: nothing overwritten
    outs = [Path(r["out"]) for r in lines] + [Path(summary["out"])]
    assert [p.name for p in outs] == ["both-len16.json", "both-len32.json", "both.json"]
    assert json.loads(outs[-1].read_text())["results"] == summary["results"] and summary["provenance"]["settings"]


def test_default_files_are_named_by_settings_and_never_collide(model_dir, text, tmp_path):
    kw = job_kwargs(text, tmp_path, max_tokens=200)
    summary = eval_ppl_lengths(model_dir, lengths=[16, 32], **kw)
    names = {Path(r["out"]).name for r in summary["results"]} | {Path(summary["out"]).name}
    assert len(names) == 3 and all(n.startswith("docs-test-") for n in names)
    ntk = eval_ppl_lengths(model_dir, lengths=[16, 32], rope_scaling="ntk_auto:32", **kw)
    assert {Path(r["out"]).name for r in ntk["results"]}.isdisjoint(names)  # another rope setting: other files


def test_same_documents_pad_truncates_and_wrap_chunks_one_stream(model_dir, text, tmp_path):
    pad = prepare_ppl_job(model_dir, **job_kwargs(text, tmp_path, mode="pad"))
    short, long = plan_length(pad, 16, None).rows, plan_length(pad, 32, None).rows
    assert len(short) == len(long) == 6  # one row per document at every length
    for i in range(6):
        a, b = short[i]["input_ids"], long[i]["input_ids"]
        assert torch.equal(a[:15], b[:15]) and a[15] == TOK.eos_id  # [BOS] + the same first 14 tokens + [EOS]
    wrap = prepare_ppl_job(model_dir, **job_kwargs(text, tmp_path, mode="wrap"))

    def stream(rows) -> list[int]:  # the text between each row's [BOS] and [EOS], concatenated
        return [t for i in range(len(rows)) for t in rows[i]["input_ids"][1:-1].tolist()]

    s16, s32 = stream(plan_length(wrap, 16, None).rows), stream(plan_length(wrap, 32, None).rows)
    n = min(len(s16), len(s32))  # each drops its own tail shorter than one piece
    assert n > 0 and s16[:n] == s32[:n]  # the same token stream, cut into pieces of 14 and of 30


def test_a_length_beyond_the_context_is_refused_with_the_fix_before_any_compute(model_dir, text, tmp_path):
    kw = job_kwargs(text, tmp_path)
    with pytest.raises(ConfigError, match=r"lengths=\[16, 64\]: 64 exceeds the model's context "
                                          r"model.max_seq_len=32.*rope_scaling=ntk_auto:64.*max_seq_len=64"):
        eval_ppl_lengths(model_dir, lengths=[16, 64], out=tmp_path / "x.json", **kw)
    assert not list(tmp_path.glob("x*.json"))  # not even the length that fits was scored
    with pytest.raises(ConfigError, match="repeats"):
        eval_ppl_lengths(model_dir, lengths=[16, 16], **kw)
    with pytest.raises(ConfigError, match="max_tokens"):
        eval_ppl_lengths(model_dir, lengths=[16, 32], **{**kw, "mode": "pad", "max_tokens": 100})


def test_rope_override_is_recorded_in_every_line_and_the_summary(model_dir, text, tmp_path):
    lines: list[dict] = []
    summary = eval_ppl_lengths(model_dir, lengths=[32, 64], rope_scaling="ntk_auto:64", report=lines.append,
                               out=tmp_path / "ntk.json", **job_kwargs(text, tmp_path, max_tokens=200))
    want = {"_target_": "dlm.nn.rope.NTKAuto", "train_len": 32, "target_len": 64}
    for record in [*lines, summary]:
        assert record["context"] == {"rope_scaling": want, "max_seq_len": 64}
        assert record["overrides"] == {"rope_scaling": want, "max_seq_len": 64}
    plain = eval_ppl_lengths(model_dir, lengths=[32, 64], max_seq_len=64, out=tmp_path / "plain.json",
                             **job_kwargs(text, tmp_path, max_tokens=200))
    assert plain["context"] == {"rope_scaling": None, "max_seq_len": 64}
    assert plain["results"][0]["nll"] != summary["results"][0]["nll"]  # the base changed: other logits


def test_cli_prints_a_line_per_length_then_the_summary_and_refuses_with_the_fix(model_dir, text, tmp_path):
    args = [str(BIN / "dlm-eval-ppl"), f"model={model_dir}", f"data={text}", "lengths=[16,32]", "num_samples=2",
            "device=cpu", f"cache_dir={tmp_path / 'cache'}", f"out={tmp_path / 'cli.json'}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert [x.get("seq_len") for x in lines] == [16, 32, None] and len(lines[-1]["results"]) == 2
    assert all(x["context"] == {"rope_scaling": None, "max_seq_len": 32} for x in lines)
    refused = subprocess.run([*args[:3], "lengths=[16,128]"], capture_output=True, text=True, timeout=300,
                             cwd=tmp_path)
    assert refused.returncode == 2 and "rope_scaling=ntk_auto:128" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_diffusion_aware_ntk_doubles_both_lengths():
    # UltraLLaDA on LLaDA-8B (D 128, theta 5e5) 4k -> 16k: d_crit 70 and lambda ~ 12.5 (research note §7.3)
    assert critical_dim(128, 5e5, 2 * 4096) == 70
    assert NTKAutoDiffusion(4096, 16384, round_up=False).factor(5e5, 128) == pytest.approx(12.54, abs=0.01)
    assert NTKAutoDiffusion(4096, 16384).factor(5e5, 128) == 13.0 and NTKAuto(4096, 16384).factor(5e5, 128) == 14.0
    with pytest.raises(ConfigError, match="target_len must be >= train_len"):
        NTKAutoDiffusion(4096, 2048)


def test_diffusion_aware_ntk_is_a_load_override(model_dir):
    loaded = load_model_dir(model_dir, rope_scaling="ntk_auto_diffusion:128")
    assert loaded.model.rope_scaling == NTKAutoDiffusion(train_len=32, target_len=128)
    assert loaded.model.max_seq_len == 128 and loaded.record.overrides["max_seq_len"] == 128


def test_hf_dynamic_rope_scaling_is_refused_naming_the_cache_hazard(tmp_path):
    transformers = pytest.importorskip("transformers")
    from dlm.io.hf_dir import hf_to_dlm

    def saved(name: str, scaling: dict) -> Path:
        config = transformers.LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=4, max_position_embeddings=64, rope_scaling=scaling)
        torch.manual_seed(0)
        transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / name)
        return tmp_path / name

    with pytest.raises(ConfigError, match=r"dynamic NTK is refused.*sequence length.*cache.*ntk_auto"):
        hf_to_dlm(saved("hf", {"rope_type": "dynamic", "factor": 2.0}), tmp_path / "dlm")
    assert not (tmp_path / "dlm").exists()
    with pytest.raises(ConfigError, match="not supported by the converter"):  # other scalings: their own refusal
        hf_to_dlm(saved("hf_linear", {"rope_type": "linear", "factor": 2.0}), tmp_path / "dlm")


def test_ntk_auto_train_len_is_the_trained_row_length_not_the_rope_table(tmp_path):
    """LongLLaDA's rule needs the positions the model saw: a model trained on rows of 16 tokens with a 32-token
    RoPE table gets train_len 16 (a larger base than train_len 32 would give); a converted HF model (no seq_len)
    falls back to its saved context."""
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": 32, "attention": "bidirectional", "vocab_size": TOK.vocab_size, "mask_id": TOK.mask_id}
    rows16 = save_model_dir(tmp_path / "rows16", model=build(spec), model_spec=spec, tokenizer=TOK,
                            family=Family.MASKED, seq_len=16, schedule_spec=SCHEDULE)
    loaded = load_model_dir(rows16, rope_scaling="ntk_auto:128")
    assert loaded.model.rope_scaling == NTKAuto(train_len=16, target_len=128)
    assert NTKAuto(16, 128).factor(1e4, 16) > NTKAuto(32, 128).factor(1e4, 16)  # the rule sees a longer extension
    unknown = save_model_dir(tmp_path / "hf", model=build(spec), model_spec=spec, tokenizer=TOK, family=Family.MASKED,
                             seq_len=None, schedule_spec=SCHEDULE)
    assert load_model_dir(unknown, rope_scaling="ntk_auto:128").model.rope_scaling == NTKAuto(32, 128)
