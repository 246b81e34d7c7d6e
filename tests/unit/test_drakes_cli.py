"""DRAKES from the command line: dlm-train experiment=drakes_dna_demo exports a fine-tuned model directory that
dlm-sample reads; the pretrained model stays untouched; bad rewards are refused in one line before compute."""

from __future__ import annotations

import json
import os
import subprocess

import lightning as L
import pytest
import torch
from cli_helpers import BIN
from hydra_helpers import compose_config

from dlm.data.tokenizers.bio import DNATokenizer
from dlm.errors import ConfigError
from dlm.io.model_dir import load_model_dir, save_model_dir
from dlm.io.record import Family
from dlm.io.schedule_dir import denoiser_fingerprint
from dlm.io.spec import build
from dlm.objectives.drakes import DrakesLoss
from dlm.rewards.toy import GCContent
from dlm.train.drakes_run import RewardFinetune
from dlm.train.run import run

SEQ = 12


def export(path, seed: int = 0, *, keep_first_token: bool = False):
    tok = DNATokenizer()
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": SEQ + 1, "attention": "bidirectional", "vocab_size": tok.vocab_size, "mask_id": tok.mask_id,
            "init_std": 0.2}
    torch.manual_seed(seed)
    return save_model_dir(path, model=build(spec), model_spec=spec, tokenizer=tok, family=Family.MASKED, seq_len=SEQ,
                          keep_first_token=keep_first_token,
                          schedule_spec={"_target_": "dlm.diffusion.schedule.LogLinearSchedule"})


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return export(tmp_path_factory.mktemp("drakes") / "base")


TRAIN = ["objective.num_steps=6", "objective.truncate_steps=3", f"data.seq_len={SEQ}", "batch_size=4",
         "eval_batch_size=8", "trainer.max_steps=2", "trainer.val_check_interval=2",
         "trainer.enable_progress_bar=false"]


def test_training_leaves_the_pretrained_model_untouched(base):
    # fails if the reference is registered in the module (optimiser, checkpoints, EMA) or left trainable
    loaded = load_model_dir(base)
    tuned = load_model_dir(base).model.train()
    before = denoiser_fingerprint(loaded.model)
    module = RewardFinetune(model=tuned, reference=loaded.model, reward=GCContent(),
                            loss=DrakesLoss(num_steps=6, truncate_steps=3, alpha=0.1), batch_size=4, eval_batch_size=4,
                            length=SEQ, prompt=None, seed=0, lr=1e-2)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module)
    assert denoiser_fingerprint(loaded.model) == before
    assert all(not p.requires_grad and p.grad is None for p in loaded.model.parameters())
    assert not loaded.model.training
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in tuned.parameters()}
    assert all(k.startswith("model.") for k in module.state_dict())  # no copy of the reference
    assert denoiser_fingerprint(tuned) != before  # it did train
    assert module.curve[0]["step"] == 0 and module.curve[0]["kl_exact"] == 0.0  # the pretrained model's own samples


def test_dlm_train_exports_a_model_directory_that_dlm_sample_reads(base, tmp_path):
    run_dir = tmp_path / "r"
    proc = subprocess.run([str(BIN / "dlm-train"), "experiment=drakes_dna_demo", f"init_from={base}",
                           f"run_dir={run_dir}", *TRAIN], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["kind"] == "drakes" and summary["model_dir"] == str(run_dir / "model") and summary["step"] == 2
    assert [c["step"] for c in summary["curve"]] == [0, 2]
    assert summary["kl_exact_before"] == 0.0 and summary["kl_exact_after"] > 0  # it moved away from the base
    assert summary == json.loads((run_dir / "summary.json").read_text())
    tuned = load_model_dir(run_dir / "model")
    assert tuned.family is Family.MASKED and tuned.meta["drakes"]["finetuned_from"] == str(base)
    assert tuned.meta["drakes"]["reward"]["_target_"] == "dlm.rewards.toy.GCContent"
    assert denoiser_fingerprint(tuned.model) != denoiser_fingerprint(load_model_dir(base).model)
    assert summary["provenance"]["model_fingerprint"] == denoiser_fingerprint(tuned.model)  # the exported weights
    out = tmp_path / "s.jsonl"
    proc = subprocess.run([str(BIN / "dlm-sample"), f"model={run_dir / 'model'}", "num_samples=3", f"length={SEQ}",
                           f"out={out}"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 3


def test_a_resumed_run_continues_its_curve(base, tmp_path):
    # fails if the curve (or the step) is lost on resume, or a resumed run re-measures the base as step 0
    first = run(compose_config("train", ["experiment=drakes_dna_demo", f"init_from={base}",
                                         f"run_dir={tmp_path / 'r'}", *TRAIN]))
    resumed = run(compose_config("train", ["experiment=drakes_dna_demo", f"init_from={base}",
                                           f"run_dir={tmp_path / 'r'}", *TRAIN, "trainer.max_steps=4",
                                           "ckpt_path=last"]))
    assert [c["step"] for c in resumed["curve"]] == [0, 2, 4] and resumed["step"] == 4
    assert resumed["curve"][:2] == first["curve"]


def test_a_non_differentiable_reward_is_refused_in_one_line_and_nothing_is_written(base, tmp_path):
    run_dir = tmp_path / "r"
    env = {**os.environ, "DLM_DEBUG": "0"}
    proc = subprocess.run([str(BIN / "dlm-train"), "experiment=drakes_dna_demo", f"init_from={base}",
                           f"run_dir={run_dir}", "reward=jaspar_liver_hits", *TRAIN], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "method=drakes needs a differentiable reward" in lines[0], proc.stderr[-2000:]
    assert not run_dir.exists() and not any(tmp_path.iterdir())


@pytest.mark.parametrize(("overrides", "match"), [
    (["reward=kmer", "reward.alphabet=ACDEFGHIKLMNPQRSTVWY", "reward.kmer=W"],
     "reads the alphabet 'ACDEFGHIKLMNPQRSTVWY'"),
    (["reward.length=20"], f"length 20 but data.seq_len={SEQ} designs {SEQ}.*set data.seq_len=20"),
    (["objective.truncate_steps=7"], r"objective.truncate_steps=7 must be an integer in \[0, 6\]"),
    (["init_from=null"], "init_from=null: DRAKES fine-tunes"),
    (["~reward"], "reward=null: DRAKES fine-tunes toward a reward"),
])
def test_bad_settings_are_refused_before_any_compute(base, tmp_path, overrides, match):
    cfg = compose_config("train", ["experiment=drakes_dna_demo", f"init_from={base}", f"run_dir={tmp_path / 'r'}",
                                   *TRAIN, *overrides])
    with pytest.raises(ConfigError, match=match):
        run(cfg)
    assert not (tmp_path / "r").exists()


def test_a_reward_for_another_objective_is_refused(tmp_path):
    cfg = compose_config("train", ["debug=tiny", "reward=gc", f"run_dir={tmp_path / 'r'}"])
    with pytest.raises(ConfigError, match="reward=dlm.rewards.toy.GCContent is read only by reward fine-tuning"):
        run(cfg)
