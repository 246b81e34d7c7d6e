"""Needle-in-a-haystack: the generator (deterministic, well posed, the needle where it says), data=needle rows,
and dlm-eval-needle (an oracle reader scores 1.0, a reader that corrupts one digit scores 0; JSON + PNG)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from mocks import MockDenoiser
from torch import Tensor, nn

from dlm.data.needle import NeedleRows, NeedleTask, needle_document, read_answer
from dlm.data.tokenizers.char import CharTokenizer
from dlm.errors import ConfigError
from dlm.eval.needle import cell_accuracy, needle_grid
from dlm.eval.needle_job import eval_needle_model_dir
from dlm.io.model_dir import save_model_dir
from dlm.io.record import Family
from dlm.io.spec import build

TOK = CharTokenizer()


def test_documents_are_a_function_of_the_seed():
    task = NeedleTask.for_row(96)
    assert needle_document(task, seed=3) == needle_document(task, seed=3)
    assert needle_document(task, seed="0:train:5") == needle_document(task, seed="0:train:5")
    assert needle_document(task, seed=3).text != needle_document(task, seed=4).text
    # the same seed at another depth: same keys and values, the needle moved
    a, b = needle_document(task, seed=3, depth=0.0), needle_document(task, seed=3, depth=1.0)
    assert (a.key, a.answer) == (b.key, b.answer) and a.needle_start != b.needle_start


@pytest.mark.parametrize("seq_len,num_pairs,num_queries", [(48, 3, 1), (64, 4, 2), (128, 4, 1), (512, 8, 3)])
def test_format_answer_once_at_the_stated_depth_and_recoverable_by_regex(seq_len, num_pairs, num_queries):
    task = NeedleTask.for_row(seq_len, num_pairs=num_pairs, num_queries=num_queries)
    span = task.context_len - task.pair_len
    for seed in range(200):
        depth = [0.0, 0.25, 0.5, 0.75, 1.0, None][seed % 6]
        doc = needle_document(task, seed=seed, depth=depth)
        prefix = doc.text[: task.answer_start]
        assert len(doc.text) == task.length == seq_len - 2
        assert doc.text.endswith(f" ?{doc.key}={doc.answer}") and len(doc.answer) == task.value_len
        assert doc.text.count("?") == num_queries and doc.text.count(f"?{doc.key}=") == 1
        assert doc.answer.isdigit() and doc.key.isupper()
        assert prefix.count(doc.answer) == 1  # only in the needle: the filler has no digits, values differ
        assert len(re.findall(r"\d+", prefix)) == num_pairs + num_queries - 1  # digit runs: whole values
        assert len(re.findall(r" [A-Z]+=\d+ ", prefix)) == num_pairs  # the pairs, apart from the queries
        assert doc.text[doc.needle_start : doc.needle_start + task.pair_len] == f" {doc.key}={doc.answer} "
        if depth is not None:
            assert doc.needle_start == round(depth * span) and doc.depth == pytest.approx(doc.needle_start / span)
        assert read_answer(prefix, task.value_len) == doc.answer  # the task is well posed
    first = needle_document(task, seed=0, depth=0.0)
    last = needle_document(task, seed=0, depth=1.0)
    assert first.needle_start == 0  # depth 0: the document starts with the needle
    assert last.needle_start + task.pair_len == task.context_len  # depth 1: right before the query


def test_bad_shapes_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"needle length=.*too short for num_pairs=4.*at least \d+ \(seq_len\)"):
        NeedleTask.for_row(40)
    with pytest.raises(ConfigError, match="num_queries=5 exceeds num_pairs=4"):
        NeedleTask.for_row(256, num_queries=5)
    with pytest.raises(ConfigError, match="num_pairs=0"):
        NeedleTask.for_row(128, num_pairs=0)
    with pytest.raises(ConfigError, match="depth=1.5"):
        needle_document(NeedleTask.for_row(128), seed=0, depth=1.5)
    with pytest.raises(ConfigError, match="tokenizer=char"):  # a tokenizer without digits gives [UNK]
        NeedleRows(NeedleTask.for_row(64, num_pairs=2), CharTokenizer(alphabet="abc ?="), split="train", num_docs=4)


def test_rows_are_bos_document_eos_of_seq_len_and_splits_differ():
    task = NeedleTask.for_row(64, num_pairs=3)
    train = NeedleRows(task, TOK, split="train", num_docs=8)
    again = NeedleRows(task, TOK, split="train", num_docs=8)
    val = NeedleRows(task, TOK, split="eval", num_docs=8)
    row = train[5]["input_ids"]
    assert row.shape == (64,) and row[0] == TOK.bos_id and row[-1] == TOK.eos_id
    assert TOK.decode(row.tolist()) == train.document(5).text
    assert torch.equal(row, again[5]["input_ids"])
    assert {train.document(i).text for i in range(8)}.isdisjoint({val.document(i).text for i in range(8)})


def test_data_needle_module_builds_from_its_config(tmp_path):
    from omegaconf import OmegaConf

    from dlm.cli import conf_dir
    from dlm.train.needle_datamodule import NeedleDataModule

    spec = OmegaConf.to_container(OmegaConf.load(conf_dir() / "data" / "needle.yaml"))
    assert spec.pop("_target_") == "dlm.train.needle_datamodule.NeedleDataModule"
    dm = NeedleDataModule(tokenizer=TOK, batch_size=4, **{**spec, "seq_len": 64, "num_pairs": 3,
                                                           "max_train_tokens": 640})
    dm.setup()
    assert len(dm.datasets["train"]) == 10 and len(dm.datasets["eval"]) == spec["num_eval_docs"]


class NeedleReader(MockDenoiser):
    """A perfect reader: at every masked position of the answer it puts all mass on the digit that
    ``read_answer`` finds in the visible row (``corrupt``: that digit + 1 mod 10, a negative control).
    ``attention="causal"``: the same answer given only the prefix (next-token logits); ``"block_causal"``:
    blocks of 4, the masked answer read from the prefix up to its block's end (what the block sampler shows)."""

    def __init__(self, *, corrupt: bool = False, attention: str = "bidirectional", value_len: int = 3) -> None:
        super().__init__()
        self.vocab_size, self.mask_id, self.attention = TOK.vocab_size, TOK.mask_id, attention
        self.block_size = 4 if attention == "block_causal" else None
        self.corrupt, self.value_len = corrupt, value_len
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, t: Tensor | None = None, **_) -> Tensor:
        logits = torch.zeros((*x.shape, self.vocab_size))
        for b, row in enumerate(x.tolist()):
            # one character per position ("#": masked, "^": BOS / EOS), so string offsets are positions
            visible = "".join("#" if i == self.mask_id else TOK.decode([i]) or "^" for i in row)
            if self.attention == "causal":  # predict the next token: the first answer digit not yet written
                start = visible.rindex("=") + 1
                answer = read_answer(visible[:start], self.value_len)
                slots = [(len(row) - 1, answer[len(visible) - start])] if len(visible) - start < self.value_len else []
            else:
                start = visible.rindex("=") + 1
                answer = read_answer(visible[:start], self.value_len)
                slots = [(start + k, answer[k]) for k in range(self.value_len) if row[start + k] == self.mask_id]
            for pos, digit in slots:
                digit = str((int(digit) + 1) % 10) if self.corrupt else digit
                logits[b, pos, TOK.encode(digit)[0]] = 50.0
        return logits


