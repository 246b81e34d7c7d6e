"""The objective contract, run against every conf/objective config (DESIGN §6, issue 9).

For each config, composed and instantiated exactly as ``dlm-train`` does:

* an oracle denoiser (all mass on the clean x0) gives loss 0, and one that is off by one token does not;
* a denoiser uniform over K real tokens gives log K per target token in expectation (within 3
  standard errors over independent batches; exactly where the estimator has no variance), and one
  uniform over K + 1 tokens is rejected by the same check;
* a tiny real model gets finite, non-zero gradients, and a poisoned one is caught by the same check.

Cases are chosen by the objective's class, so a new config of a known objective is covered at once
(its options — form, schedule, clipped interval, shift, SFT — enter the expectations below), and a
config of a new objective class fails with a message saying what to add.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from hydra_helpers import compose_config
from mocks import (
    BlockOracle,
    CausalUniform,
    NextTokenOracle,
    OracleClassifier,
    OracleDenoiser,
    Uniform,
    UniformClassifier,
    UniformDenoiser,
)
from torch import Tensor, nn

from dlm.cli import CONF_DIR
from dlm.io.record import Family
from dlm.models.classifier import SequenceClassifier
from dlm.models.transformer import Transformer
from dlm.objectives.ar import AutoregressiveLoss
from dlm.objectives.block import BlockDiffusionLoss
from dlm.objectives.classifier import NoisyClassifierLoss
from dlm.objectives.drakes import DrakesLoss
from dlm.objectives.masked import MaskedDiffusionLoss

OBJECTIVES = sorted(p.stem for p in (Path(CONF_DIR) / "objective").glob("*.yaml"))
V, MASK = 8, 7  # 7 real tokens + mask
K = 3  # the uniform denoiser's support; data for the uniform check is drawn from it
C = 3  # classes of the classifier objective
B, L = 32, 16  # batch rows, row length (a multiple of every block size used)
REPEATS = 400  # independent batches for the in-expectation check


def build(name: str):
    objective = instantiate(compose_config("train", [f"objective={name}"]).objective)
    if objective.family is Family.ENERGY:
        # an energy objective (EDLM-NCE) trains a scalar energy against a frozen proposal, not a denoiser:
        # its contract (exactly 2 log 2 at E = 0, ~0 for a separating energy, gradients, the frozen
        # proposal) is tested in test_edlm_nce.py
        pytest.skip(f"conf/objective/{name}.yaml trains an energy, not a denoiser: see test_edlm_nce.py")
    if isinstance(objective, DrakesLoss):
        # reward fine-tuning reads no data batch: (model, reference, reward) -> loss of a relaxed rollout; its
        # contract (K = 0 is the base sampler, exact one-hot x0, KL 0 for identical models, ...) is test_drakes.py
        pytest.skip(f"conf/objective/{name}.yaml fine-tunes toward a reward, not on data: see test_drakes.py")
    return objective


def token_batch(seed: int, high: int = MASK) -> dict[str, Tensor]:
    """input_ids (B, L) in [0, high), right padding (row 0 full, others >= L/2 real tokens), prompt_mask (first 4)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, high, (B, L), generator=g)
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    lengths[0] = L
    pos = torch.arange(L)[None]
    return {"input_ids": x0, "attention_mask": (pos < lengths[:, None]).long(), "prompt_mask": (pos < 4).expand(B, L)}


def labelled_batch(seed: int, high: int = MASK) -> dict[str, Tensor]:
    batch = token_batch(seed, high)
    batch["labels"] = torch.randint(0, C, (B,), generator=torch.Generator().manual_seed(seed + 10_000))
    return batch


