"""The bad-input suite (issue 14): every refused input maps to the fragment its message must contain; the
command exits non-zero (or the entry point raises) and writes nothing.

In-process cases call the functions the commands run (``run``, ``eval_ppl_model_dir``, ``sample_to_jsonl``,
``load_model_dir``, Hydra composition); CLI cases run the command in a subprocess where the exit code and
stderr are the contract (Hydra composition errors, the console's one-line refusal).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from cli_helpers import BIN
from hydra.errors import HydraException
from hydra_helpers import compose_config
from safetensors.torch import load_file, save_file

from dlm.data.tokenizers.bio import DNATokenizer, ProteinTokenizer
from dlm.data.tokenizers.char import CharTokenizer
from dlm.errors import DlmError
from dlm.eval.model_dir import eval_ppl_model_dir
from dlm.eval.sample_job import sample_to_jsonl
from dlm.io.model_dir import load_model_dir, save_model_dir
from dlm.io.record import Family
from dlm.io.spec import build
from dlm.samplers.ancestral import AncestralSampler
from dlm.train.run import run

pytestmark = pytest.mark.slow

REFUSED = (DlmError, HydraException)  # what an entry point raises for a bad input


def export(path: Path, tokenizer, family: Family = Family.MASKED) -> Path:
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": 32, "attention": family.attention, "vocab_size": tokenizer.vocab_size,
            "mask_id": tokenizer.mask_id}
    torch.manual_seed(0)
    return save_model_dir(path, model=build(spec), model_spec=spec, tokenizer=tokenizer, family=family, seq_len=16,
                          schedule_spec={"_target_": "dlm.diffusion.schedule.LogLinearSchedule"})


@dataclass
class World:
    """Model directories, data files and an existing result, built once for the module."""

    root: Path
    dirs: dict[str, Path] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Path:
        return self.dirs[name]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("bad_input")
    w = World(root)
    w.dirs["masked"] = export(root / "masked", CharTokenizer())
    w.dirs["dna"] = export(root / "dna", DNATokenizer())
    w.dirs["protein"] = export(root / "protein", ProteinTokenizer())
    w.dirs["nan"] = shutil.copytree(w["masked"], root / "nan")
    state = load_file(str(w["nan"] / "model.safetensors"))
    state["layers.0.self_attn.q_proj.weight"][0, 0] = float("nan")
    save_file(state, str(w["nan"] / "model.safetensors"))
    w.dirs["truncated"] = shutil.copytree(w["masked"], root / "truncated")
    blob = (w["truncated"] / "model.safetensors").read_bytes()
    (w["truncated"] / "model.safetensors").write_bytes(blob[: len(blob) // 3])
    (root / "empty").mkdir()
    w.dirs["empty"] = root / "empty"
    w.dirs["missing"] = root / "no_such_model"
    w.dirs["weights_file"] = w["masked"] / "model.safetensors"
    w.dirs["mismatched"] = shutil.copytree(w["masked"], root / "mismatched")
    shutil.rmtree(w["mismatched"] / "tokenizer")
    DNATokenizer().save(w["mismatched"] / "tokenizer")
    w.dirs["text"] = root / "good.txt"
    w["text"].write_text("the quick brown fox jumps over the lazy dog\n" * 20)
    w.dirs["malformed"] = root / "malformed.jsonl"
    w["malformed"].write_text('{"text": "fine"}\n{"text": "cut\n')
    w.dirs["non_string"] = root / "non_string.jsonl"
    w["non_string"].write_text('{"text": "fine"}\n{"text": ["a", "list"]}\n')
    w.dirs["dna_text"] = root / "dna.txt"
    w["dna_text"].write_text("ACGTACGTACGT\nACGTXACG\n")
    w.dirs["result"] = root / "result.json"
    eval_ppl_model_dir(w["masked"], dataset="t", source=str(w["text"]), split="test", max_tokens=200,
                       num_samples=1, device="cpu", cache_dir=root / "cache", out=w["result"])
    w.dirs["converted"] = root / "converted"
    w["converted"].mkdir()
    (w["converted"] / "notes.txt").write_text("keep me")
    return w


def untouched(w: World) -> None:
    """Nothing of a refused job was written: no result, no samples, no run directory, no export."""
    for name in ("masked", "dna", "protein", "nan", "truncated", "mismatched"):
        assert not (w[name] / "eval").exists(), name
    assert not (w.root / "samples.jsonl").exists()
    assert not (w.root / "run").exists()  # dlm-train makes its run directory only for an accepted config
    assert json.loads(w["result"].read_text())["settings"]["max_tokens"] == 200
    assert sorted(p.name for p in w["converted"].iterdir()) == ["notes.txt"]
    assert not any(p.name.startswith(".") for p in w.root.iterdir())  # no temporary left behind


def evaluate(w: World, model: str = "masked", **kw) -> dict:
    kw = {"dataset": "t", "source": str(w["text"]), "split": "test", "num_samples": 1, "device": "cpu",
          "cache_dir": w.root / "cache", **kw}
    return eval_ppl_model_dir(w[model], **kw)


def sample(w: World, model: str = "masked", **kw) -> dict:
    kw = {"num_samples": 2, "length": 16, "batch_size": 2, "device": "cpu", "out": w.root / "samples.jsonl", **kw}
    return sample_to_jsonl(w[model], AncestralSampler(num_steps=4), **kw)


def train(w: World, *overrides: str) -> dict:
    return run(compose_config("train", ["debug=tiny", f"run_dir={w.root / 'run'}", *overrides]))


def compose(*overrides: str):
    return compose_config("train", list(overrides))


# case -> (what is called, a fragment its message must contain)
IN_PROCESS: dict[str, tuple[Callable[[World], object], str]] = {
    # unknown names list the valid choices
    "unknown_model": (lambda w: compose("model=nope"), "Available options in 'model': classifier"),
    "unknown_data": (lambda w: compose("data=nope"), "Could not find 'data/nope'"),
    "unknown_tokenizer": (lambda w: compose("tokenizer=nope"), "Available options in 'tokenizer': bpe char dna"),
    "unknown_experiment": (lambda w: compose("experiment=nope"), "Could not find 'experiment/nope'"),
    "unknown_sampler": (lambda w: compose("+sampler=nope"), "Available options in 'sampler': ancestral"),
    # misspelled and +-added keys
    "misspelled_key": (lambda w: compose("batchsize=8"), "Could not override 'batchsize'"),
    "misspelled_nested_key": (lambda w: compose("model.dimm=8"), "Could not override 'model.dimm'"),
    "plus_added_key": (lambda w: train(w, "+batchsize=8"), "unknown top-level key 'batchsize'"),
    "plus_added_key_hint": (lambda w: train(w, "+batchsize=8"), "did you mean batch_size"),
    # inconsistent block sizes
    "block_sizes": (lambda w: train(w, "objective=block", "model.attention=block_causal", "objective.block_size=8",
                                    "+model.block_size=4"), "objective.block_size=8 but model.block_size=4"),
    # zero or negative counts
    "train_batch_size_0": (lambda w: train(w, "batch_size=0"), "batch_size=0 must be a positive integer"),
    "train_seq_len_neg": (lambda w: train(w, "data.seq_len=-1"), "data.seq_len=-1 must be a positive integer"),
    "eval_seq_len_0": (lambda w: evaluate(w, seq_len=0), "seq_len=0 must be a positive integer"),
    "eval_seq_len_neg": (lambda w: evaluate(w, seq_len=-4), "seq_len=-4 must be a positive integer"),
    "eval_num_samples_0": (lambda w: evaluate(w, num_samples=0), "num_samples=0 must be a positive integer"),
    "eval_batch_size_neg": (lambda w: evaluate(w, batch_size=-1), "batch_size=-1 must be a positive integer"),
    "sample_num_samples_0": (lambda w: sample(w, num_samples=0), "num_samples=0 must be >= 1"),
    "sample_batch_size_0": (lambda w: sample(w, batch_size=0), "batch_size=0 must be >= 1"),
    "sample_length_neg": (lambda w: sample(w, length=-3), "length=-3 must be >= 1"),
    # too long sequences and prompts
    "eval_too_long": (lambda w: evaluate(w, seq_len=64), "seq_len=64 exceeds the model's context"),
    "sample_too_long": (lambda w: sample(w, length=64), "length=64 exceeds the model's context"),
    "train_too_long": (lambda w: train(w, "data.seq_len=128"), "data.seq_len=128 exceeds model.max_seq_len=64"),
    "prompt_too_long": (lambda w: sample(w, prompt="x" * 20), "the prompt is 21 tokens"),
    # alphabets name the character and where it is
    "dna_prompt": (lambda w: sample(w, "dna", prompt="ACGX"), "DNA sequence has 'X' at position 3"),
    "protein_prompt": (lambda w: sample(w, "protein", prompt="ACDZ"), "protein sequence has 'Z' at position 3"),
    "dna_corpus": (lambda w: evaluate(w, "dna", source=str(w["dna_text"]), seq_len=8),
                   "document 2 of the corpus (counting from 1, in file order): DNA sequence has 'X' at position 4"),
    # data files
    "malformed_jsonl": (lambda w: evaluate(w, source=str(w["malformed"])), "malformed.jsonl:2 is not valid JSON"),
    "non_string_text": (lambda w: evaluate(w, source=str(w["non_string"])),
                        "non_string.jsonl:2 has no string field 'text'"),
    # checkpoints
    "missing_checkpoint": (lambda w: evaluate(w, "missing"), "no_such_model does not exist"),
    "empty_checkpoint": (lambda w: load_model_dir(w["empty"]), "is missing model.json"),
    "truncated_checkpoint": (lambda w: evaluate(w, "truncated"), "model.safetensors is corrupt or truncated"),
    "nan_checkpoint_eval": (lambda w: evaluate(w, "nan"), "tensor 'layers.0.self_attn.q_proj.weight'"),
    "nan_checkpoint_sample": (lambda w: sample(w, "nan"), "holds 1 NaN and 0 inf values"),
    "weights_file_not_dir": (lambda w: evaluate(w, "weights_file"), "model.safetensors is a file; a model is loaded"),
    "missing_init_from": (lambda w: train(w, f"init_from={w['missing']}"), "no_such_model does not exist"),
    "mismatched_vocab": (lambda w: evaluate(w, "mismatched"),
                         "the tokenizer has vocab_size=8, mask_id=7, the model vocab_size=102, mask_id=101"),
    # an output path that holds another setting's result
    "existing_result": (lambda w: evaluate(w, max_tokens=300, out=w["result"]),
                        "holds a result of other settings (max_tokens: 200 -> 300"),
}


@pytest.mark.parametrize("case", IN_PROCESS)
def test_in_process_refusal(world, case):
    call, fragment = IN_PROCESS[case]
    with pytest.raises(REFUSED) as info:
        call(world)
    assert fragment in " ".join(str(info.value).split())  # Hydra lists options one per line
    untouched(world)


# case -> (command line, fragment of stderr); {name} is a path of the world
CLI: dict[str, tuple[list[str], str]] = {
    "train_unknown_experiment": (["dlm-train", "experiment=nope"], "Available options in 'experiment'"),
    "train_misspelled_key": (["dlm-train", "debug=tiny", "batchsize=8"], "batchsize"),
    "train_plus_added_key": (["dlm-train", "debug=tiny", "+batchsize=8", "run_dir={root}/run"],
                             "did you mean batch_size"),
    "sample_unknown_sampler": (["dlm-sample", "model={masked}", "sampler=nope", "out={root}/samples.jsonl"],
                               "sampler/nope"),
    "sample_length_0": (["dlm-sample", "model={masked}", "length=0", "out={root}/samples.jsonl"],
                        "length=0 must be >= 1"),
    "eval_unknown_data": (["dlm-eval-ppl", "model={masked}", "data=nope"], "neither a corpus in conf/data"),
    "eval_seq_len_0": (["dlm-eval-ppl", "model={masked}", "data={text}", "seq_len=0"],
                       "seq_len=0 must be a positive integer"),
    "eval_nan_checkpoint": (["dlm-eval-ppl", "model={nan}", "data={text}"], "holds 1 NaN and 0 inf values"),
    "eval_offline_hub": (["dlm-eval-ppl", "model={masked}", "data=wikitext2", "cache_dir={root}/cache"],
                         "data=/path/to/file.txt"),
    "eval_existing_result": (["dlm-eval-ppl", "model={masked}", "data={text}", "max_tokens=300", "num_samples=1",
                              "out={result}", "device=cpu", "cache_dir={root}/cache"],
                             "holds a result of other settings"),
    "sample_existing_out": (["dlm-sample", "model={masked}", "num_samples=1", "length=8", "out={result}"],
                            "exists and has no readable"),
    "convert_existing_dst": (["dlm-convert", "src={masked}", "dst={converted}"], "exists and is not empty"),
}


@pytest.mark.parametrize("case", CLI)
def test_cli_refusal(world, case):
    argv, fragment = CLI[case]
    argv = [a.format(root=world.root, **world.dirs) for a in argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=world.root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert fragment in proc.stderr, proc.stderr[-3000:]
    assert "data.source" not in proc.stderr or argv[0] != "dlm-eval-ppl"  # options the command accepts
    untouched(world)