@pytest.mark.parametrize("attention", ["bidirectional", "causal", "block_causal"])
def test_an_oracle_reader_scores_one_and_a_corrupting_reader_zero(attention):
    kw = dict(lengths=[48, 96], depths=[0.0, 0.5, 1.0], num_docs=6, num_pairs=3, batch_size=4)
    grid = needle_grid(NeedleReader(attention=attention), TOK, **kw)
    assert grid["accuracy"] == [[1.0, 1.0]] * 3 and grid["mean_accuracy"] == 1.0
    assert [(c["seq_len"], c["depth"]) for c in grid["cells"]][:3] == [(48, 0.0), (48, 0.5), (48, 1.0)]
    bad = needle_grid(NeedleReader(attention=attention, corrupt=True), TOK, **kw)
    assert bad["mean_accuracy"] == 0.0


def test_one_wrong_digit_is_a_miss():
    class SecondDigitWrong(NeedleReader):
        def forward(self, x, t=None, **_):
            logits = super().forward(x, t)
            answer_pos = x.shape[1] - 1 - self.value_len + 1  # the second answer digit ([EOS] is last)
            logits[:, answer_pos] = logits[:, answer_pos].roll(1, dims=-1)
            return logits

    task = NeedleTask.for_row(64, num_pairs=3)
    assert cell_accuracy(SecondDigitWrong(), TOK, task, depth=0.5, num_docs=5)["accuracy"] == 0.0
    assert cell_accuracy(NeedleReader(), TOK, task, depth=0.5, num_docs=5)["accuracy"] == 1.0


def tiny_dir(path, *, max_seq_len: int = 64, attention: str = "bidirectional", data: dict | None = None):
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": max_seq_len, "attention": attention, "vocab_size": TOK.vocab_size, "mask_id": TOK.mask_id}
    torch.manual_seed(0)
    family = Family.MASKED if attention == "bidirectional" else Family.AR
    return save_model_dir(path, model=build(spec), model_spec=spec, tokenizer=TOK, family=family, seq_len=max_seq_len,
                          extra={"data": data or {}, **({"ar_softmax": "without_mask"} if family is Family.AR else {})})