def clean_fraction_weight(schedule, t_min: float, t_max: float) -> float:
    """E_t[w(t) (1 - alpha(t))] for t ~ U[t_min, t_max]: w (1 - alpha) = -alpha', so (alpha(t_min) - alpha(t_max)) / (t_max - t_min).

    The factor by which a uniform denoiser's expected loss differs from log K (1 for the log-linear
    schedule on any interval; the lost sliver [0, t_min) of another schedule shows up here).
    """
    a = schedule.alpha(torch.tensor([t_min, t_max], dtype=torch.float64))
    return float((a[0] - a[1]) / (t_max - t_min))


def t_dce_offset(schedule, t_min: float, n: int = 2_000_000) -> float:
    """E_t[alpha'(t) log(alpha / (1 - alpha))] for t ~ U[t_min, 1): the expected per-token t-DCE - t-DSE term.

    RADD's parameter-free term integrates to 0 over [0, 1] (RADD Eq. 3.5), not over the clipped
    [t_min, 1) the loss samples: with t_min = 1e-3 and the log-linear schedule it is +0.0079 nats.
    Midpoint rule; the log singularity at t = 1 is integrable (error ~ 1e-5).
    """
    t = t_min + (torch.arange(n, dtype=torch.float64) + 0.5) * (1 - t_min) / n
    alpha = schedule.alpha(t)
    return float((schedule.alpha_prime(t) * (torch.log(alpha) - torch.log1p(-alpha))).mean())


def nonfinite_grads(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]


# ---------------------------------------------------------------- one case per objective class
@dataclass
class Case:
    batch: Callable[[int, int], dict[str, Tensor]]  # (seed, high) -> batch
    oracle: Callable[[dict[str, Tensor], bool], nn.Module]  # (batch, off_by_one) -> model
    uniform: Callable[[int], nn.Module]  # support size -> model
    expected_uniform: Callable[[object, int], float]  # (objective, support) -> expected loss
    tiny_models: Callable[[object], list[nn.Module]]
    # None: the oracle's loss is 0 for every draw; a float: only its expectation is (that value)
    oracle_expectation: Callable[[object], float | None] = lambda objective: None


def shifted(x: Tensor) -> Tensor:
    """Every token off by one (within the real vocabulary): the negative control of the oracle."""
    return (x + 1) % MASK


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(vocab_size=V, mask_id=MASK, dim=16, n_layers=1, n_heads=2, cond_dim=16, attn_backend="sdpa",
                       **kw)


def masked_expectation(obj: MaskedDiffusionLoss, support: int) -> float:
    if obj.form in ("lambda_dce", "k_dce"):  # E[#masked / lambda] = n exactly (k_dce: every draw)
        return math.log(support)
    if obj.form in ("nelbo", "t_dce"):
        value = clean_fraction_weight(obj.schedule, obj.t_min, 1.0) * math.log(support)
        return value + (t_dce_offset(obj.schedule, obj.t_min) if obj.form == "t_dce" else 0.0)
    pytest.fail(f"MaskedDiffusionLoss form={obj.form!r} has no uniform-denoiser expectation in this test: add it")


def masked_oracle_expectation(obj: MaskedDiffusionLoss) -> float | None:
    # t-DCE = NELBO + a parameter-free term (RADD Eq. 3.5) that is not 0 per draw, only in expectation
    # over t (and exactly 0 only for t_min = 0): an oracle's t-DCE loss is that term alone.
    return t_dce_offset(obj.schedule, obj.t_min) if obj.form == "t_dce" else None


def block_expectation(obj: BlockDiffusionLoss, support: int) -> float:
    if obj.resample and (obj.t_min > 1e-3 or obj.t_max < 1.0):
        pytest.fail("BlockDiffusionLoss(resample=True) on a clipped interval changes the masking law: "
                    "add its uniform-denoiser expectation to this test")
    return clean_fraction_weight(obj.schedule, obj.t_min, obj.t_max) * math.log(support)


def block_tiny(obj: BlockDiffusionLoss) -> list[nn.Module]:
    # the objective runs [x_t ; x_0]: 2L tokens; the model's block size is the objective's
    return [tiny(attention="block_causal", block_size=obj.block_size, max_seq_len=2 * L, time_conditioned=tc)
            for tc in (False, True)]


