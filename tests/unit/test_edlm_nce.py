"""EDLM-NCE training (dlm.objectives.nce, dlm.train.energy_init): the loss and its gradients on known inputs,
2 log 2 at initialisation, negatives drawn by the proposal (in eval mode, carrying xt over), the proposal
frozen through Lightning training steps (bitwise unchanged, no .grad, outside optimiser and checkpoint),
and ``dlm-train experiment=edlm_nce_demo`` end to end."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from mocks import OracleDenoiser
from torch import Tensor, nn
from torch.utils.data import DataLoader

import dlm
from dlm.data.tokenizers.char import CharTokenizer
from dlm.diffusion.schedule import LogLinearSchedule
from dlm.errors import ConfigError
from dlm.eval.model_dir import eval_ppl_model_dir
from dlm.io.energy_dir import load_energy
from dlm.io.model_dir import save_model_dir
from dlm.io.record import Family
from dlm.io.spec import build
from dlm.models.energy import NCEEnergy
from dlm.objectives.nce import NCELoss, nce_loss
from dlm.train.energy_init import energy_from_denoiser
from dlm.train.module import DlmModule

TOK = CharTokenizer()
V, MASK = TOK.vocab_size, TOK.mask_id
LOG4 = 2 * math.log(2)


def spec(attention: str = "bidirectional", **kw) -> dict:
    return {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 32,
            "attention": attention, "vocab_size": V, "mask_id": MASK, **kw}


def denoiser_and_energy(**kw) -> tuple[dict, NCEEnergy, nn.Module, nn.Module]:
    torch.manual_seed(0)
    denoiser = build(spec(**kw))
    energy_spec, energy, proposal = energy_from_denoiser(spec(**kw), denoiser.state_dict())
    return energy_spec, energy, proposal, denoiser


def batch(rows: int = 6, length: int = 16, seed: int = 1) -> dict[str, Tensor]:
    return {"input_ids": torch.randint(4, 40, (rows, length), generator=torch.Generator().manual_seed(seed))}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- the loss on known inputs (note §9 C7)
def test_nce_loss_values_and_gradients():
    assert nce_loss(torch.zeros(1), torch.zeros(1)).item() == pytest.approx(LOG4, abs=1e-7)
    a, b = torch.tensor([0.3, -2.0, 5.0]), torch.tensor([1.5, 0.2, -4.0])
    torch.testing.assert_close(nce_loss(a, b), torch.log1p(torch.exp(a)) + torch.log1p(torch.exp(-b)))
    assert nce_loss(torch.tensor([-20.0]), torch.tensor([20.0])).item() == pytest.approx(4.1e-9, rel=0.01)
    # saturation: exact softplus, no 1e-8 cap (the public code's -log(sigma + 1e-8) stops at 2 x 18.42)
    assert nce_loss(torch.tensor([20.0]), torch.tensor([-20.0])).item() == pytest.approx(40.0, abs=1e-6)
    e_pos, e_neg = a.clone().requires_grad_(), b.clone().requires_grad_()
    nce_loss(e_pos, e_neg).sum().backward()
    torch.testing.assert_close(e_pos.grad, torch.sigmoid(a))
    torch.testing.assert_close(e_neg.grad, -torch.sigmoid(-b))


def test_energy_starts_from_the_denoiser_and_the_loss_at_2_log_2():
    energy_spec, energy, proposal, denoiser = denoiser_and_energy()
    body, original = energy.body.state_dict(), denoiser.state_dict()
    assert set(original) - set(body) == {"lm_head.weight"}  # the vocabulary head is replaced, nothing else
    assert all(torch.equal(body[k], original[k]) for k in body)
    assert all(not p.requires_grad for p in proposal.parameters()) and not proposal.training
    assert all(p.requires_grad for p in energy.parameters())
    assert isinstance(build(energy_spec), NCEEnergy)  # the spec a model directory stores rebuilds it
    out = NCELoss(proposal=proposal, schedule=LogLinearSchedule())(energy, batch(), gen())
    assert out.loss.item() == pytest.approx(LOG4, abs=1e-6)
    assert out.metrics["accuracy"].item() == 0.5  # E = 0 ties count 1/2: chance
    assert out.metrics["energy_pos"].item() == 0.0 and out.metrics["energy_neg"].item() == 0.0
    assert out.num_tokens.item() == 6 and out.nll_sum.item() == pytest.approx(6 * LOG4, abs=1e-5)


class RecordingEnergy(nn.Module):
    """E = a * (#tokens differing from xt): records what it is asked to score."""

    time_conditioned, exact_normaliser = False, False

    def __init__(self) -> None:
        super().__init__()
        self.vocab_size, self.mask_id = V, MASK
        self.a = nn.Parameter(torch.tensor(0.1))
        self.seen: list[tuple[Tensor, Tensor, Tensor]] = []

    def forward(self, x0: Tensor, xt: Tensor, t: Tensor, proposal_log_probs: Tensor) -> Tensor:
        self.seen.append((x0.clone(), xt.clone(), proposal_log_probs.clone()))
        return self.a * (x0 != xt).float().sum(-1)


def test_negatives_are_drawn_by_the_proposal_given_the_same_xt():
    data = batch()
    other = torch.randint(40, 80, data["input_ids"].shape, generator=gen(9))  # what the oracle proposes
    energy = RecordingEnergy()
    NCELoss(proposal=OracleDenoiser(other, V, MASK), schedule=LogLinearSchedule())(energy, data, gen())
    x0, xt, lp = energy.seen[0]
    pos, neg = x0.split(6)
    xt_pos, xt_neg = xt.split(6)
    masked = xt_pos == MASK
    assert torch.equal(xt_pos, xt_neg) and masked.any() and (~masked).any()
    assert torch.equal(pos, data["input_ids"])  # positives: the data
    assert torch.equal(neg, torch.where(masked, other, xt_pos))  # negatives: the proposal's draw, xt carried over
    assert not masked[:, 0].any()  # keep_first_token: position 0 is never masked
    lp_pos, lp_neg = lp.split(6)
    assert torch.all(lp_pos[masked] < -100) and torch.all(lp_neg[masked] > -1e-3)  # log p_theta of each
    assert torch.all(lp[torch.cat([~masked, ~masked])] == 0)


def test_the_proposal_runs_in_eval_mode_even_if_put_in_train_mode():
    _, energy, proposal, _ = denoiser_and_energy(dropout=0.5)
    objective = NCELoss(proposal=proposal, schedule=LogLinearSchedule())
    data = batch()
    # negative control: with dropout on, the proposal's logits differ call to call
    proposal.train()
    x = torch.full((2, 16), MASK)
    assert not torch.equal(proposal(x), proposal(x))
    modes: list[bool] = []
    proposal.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    recorder = RecordingEnergy()
    objective(recorder, data, gen(3))
    objective(recorder, data, gen(3))
    assert modes == [False, False]
    assert torch.equal(recorder.seen[0][0], recorder.seen[1][0])  # identical negatives with the same generator


def test_a_causal_proposal_and_a_missing_proposal_are_refused():
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="attention=bidirectional"):
        NCELoss(proposal=build(spec("causal")), schedule=LogLinearSchedule())
    with pytest.raises(ConfigError, match="init_from=<diffusion model dir>"):
        NCELoss(schedule=LogLinearSchedule())(RecordingEnergy(), batch())
    with pytest.raises(ConfigError, match="bidirectional backbone"):
        energy_from_denoiser(spec("causal"), build(spec("causal")).state_dict())