def test_eval_needle_job_writes_grid_json_and_heat_map_and_records_the_rope_override(tmp_path):
    model = tiny_dir(tmp_path / "m", data={"seq_len": 64, "num_pairs": 3, "key_len": 2, "value_len": 3})
    kw = dict(lengths=[64], depths=[0.0, 1.0], num_docs=4, device="cpu")
    res = eval_needle_model_dir(model, **kw)
    assert res["num_pairs"] == 3 and res["settings"]["task"] == {"num_pairs": 3, "key_len": 2, "value_len": 3,
                                                                 "num_queries": 1}
    assert len(res["accuracy"]) == 2 and len(res["accuracy"][0]) == 1 and "overrides" not in res
    stored = json.loads(open(res["out"]).read())
    assert stored["accuracy"] == res["accuracy"] and stored["provenance"]["model_fingerprint"]
    assert open(res["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match=r"lengths=\[64, 128\]: 128 exceeds.*rope_scaling=ntk_auto:128"):
        eval_needle_model_dir(model, **{**kw, "lengths": [64, 128]})
    ntk = eval_needle_model_dir(model, **{**kw, "lengths": [64, 128]}, rope_scaling="ntk_auto:128")
    assert ntk["overrides"]["rope_scaling"]["_target_"] == "dlm.nn.rope.NTKAuto"
    assert ntk["overrides"]["max_seq_len"] == 128 and ntk["settings"]["overrides"] == ntk["overrides"]
    plain = eval_needle_model_dir(model, **{**kw, "lengths": [64, 128]}, max_seq_len=128)  # no scaling
    assert len({res["out"], ntk["out"], plain["out"]}) == 3  # settings name the files: none overwritten
    assert plain["overrides"] == {"max_seq_len": 128}


def test_eval_needle_refuses_what_it_cannot_decode_or_fit(tmp_path):
    model = tiny_dir(tmp_path / "m")
    with pytest.raises(ConfigError, match="depths=.*must lie in"):
        eval_needle_model_dir(model, lengths=[64], depths=[1.5], num_docs=2, device="cpu")
    with pytest.raises(ConfigError, match="too short"):
        eval_needle_model_dir(model, lengths=[24], num_docs=2, device="cpu")
    with pytest.raises(ConfigError, match="lengths=\\[\\] is empty"):
        eval_needle_model_dir(model, lengths=[], num_docs=2, device="cpu")
    assert not (tmp_path / "m" / "eval").exists()  # nothing written by a refusal


def test_bench_perplexity_texts_truncate_to_whole_training_documents(tmp_path):
    from dlm.bench.long_context import arm_overrides, ppl_documents

    task = {"num_pairs": 3, "key_len": 1, "value_len": 2, "num_queries": 2}
    path = ppl_documents(tmp_path / "docs.jsonl", length=48, per_text=4, num_texts=3, seed=0, task=task)
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    assert len(texts) == 3 and all(len(t) == 4 * 48 - 2 for t in texts)  # a row of 4 x 48 tokens: [BOS] text [EOS]
    for k in (1, 2, 4):  # truncated to k x 48 tokens, a row holds k whole documents and nothing more
        body = texts[0][: k * 48 - 2]
        docs = body.split("\n\n")
        assert len(docs) == k and all(read_answer(d[:-2], 2) == d[-2:] for d in docs)
    stamp = path.stat().st_mtime_ns
    ppl_documents(tmp_path / "docs.jsonl", length=48, per_text=4, num_texts=3, seed=0, task=task)
    assert path.stat().st_mtime_ns == stamp  # unchanged data keeps its identity: a rerun replaces its results
    assert arm_overrides("none", 256) == {"max_seq_len": 256}
    assert arm_overrides("ntk_auto", 256) == {"rope_scaling": "ntk_auto:256"}


def test_answer_only_rows_leave_only_the_query_values_unmarked():
    task = NeedleTask.for_row(64, num_pairs=6, key_len=1, value_len=2, num_queries=3)
    assert "prompt_mask" not in NeedleRows(task, TOK, split="train", num_docs=4)[0]  # fraction 0: plain rows
    rows = NeedleRows(task, TOK, split="train", num_docs=200, answer_only_fraction=0.5)
    kinds = []
    for i in range(200):
        row, doc = rows[i], rows.document(i)
        prompt = row["prompt_mask"]
        assert prompt.shape == row["input_ids"].shape and prompt.dtype == torch.bool
        kinds.append(rows.answer_only(i))
        if not rows.answer_only(i):
            assert not prompt.any()  # an ordinary row: nothing is context-only
            continue
        free = (~prompt).nonzero().flatten().tolist()
        assert len(free) == 3 * task.value_len
        values = re.findall(r"\?[A-Z]=(\d\d)", doc.text)
        assert TOK.decode(row["input_ids"][free].tolist()) == "".join(values)  # the three queries' values
        assert TOK.decode(row["input_ids"][free[-2:]].tolist()) == doc.answer  # the needle's answer is among them
    assert 70 < sum(kinds) < 130  # about half, drawn per index
    assert kinds == [NeedleRows(task, TOK, split="train", num_docs=200, answer_only_fraction=0.5).answer_only(i)
                     for i in range(200)]  # deterministic
    with pytest.raises(ConfigError, match="answer_only_fraction=1.5"):
        NeedleRows(task, TOK, split="train", num_docs=4, answer_only_fraction=1.5)


def test_needle_module_refuses_a_bad_answer_only_fraction_at_build_time():
    from dlm.train.needle_datamodule import NeedleDataModule

    with pytest.raises(ConfigError, match="answer_only_fraction=-0.1"):
        NeedleDataModule(tokenizer=TOK, seq_len=64, num_pairs=3, answer_only_fraction=-0.1)


def test_bench_long_refuses_models_of_different_training_lengths_and_bad_entries(tmp_path, monkeypatch):
    from model_dirs import export_char_model

    import dlm.bench.long_context as long_context
    from dlm.io.record import Family

    dirs = {"a": export_char_model(tmp_path / "a", Family.MASKED, width=16),
            "b": export_char_model(tmp_path / "b", Family.AR, width=32)}
    monkeypatch.setattr(long_context, "train_timed",  # stands in for dlm-train: the run dir names the model
                        lambda args, run_dir, **kw: (dirs[run_dir.name], {"trained_now": False}))
    models = {"diffusion": {"run": "a", "train": []}, "ar": {"run": "b", "train": []}}
    with pytest.raises(ConfigError, match="models must share one training length"):
        long_context.bench_long(models=models, work_dir=str(tmp_path / "w"), out=str(tmp_path / "o.json"))
    with pytest.raises(ConfigError, match="models.ar must hold exactly the keys run and train"):
        long_context.bench_long(models={"ar": {"run": "b"}}, work_dir=str(tmp_path / "w"))
    assert not (tmp_path / "o.json").exists()


def _pairs_in(row: torch.Tensor) -> int:
    """Key-value pairs written in a row's context (`` K=VV ``; answered queries read ``?K=VV``, not counted)."""
    return len(re.findall(r" [A-Z]+=\d+ ", TOK.decode(row.tolist())))


def test_needle_curriculum_trains_its_first_steps_on_fewer_pairs_then_the_task_and_resumes_in_phase():
    import types

    from dlm.train.needle_datamodule import NeedleDataModule

    dm = NeedleDataModule(tokenizer=TOK, seq_len=64, num_pairs=5, key_len=1, value_len=2, num_queries=2,
                          curriculum_pairs=2, curriculum_steps=3, batch_size=4, num_train_docs=50, num_eval_docs=8)
    dm.setup()
    dm.trainer = types.SimpleNamespace(max_steps=5, accumulate_grad_batches=1, global_rank=0, world_size=1,
                                       global_step=0)
    batches = list(dm.train_dataloader())
    counts = [[_pairs_in(row) for row in b["input_ids"]] for b in batches]
    assert counts[:3] == [[2] * 4] * 3 and counts[3:] == [[5] * 4] * 2
    assert {_pairs_in(dm.datasets["eval"][i]["input_ids"]) for i in range(8)} == {5}  # validation: the task
    dm.trainer.global_step = 2  # resumed inside the warm-up: the same rows, the switch at the same step
    resumed = list(dm.train_dataloader())
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(resumed, batches[2:], strict=True))
    # without a curriculum the stream is the task's from the first step
    plain = NeedleDataModule(tokenizer=TOK, seq_len=64, num_pairs=5, key_len=1, value_len=2, num_queries=2,
                             batch_size=4, num_train_docs=50)
    plain.setup()
    plain.trainer = dm.trainer
    assert {_pairs_in(row) for b in plain.train_dataloader() for row in b["input_ids"]} == {5}


@pytest.mark.parametrize(("pairs", "steps", "match"), [
    (3, 0, "set both"), (None, 100, "set both"), (6, 100, "must be below num_pairs=6"),
    (1, 100, "curriculum_pairs=1: needle num_queries=3 exceeds"),
])
def test_needle_curriculum_refuses_a_half_set_or_impossible_warm_up_naming_the_key(pairs, steps, match):
    from dlm.train.needle_datamodule import NeedleDataModule

    with pytest.raises(ConfigError, match=match):
        NeedleDataModule(tokenizer=TOK, seq_len=64, num_pairs=6, key_len=1, value_len=2, num_queries=3,
                         curriculum_pairs=pairs, curriculum_steps=steps)