def classifier_tiny(obj) -> list[nn.Module]:
    torch.manual_seed(0)
    clf = SequenceClassifier(vocab_size=V, mask_id=MASK, n_classes=C, dim=16, n_layers=1, n_heads=2, max_seq_len=L,
                             attn_backend="sdpa")
    nn.init.normal_(clf.head.weight, std=0.5)  # the head starts at zero: gradients would not reach the body
    return [clf]


CASES: dict[type, Case] = {
    MaskedDiffusionLoss: Case(
        batch=token_batch,
        oracle=lambda b, off: OracleDenoiser(shifted(b["input_ids"]) if off else b["input_ids"], V, MASK),
        uniform=lambda k: UniformDenoiser(k, V, MASK),
        expected_uniform=masked_expectation,
        tiny_models=lambda obj: [tiny(max_seq_len=L, time_conditioned=tc) for tc in (False, True)],
        oracle_expectation=masked_oracle_expectation,
    ),
    AutoregressiveLoss: Case(
        batch=token_batch,
        oracle=lambda b, off: NextTokenOracle(shifted(b["input_ids"]) if off else b["input_ids"], V, MASK),
        uniform=lambda k: CausalUniform(k, V, MASK),
        expected_uniform=lambda obj, k: math.log(k),  # every next token costs log K: no variance at all
        tiny_models=lambda obj: [tiny(max_seq_len=L, attention="causal")],
    ),
    BlockDiffusionLoss: Case(
        batch=token_batch,
        # shift_logits: the oracle reads token i at output i - 1, as the objective does
        oracle=lambda b, off: BlockOracle(shifted(b["input_ids"]) if off else b["input_ids"], False,
                                          vocab_size=V, mask_id=MASK),
        uniform=lambda k: Uniform(k, V, MASK),
        expected_uniform=block_expectation,
        tiny_models=block_tiny,
    ),
    # A classifier predicts classes, not tokens: its oracle knows the label, its "uniform denoiser" is
    # uniform over the C classes and costs log C per labelled sequence (num_tokens counts sequences);
    # the support of the negative control is C + 1 classes.
    NoisyClassifierLoss: Case(
        batch=labelled_batch,
        oracle=lambda b, off: OracleClassifier((b["labels"] + 1) % C if off else b["labels"], C, V, MASK),
        uniform=lambda k: UniformClassifier(k, V, MASK),
        expected_uniform=lambda obj, k: math.log(k),
        tiny_models=classifier_tiny,
    ),
}
SUPPORT = {NoisyClassifierLoss: C}  # the uniform model's support size (default K tokens)


def case_for(name: str, objective) -> Case:
    case = CASES.get(type(objective))
    if case is None:
        cls = f"{type(objective).__module__}.{type(objective).__qualname__}"
        pytest.fail(f"conf/objective/{name}.yaml builds {cls}, which has no contract case: add one to CASES in "
                    f"{Path(__file__).name} (batch, oracle, uniform model and its expected loss, tiny model)")
    return case


def oracle_for(case: Case, objective, batch, off_by_one: bool) -> nn.Module:
    model = case.oracle(batch, off_by_one)
    if isinstance(objective, BlockDiffusionLoss) and objective.shift_logits:
        model.shifted = True
    return model


