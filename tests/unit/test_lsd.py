"""LSD / LSD+ (issue 12): the schedule, the student sampler, the loss and the frozen-model recipe.

Each test names the mistake it catches. The enumerable toy (exact laws, TV numbers) is in test_lsd_toy.py,
the command line (dlm-train / dlm-sample) in test_lsd_cli.py.
"""

from __future__ import annotations

import pytest
import torch
from mocks import ExactDenoiser, RandomDenoiser
from test_samplers_law import correlated_joint

from dlm.errors import CheckpointError, ConfigError
from dlm.io.schedule_dir import denoiser_fingerprint, save_schedule_dir
from dlm.models.transformer import Transformer
from dlm.objectives.lsd import LSDLoss
from dlm.samplers.ancestral import AncestralSampler
from dlm.samplers.learned_schedule import LearnedScheduleSampler, StepSchedule, load_step_schedule
from dlm.samplers.timesteps import check_timesteps

V, MASK, L, B = 5, 4, 8, 16


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def frozen(model):
    return model.requires_grad_(False).eval()


def transformer(*, time_conditioned: bool) -> Transformer:
    torch.manual_seed(0)
    return frozen(Transformer(vocab_size=V, mask_id=MASK, dim=16, n_layers=1, n_heads=2, max_seq_len=L,
                              time_conditioned=time_conditioned, init_std=0.5))


MODELS = {"random": lambda: frozen(RandomDenoiser(L, V, MASK, seed=1)),
          "random_t": lambda: frozen(RandomDenoiser(L, V, MASK, seed=2, time_conditioned=True)),
          "transformer_t": lambda: transformer(time_conditioned=True)}


def start(batch: int = B) -> torch.Tensor:
    x = torch.full((batch, L), MASK)
    x[:, 0] = 1  # a fixed first token, like BOS
    return x


# ------------------------------------------------------------------ identity at init
@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize(("num_steps", "learn_grid", "row_cache"), [(1, True, "none"), (3, True, "row"),
                                                                   (8, False, "none"), (8, True, "row")])
def test_identity_schedule_gives_the_base_samplers_samples_bit_for_bit(model_name, num_steps, learn_grid, row_cache):
    # fails if the init grid is 1 - cumsum(Delta) (last-bit differences from linspace move a reveal) or if
    # c = kappa = 1 are applied in a way that changes a logit or psi
    model = MODELS[model_name]()
    base = AncestralSampler(num_steps=num_steps, row_cache=row_cache)
    student = LearnedScheduleSampler(schedule=StepSchedule(num_steps, learn_grid=learn_grid), row_cache=row_cache)
    assert torch.equal(student.timesteps, base.timesteps)
    for seed in range(3):
        a = base(model, batch_size=B, length=L, prompt=torch.tensor([1]), generator=gen(seed))
        b = student(model, batch_size=B, length=L, prompt=torch.tensor([1]), generator=gen(seed))
        assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe


# ------------------------------------------------------------------ LSD+ grid
@pytest.mark.parametrize("t_min", [0.0, 1e-3, 0.2])
@pytest.mark.parametrize("num_steps", [1, 2, 8, 64])
def test_learned_grid_has_positive_steps_summing_to_the_horizon(t_min, num_steps):
    steps = StepSchedule(num_steps, learn_grid=True, t_min=t_min)
    g = gen(num_steps)
    for scale in (0.1, 1.0, 4.0):
        with torch.no_grad():
            steps.grid_logits.copy_(torch.randn(num_steps, generator=g, dtype=torch.float64) * scale)
        delta, t = steps.deltas(), steps.timesteps()
        assert (delta > 0).all() and abs(float(delta.sum().detach()) - (1 - t_min)) < 1e-12
        assert t[0] == 1.0 and t[-1] == t_min and (t[1:] < t[:-1]).all()
        assert torch.allclose(t[1:], 1 - torch.cumsum(delta, 0), atol=1e-12, rtol=0)  # t_n = 1 - sum_{k<n} Delta_k
        check_timesteps(t)  # the sampler accepts it
        LearnedScheduleSampler(schedule=steps)