# ---------------------------------------------------------------- Lightning training steps (note §9 C9)
def test_training_steps_leave_the_proposal_bitwise_unchanged_and_outside_the_optimiser(tmp_path):
    _, energy, proposal, _ = denoiser_and_energy(dropout=0.2)
    before = {k: v.clone() for k, v in proposal.state_dict().items()}
    head_before = energy.head[2].weight.clone()
    modes: list[bool] = []
    proposal.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    objective = NCELoss(proposal=proposal, schedule=LogLinearSchedule())
    module = DlmModule(model=energy, objective=objective, lr=1e-2, warmup_steps=1, max_steps=4, ema_decay=0.9)
    rows = [{"input_ids": r} for r in batch(rows=16, seed=4)["input_ids"]]
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=DataLoader(rows, batch_size=4))
    assert trainer.global_step == 4 and len(modes) == 4 and not any(modes)  # every negative drawn in eval mode
    after = proposal.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bitwise unchanged
    assert all(p.grad is None and not p.requires_grad for p in proposal.parameters())
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in proposal.parameters()}
    assert optimised == {id(p) for p in energy.parameters()}
    assert all(k.startswith("model.") for k in module.state_dict())  # the checkpoint holds the energy only
    assert len(module.state_dict()) == len(energy.state_dict())
    assert not torch.equal(energy.head[2].weight, head_before)  # negative control: the energy did train


