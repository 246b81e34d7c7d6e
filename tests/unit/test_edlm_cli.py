"""dlm-sample sampler=edlm end to end on model directories: the summary's keys, AR energy loading,
the tokenizer check and refusals of misplaced directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlm.data.tokenizers.char import CharTokenizer
from dlm.errors import ConfigError
from dlm.io.energy_dir import load_energy, save_energy
from dlm.io.model_dir import save_model_dir
from dlm.io.record import Family
from dlm.io.spec import build
from dlm.models.energy import ARResidualEnergy, NCEEnergy

BIN = Path(sys.executable).parent


def spec_for(tok, attention: str) -> dict:
    return {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": 32, "attention": attention, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id}


def export(path: Path, family: Family, tok=None) -> Path:
    tok = tok or CharTokenizer()
    spec = spec_for(tok, family.attention)
    torch.manual_seed(0)
    return save_model_dir(path, model=build(spec), model_spec=spec, tokenizer=tok, family=family, seq_len=32)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("edlm")
    tok = CharTokenizer()
    diffusion = export(root / "radd", Family.MASKED)
    ar = export(root / "ar", Family.AR)
    nce_spec = {"_target_": "dlm.models.energy.NCEEnergy", "backbone": {k: v for k, v in spec_for(tok, "bidirectional").items()
                                                                        if k != "_target_"}}
    energy = save_energy(root / "energy", energy=build(nce_spec), model_spec=nce_spec, tokenizer=tok)
    other = export(root / "ar_other_tok", Family.AR, tok=CharTokenizer(alphabet="abcdefgh"))
    return {"radd": diffusion, "ar": ar, "energy": energy, "other": other, "root": root}


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(BIN / "dlm-sample"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("energy", ["ar", "energy"])
def test_dlm_sample_edlm_reports_energy_calls(dirs, energy, tmp_path):
    proc = run(f"model={dirs['radd']}", "sampler=edlm", f"sampler.energy.path={dirs[energy]}", "sampler.num_candidates=4",
               "sampler.window=0.25", "sampler.num_steps=16", "num_samples=4", "batch_size=2", "length=24",
               f"out={tmp_path / 'x.jsonl'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"nfe", "energy_calls", "seconds", "seconds_per_sample", "sampler"} <= set(summary)
    assert summary["sampler"] == "ImportanceSampler" and summary["energy_calls"] > 0
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 4


def test_loaded_energies_have_the_right_kind(dirs):
    assert isinstance(load_energy(dirs["ar"], denoiser=dirs["radd"]), ARResidualEnergy)
    assert load_energy(dirs["ar"], carry_over=True).exact_normaliser
    nce = load_energy(dirs["energy"], denoiser=dirs["radd"])
    assert isinstance(nce, NCEEnergy) and not any(p.requires_grad for p in nce.parameters())
    x = torch.randint(0, 10, (3, 8))
    assert torch.equal(nce(x, x, torch.ones(3)), torch.zeros(3))  # untrained head: E = 0


def test_an_energy_with_another_tokenizer_is_refused_naming_both(dirs):
    with pytest.raises(ConfigError, match="uses tokenizer .* but the denoiser .* uses"):
        load_energy(dirs["other"], denoiser=dirs["radd"])


@pytest.mark.parametrize("case, args, message", [
    ("energy as model", lambda d: [f"model={d['energy']}", "sampler=ancestral"], "not a denoiser"),
    ("k < 1", lambda d: [f"model={d['radd']}", "sampler=edlm", f"sampler.energy.path={d['ar']}",
                         "sampler.num_candidates=0"], "sampler.num_candidates"),
    ("w > 1", lambda d: [f"model={d['radd']}", "sampler=edlm", f"sampler.energy.path={d['ar']}", "sampler.window=2"],
     "sampler.window"),
    ("tokenizer", lambda d: [f"model={d['radd']}", "sampler=edlm", f"sampler.energy.path={d['other']}"], "tokenizer"),
    ("denoiser as energy", lambda d: [f"model={d['radd']}", "sampler=edlm", f"sampler.energy.path={d['radd']}"],
     "holds a 'diffusion' model"),
])
def test_bad_input_is_one_line_and_exit_2(dirs, case, args, message, tmp_path):
    proc = run(*args(dirs), f"out={tmp_path / 'x.jsonl'}", cwd=tmp_path)
    assert proc.returncode == 2, (case, proc.stderr[-2000:])
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_the_sampler_follows_a_dataclass_schedule_of_the_model():
    # regression: a schedule given to hydra's instantiate became an empty config and the sampler fell
    # back to log-linear without a word
    from omegaconf import OmegaConf

    from dlm.cli import instantiate_sampler
    from dlm.diffusion.schedule import CosineSchedule

    cfg = OmegaConf.create({"_target_": "dlm.samplers.ancestral.AncestralSampler", "num_steps": 8, "schedule": None})
    assert isinstance(instantiate_sampler(cfg, CosineSchedule()).schedule, CosineSchedule)