# ------------------------------------------------------------------ the loss
def public_code_loss(teacher_probs: torch.Tensor, student_log_probs: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """feiyangfu/LSD ``compute_loss`` as written (research note §1.5): softmax of the teacher's transition
    *probabilities*, softmax of the student's log-scores, and -sum q log(q + eps) / (y + eps), which is no
    divergence. Kept as the negative control of the zero-at-equality check."""
    y = teacher_probs.softmax(-1)
    q = student_log_probs.softmax(-1)
    return -(q * torch.log(q + eps) / (y + eps)).sum()


@pytest.mark.parametrize(("model_name", "learn_grid"), [("random", False), ("random_t", True), ("transformer_t", True)])
def test_loss_is_zero_when_the_teacher_takes_the_students_steps_and_nonnegative_otherwise(model_name, learn_grid):
    model = MODELS[model_name]()
    for num_steps in (1, 4):
        same = LSDLoss(num_steps=num_steps, teacher_steps=num_steps, learn_grid=learn_grid)
        out = same(model, same.make_schedule(), start(), generator=gen(1))
        assert abs(float(out.loss.detach())) < 1e-6, out.per_step  # identical transition laws: KL 0
        many = LSDLoss(num_steps=num_steps, teacher_steps=8 * num_steps, learn_grid=learn_grid)
        out = many(model, many.make_schedule(), start(), generator=gen(1))
        assert (out.per_step >= -1e-9).all() and float(out.loss.detach()) > 1e-4  # a real teacher differs: KL > 0

    # negative control: on the same equal transition laws the public code's formula is far from 0
    x = start()
    t = torch.ones(B)
    log_p = same.step.x0_log_probs(model, x, t)  # (B, L, V)
    psi = 0.25
    trans = torch.cat([psi * log_p.exp()[..., :MASK], torch.full((B, L, 1), 1 - psi)], -1)  # (V+1)-way, mask last
    public = public_code_loss(trans, trans.log())
    assert abs(float(public)) > 1.0, "the public formula would pass the zero-at-equality check"


@pytest.mark.parametrize("teacher_state", ["student", "teacher"])
@pytest.mark.parametrize("model_name", ["random", "transformer_t"])
def test_step_n_loss_depends_on_c_n_only(teacher_state, model_name):
    # fails if a step's distribution reads another step's scale or gradients flow through sampled states
    model = MODELS[model_name]()
    loss = LSDLoss(num_steps=4, teacher_steps=32, teacher_state=teacher_state, learn_grid=True)
    steps = loss.make_schedule()
    out = loss(model, steps, start(), generator=gen(2))
    for n in range(4):
        (grad,) = torch.autograd.grad(out.per_step[n], steps.log_logit_scales, retain_graph=True)
        others = torch.cat([grad[:n], grad[n + 1:]])
        assert (others == 0).all(), (n, grad)
        assert grad[n].abs() > 1e-6, (n, grad)


def test_stay_mass_is_exact_so_kappa_is_stationary_and_a_time_free_grid_learns_from_the_factorisation_term():
    # the teacher's stay-masked mass telescopes to the student's 1 - psi (reveal clocks do not depend on the
    # network), so at kappa = 1 dL_n/dkappa = 0 for any denoiser and dL_n/du = 0 without time conditioning; fails
    # if the substep grid does not tile the student's interval or the stay mass is estimated by sampling.
    # The grid of a time-free model learns from the factorisation term alone (factorisation_bound=False: not at all)
    for name, time_conditioned in (("random", False), ("random_t", True)):
        for bound in (False, True):
            loss = LSDLoss(num_steps=4, teacher_steps=32, learn_grid=True, learn_rates=True, factorisation_bound=bound,
                           curve_rows=8)
            steps = loss.make_schedule()
            out = loss(MODELS[name](), steps, start(), generator=gen(3))
            (kl_grad,) = torch.autograd.grad(out.per_step.sum(), steps.grid_logits, retain_graph=True)
            out.loss.backward()
            assert steps.log_rate_scales.grad.abs().max() < 1e-9
            assert steps.log_logit_scales.grad.abs().max() > 1e-4
            assert (kl_grad.abs().max() > 1e-6) == time_conditioned, kl_grad
            assert (steps.grid_logits.grad.abs().max() > 1e-6) == (time_conditioned or bound)
            assert ("factorisation_excess" in out.metrics) == bound


class Flattened(ExactDenoiser):
    """Exact logits times 1 - 0.8 t: too flat at high noise, an inconsistency across times LSD can correct.
    (A constant factor is not enough: tempered conditionals stay nearly consistent and the gradient vanishes.)"""

    time_conditioned = True

    def forward(self, xt, t=None, **kwargs):
        return super().forward(xt) * (1 - 0.8 * t.float())[:, None, None]


def test_exact_denoiser_leaves_nothing_to_learn():
    # the martingale property: with exact conditionals the teacher composite's per-position law is the
    # student's own at c = 1, so the expected gradient in c vanishes (the loss *value* keeps a positive floor:
    # it is the KL from a one-path estimate, whose gradient, not value, is unbiased). Fails if the teacher's
    # token law were biased, e.g. taken at the interval's end state for every position.
    joint = correlated_joint()  # 3 real tokens, L=3 (test_samplers_law's joint), mask id 3
    x = torch.full((4096, 3), 3)
    grads = {}
    for name, model in (("exact", frozen(ExactDenoiser(joint))), ("flattened", frozen(Flattened(joint)))):
        loss = LSDLoss(num_steps=2, teacher_steps=32)
        steps = loss.make_schedule()
        loss(model, steps, x, generator=gen(4)).loss.backward()
        grads[name] = steps.log_logit_scales.grad.norm()
    assert grads["exact"] < 0.1 * grads["flattened"], grads  # measured: ~0.002 (Monte-Carlo noise) vs ~0.09


# ------------------------------------------------------------------ refusals, directories, fingerprints
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_steps": 0}, "objective.num_steps=0 must be a positive integer"),
    ({"num_steps": 8, "teacher_steps": 4}, "objective.teacher_steps=4 is fewer than objective.num_steps=8"),
    ({"num_steps": 8, "teacher_steps": 100}, "objective.teacher_steps=100 is not a multiple of objective.num_steps=8"),
    ({"teacher_state": "own"}, "objective.teacher_state='own'"),
    ({"learn_grid": True, "curve_rows": 0}, "objective.curve_rows=0 must be a positive integer"),
])
def test_bad_objective_settings_are_refused_naming_the_key(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LSDLoss(**kwargs)


def saved(tmp_path, model, *, num_steps=4, learn_grid=False):
    steps = StepSchedule(num_steps, learn_grid=learn_grid)
    with torch.no_grad():
        steps.log_logit_scales.copy_(torch.linspace(-0.3, 0.3, num_steps, dtype=torch.float64))
    meta = {"num_steps": num_steps, "learn_grid": learn_grid, "t_min": 0.0, "fingerprint": denoiser_fingerprint(model),
            "noise_schedule": {"_target_": "dlm.diffusion.schedule.LogLinearSchedule"}, **steps.describe()}
    return save_schedule_dir(tmp_path / "schedule", state=steps.state_dict(), meta=meta), steps


def test_schedule_directory_round_trips_and_refuses_other_models_and_step_counts(tmp_path):
    model = MODELS["random"]()
    path, steps = saved(tmp_path, model)
    loaded = load_step_schedule(path)
    assert torch.equal(loaded.logit_scales(), steps.logit_scales()) and loaded.trained_for.fingerprint
    sampler = LearnedScheduleSampler(schedule=loaded, num_steps=4, learn_grid=False)
    a = sampler(model, batch_size=B, length=L, generator=gen(5)).tokens
    b = LearnedScheduleSampler(schedule=steps)(model, batch_size=B, length=L, generator=gen(5)).tokens
    assert torch.equal(a, b)

    other = MODELS["random_t"]()
    with pytest.raises(ConfigError, match=f"fingerprint {denoiser_fingerprint(model)}.*model= has fingerprint "
                                          f"{denoiser_fingerprint(other)}"):
        sampler(other, batch_size=2, length=L)
    with pytest.raises(ConfigError, match="sampler.num_steps=8 but .* was trained for 4 steps"):
        LearnedScheduleSampler(schedule=loaded, num_steps=8)
    with pytest.raises(ConfigError, match="trained as lsd .*use sampler=lsd"):
        LearnedScheduleSampler(schedule=loaded, learn_grid=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_step_schedule(tmp_path / "nowhere")


def test_fingerprint_changes_with_any_weight():
    model = MODELS["random"]()
    before = denoiser_fingerprint(model)
    assert denoiser_fingerprint(MODELS["random"]()) == before  # a reload agrees
    with torch.no_grad():
        model.w2[0, 0] += 1e-6
    assert denoiser_fingerprint(model) != before