# ---------------------------------------------------------------- the contract
def test_every_objective_config_is_found():
    assert {"mdlm", "radd", "ar", "block", "block_sft", "noisy_classifier"} <= set(OBJECTIVES)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_oracle_denoiser_gives_zero_loss(name):
    objective = build(name)
    case = case_for(name, objective)
    in_expectation = case.oracle_expectation(objective)
    if in_expectation is not None:
        assert abs(in_expectation) < 0.01
        vals = torch.tensor([oracle_loss(objective, case, s) for s in range(REPEATS)], dtype=torch.float64)
        ok, msg = within_3_se(vals, in_expectation)
        assert ok, f"{name}: an oracle's loss must be 0 up to the parameter-free term: {msg}"
    for seed in range(3):
        batch = case.batch(seed, MASK)
        out = objective(oracle_for(case, objective, batch, False), batch, torch.Generator().manual_seed(seed))
        assert out.num_tokens.item() > 0
        if in_expectation is None:
            assert abs(out.loss.item()) <= 1e-6, f"{name}: an oracle denoiser must cost 0, got {out.loss.item()}"
        # negative control: every target off by one token costs ~1e4 nats wherever something is scored
        wrong = objective(oracle_for(case, objective, batch, True), batch, torch.Generator().manual_seed(seed))
        assert wrong.loss.item() > 1.0, f"{name}: an off-by-one oracle must not cost 0 (nothing scored?)"


def oracle_loss(objective, case: Case, seed: int) -> float:
    batch = case.batch(seed, MASK)
    return objective(oracle_for(case, objective, batch, False), batch, torch.Generator().manual_seed(seed)).loss.item()


def uniform_losses(objective, case: Case, support: int, data_support: int) -> Tensor:
    model = case.uniform(support)
    return torch.tensor([objective(model, case.batch(s, data_support), torch.Generator().manual_seed(s)).loss.item()
                         for s in range(REPEATS)], dtype=torch.float64)


def within_3_se(vals: Tensor, expected: float) -> tuple[bool, str]:
    mean, se = vals.mean().item(), (vals.std() / math.sqrt(len(vals))).item()
    # no variance (AR, k_dce, classifier): exact up to float32 rounding
    ok = abs(mean - expected) <= max(3 * se, 1e-5 * abs(expected))
    return ok, f"mean {mean:.5f} vs expected {expected:.5f} (3 SE = {3 * se:.5f}, {len(vals)} batches)"


@pytest.mark.parametrize("name", OBJECTIVES)
def test_uniform_denoiser_costs_log_k_per_target_in_expectation(name):
    objective = build(name)
    case = case_for(name, objective)
    k = SUPPORT.get(type(objective), K)
    expected = case.expected_uniform(objective, k)
    assert abs(expected - math.log(k)) < 0.01 * math.log(k), "the expectation must stay log K up to small terms"
    ok, msg = within_3_se(uniform_losses(objective, case, k, k), expected)
    assert ok, f"{name}: uniform over {k}: {msg}"
    # negative control: the check has the power to tell log(K + 1) from log K
    ok, msg = within_3_se(uniform_losses(objective, case, k + 1, k), expected)
    assert not ok, f"{name}: a denoiser uniform over {k + 1} passed as uniform over {k}: {msg}"


@pytest.mark.parametrize("name", OBJECTIVES)
def test_tiny_model_gets_finite_gradients(name):
    objective = build(name)
    case = case_for(name, objective)
    for model in case.tiny_models(objective):
        batch = case.batch(0, MASK)
        out = objective(model.train(), batch, torch.Generator().manual_seed(0))
        assert torch.isfinite(out.loss), f"{name}: loss {out.loss.item()}"
        out.loss.backward()
        assert not nonfinite_grads(model), f"{name}: non-finite gradients in {nonfinite_grads(model)}"
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"{name}: no gradient reached the model"
        # negative control: a poisoned weight must show up as non-finite gradients
        model.zero_grad()
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        objective(model, batch, torch.Generator().manual_seed(0)).loss.backward()
        assert nonfinite_grads(model), f"{name}: a NaN weight went unnoticed"


def test_an_objective_without_a_case_fails_with_a_clear_message():
    class NewLoss:
        pass

    with pytest.raises(pytest.fail.Exception, match="has no contract case: add one to CASES"):
        case_for("new", NewLoss())