# ---------------------------------------------------------------- dlm-train experiment=edlm_nce_demo end to end
def export_diffusion(path: Path) -> Path:
    torch.manual_seed(0)
    s = spec(time_conditioned=False)
    return save_model_dir(path, model=build(s), model_spec=s, tokenizer=TOK, family=Family.MASKED, seq_len=32,
                          keep_first_token=True, schedule_spec={"_target_": "dlm.diffusion.schedule.LogLinearSchedule"})


# a dlm-train process: 7 s on the idle 2-core machine (up to a minute when other jobs load it)
def test_dlm_train_edlm_nce_demo_exports_an_energy_directory(tmp_path):
    diffusion = export_diffusion(tmp_path / "radd")
    run_dir = tmp_path / "nce"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([str(Path(sys.executable).parent / "dlm-train"), "experiment=edlm_nce_demo",
                           f"init_from={diffusion}", f"run_dir={run_dir}", "data.seq_len=32", "batch_size=4",
                           "data.max_train_tokens=20000", "data.max_eval_tokens=4000", "trainer.max_steps=4",
                           "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
                           "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["kind"] == "energy" and summary["step"] == 4
    assert "val/nll" in summary and "val/ppl" not in summary  # the NCE loss; exp() of it is no perplexity
    assert {"train/accuracy", "train/energy_pos", "train/energy_neg"} <= set(summary)
    with open(run_dir / "logs" / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert losses[0] == pytest.approx(LOG4, abs=1e-5)  # step 0: the zero-initialised head
    loaded = dlm.load(run_dir / "model")
    assert loaded.family is Family.ENERGY and isinstance(loaded.model, NCEEnergy)
    assert loaded.record.model_spec["backbone"]["dim"] == 32  # the diffusion model's architecture
    energy = load_energy(run_dir / "model", denoiser=diffusion)
    x0 = torch.randint(4, 40, (3, 32))
    e = energy(x0, x0.masked_fill(torch.rand(3, 32) < 0.5, MASK), torch.full((3,), 0.5), torch.zeros(3, 32))
    assert e.shape == (3,) and torch.isfinite(e).all() and e.abs().max() > 0  # trained: no longer 0
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 12)
    result = eval_ppl_model_dir(diffusion, dataset=str(text), source=str(text), split="test", batch_size=64,
                                num_samples=2, device="cpu", cache_dir=tmp_path / "cache", energy=run_dir / "model",
                                log_z_samples=4)
    assert result["method"] == "nelbo_bound_estimated" and result["log_z_samples"] == 4
    assert math.isfinite(result["nll"])


def test_dlm_train_without_init_from_is_refused_before_any_compute(tmp_path):
    from hydra_helpers import compose_config

    from dlm.train.run import run

    cfg = compose_config("train", ["experiment=edlm_nce_demo", "init_from=null", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="init_from=<diffusion model dir>"):
        run(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
