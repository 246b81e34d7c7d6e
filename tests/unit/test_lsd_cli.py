"""LSD from the command line: dlm-train experiment=lsd_demo exports a schedule directory that
dlm-sample sampler=lsd loads; the frozen denoiser stays untouched; bad inputs are refused before compute."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from cli_helpers import BIN
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from hydra_helpers import compose_config

from dlm.data.tokenizers.char import CharTokenizer
from dlm.errors import ConfigError
from dlm.eval.sample_job import sample_to_jsonl
from dlm.io.model_dir import load_model_dir, save_model_dir
from dlm.io.record import Family
from dlm.io.schedule_dir import denoiser_fingerprint
from dlm.io.spec import build
from dlm.objectives.lsd import LSDLoss
from dlm.train.lsd_run import ScheduleDistillation
from dlm.train.run import run

SEQ = 16


def export(path, seed: int):
    tok = CharTokenizer()
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": SEQ, "attention": "bidirectional", "vocab_size": tok.vocab_size, "mask_id": tok.mask_id,
            "init_std": 0.2}
    torch.manual_seed(seed)
    return save_model_dir(path, model=build(spec), model_spec=spec, tokenizer=tok, family=Family.MASKED, seq_len=SEQ,
                          schedule_spec={"_target_": "dlm.diffusion.schedule.LogLinearSchedule"})


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lsd")
    return export(root / "model", 0), export(root / "other", 1), root


def train_cfg(model_dir, run_dir, *extra: str):
    return compose_config("train", ["experiment=lsd_demo", f"init_from={model_dir}", f"run_dir={run_dir}",
                                    "objective.num_steps=4", "objective.teacher_steps=8", f"data.seq_len={SEQ}",
                                    "batch_size=2", "trainer.max_steps=2", "trainer.val_check_interval=2",
                                    "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", *extra])


def test_training_leaves_the_denoiser_untouched(dirs):
    # fails if the denoiser is registered in the module (optimiser, checkpoints) or left trainable
    loaded = load_model_dir(dirs[0])
    before = denoiser_fingerprint(loaded.model)
    module = ScheduleDistillation(denoiser=loaded.model, loss=LSDLoss(num_steps=4, teacher_steps=8, learn_grid=True),
                                  batch_size=2, length=SEQ, prompt=torch.tensor([CharTokenizer().bos_id]), seed=0,
                                  lr=0.05)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module)
    assert denoiser_fingerprint(loaded.model) == before
    assert all(not p.requires_grad and p.grad is None for p in loaded.model.parameters())
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.steps.parameters() if p.requires_grad}
    assert set(module.state_dict()) == {f"steps.{k}" for k in module.steps.state_dict()}  # no denoiser copy
    assert not torch.equal(module.steps.logit_scales(), torch.ones(4, dtype=torch.float64))  # it did train


def test_dlm_train_exports_a_schedule_that_dlm_sample_loads(dirs, tmp_path):
    model_dir, other_dir, _ = dirs
    summary = run(train_cfg(model_dir, tmp_path / "r"))
    sched = tmp_path / "r" / "schedule"
    meta = json.loads((sched / "schedule.json").read_text())
    assert summary["schedule_dir"] == str(sched) and meta["num_steps"] == 4 and meta["teacher_steps"] == 8
    assert meta["fingerprint"] == denoiser_fingerprint(load_model_dir(model_dir).model) == summary["fingerprint"]
    assert len(summary["timesteps"]) == 5 and len(summary["logit_scales"]) == 4

    import subprocess

    out = tmp_path / "s.jsonl"
    proc = subprocess.run([str(BIN / "dlm-sample"), f"model={model_dir}", "sampler=lsd",
                           f"sampler.schedule.path={sched}", "num_samples=3", f"length={SEQ}", f"out={out}"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["sampler"] == "LearnedScheduleSampler" and len(out.read_text().splitlines()) == 3
    assert result["learned_schedule"]["logit_scales"] == pytest.approx(meta["logit_scales"])

    def sampler(*overrides):
        cfg = compose_config("train", ["+sampler=lsd", f"sampler.schedule.path={sched}", *overrides])
        return instantiate(cfg.sampler)

    with pytest.raises(ConfigError, match=f"fingerprint {meta['fingerprint']}, but model= has fingerprint "
                                          f"{denoiser_fingerprint(load_model_dir(other_dir).model)}"):
        sample_to_jsonl(other_dir, sampler(), num_samples=1, length=SEQ, device="cpu", out=tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()
    refused = (ConfigError, InstantiationException)  # Hydra wraps a constructor's refusal (dlm-sample unwraps it)
    with pytest.raises(refused, match="sampler.num_steps=8 but .* was trained for 4 steps"):
        sampler("sampler.num_steps=8")
    with pytest.raises(refused, match="was trained as lsd .* use sampler=lsd"):
        sampler("sampler.learn_grid=true")


@pytest.mark.parametrize(("overrides", "match"), [
    (["objective.teacher_steps=2"], "objective.teacher_steps=2 is fewer than objective.num_steps=4"),
    (["objective.num_steps=0"], "objective.num_steps=0 must be a positive integer"),
    (["init_from=null"], "init_from=null: LSD distils"),
])
def test_bad_settings_are_refused_before_any_compute(dirs, tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        run(train_cfg(dirs[0], tmp_path / "r", *overrides))
    assert not (tmp_path / "r").exists()
