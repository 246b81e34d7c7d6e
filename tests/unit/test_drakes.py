"""DRAKES (issue 13): the relaxed rollout, the KL estimators and the objective, each test naming the mistake it
catches. The enumerable toy (exact path KL) is at the end; the command line is in test_drakes_cli.py; the
reward-vs-diversity claim on a trained base model in tests/integration/test_drakes_claims.py.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from mocks import ExactDenoiser, MockDenoiser
from torch import nn

from dlm.errors import ConfigError
from dlm.models.transformer import Transformer
from dlm.objectives.drakes import DrakesLoss
from dlm.objectives.drakes_rollout import RelaxedRollout
from dlm.rewards.toy import GCContent
from dlm.samplers.ancestral import AncestralSampler
from dlm.samplers.categorical import TokenSampling
from dlm.samplers.joint import JointReferenceSampler, joint_draw

V, MASK, L, B = 8, 7, 10, 6  # the DNA vocabulary: A C G T [PAD] [BOS] [EOS] [MASK]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class SoftMLP(MockDenoiser):
    """A fixed random function of the whole canvas, ids (B, L) or probabilities (B, L, V) -> logits (B, L, V):
    arbitrary conditionals (no joint behind them), differentiable in its soft input."""

    def __init__(self, length: int = L, vocab_size: int = V, mask_id: int = MASK, *, seed: int = 0,
                 time_conditioned: bool = False) -> None:
        super().__init__()
        g = gen(seed)
        self.vocab_size, self.mask_id, self.length = vocab_size, mask_id, length
        self.time_conditioned = time_conditioned
        self.w1 = nn.Parameter(torch.randn(length * vocab_size + 1, 32, generator=g))
        self.w2 = nn.Parameter(torch.randn(32, length * vocab_size, generator=g))

    def forward(self, x, t=None, **_):
        probs = x if x.is_floating_point() else F.one_hot(x, self.vocab_size).float()
        b = probs.shape[0]
        tt = t.reshape(b, 1).float() if (self.time_conditioned and t is not None) else torch.zeros(b, 1)
        h = torch.tanh(torch.cat([probs.reshape(b, -1), tt], -1) @ self.w1)
        return (h @ self.w2).reshape(b, self.length, self.vocab_size)


def transformer(seed: int = 0, time_conditioned: bool = True) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(vocab_size=V, mask_id=MASK, dim=16, n_layers=1, n_heads=2, max_seq_len=L,
                       time_conditioned=time_conditioned, init_std=0.5)


MODELS = {"mlp": lambda: SoftMLP(seed=1), "mlp_t": lambda: SoftMLP(seed=2, time_conditioned=True),
          "transformer_t": lambda: transformer()}


def frozen(model):
    return copy.deepcopy(model).requires_grad_(False).eval()


def perturbed(model, scale: float = 0.3, seed: int = 5):
    """A fine-tuned stand-in: the model's weights plus noise."""
    out = copy.deepcopy(model)
    g = gen(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return out


def start(batch: int = B, prompt: bool = True) -> torch.Tensor:
    x = torch.full((batch, L), MASK)
    if prompt:
        x[:, 0] = 5  # BOS
    return x


def rollout(num_steps: int, truncate_steps: int, **kw) -> RelaxedRollout:
    return DrakesLoss(num_steps=num_steps, truncate_steps=truncate_steps, **kw).rollout()


# ------------------------------------------------------------------ the hard path is the base sampler
@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("num_steps", [1, 4, 16])
@pytest.mark.parametrize("prompt", [True, False])
def test_k0_gives_the_base_ancestral_samplers_tokens_bit_for_bit(model_name, num_steps, prompt):
    # fails if the hard steps draw their reveals or tokens in another order or precision than AncestralSampler
    # (e.g. a joint (V+1)-way draw, float32 Gumbel noise) or skip the last step's reveal-all
    model = MODELS[model_name]()
    base = AncestralSampler(num_steps=num_steps)
    for seed in range(3):
        out = rollout(num_steps, 0)(model, frozen(model), start(prompt=prompt), generator=gen(seed))
        ref = base(model, batch_size=B, length=L, prompt=torch.tensor([5]) if prompt else None, generator=gen(seed))
        assert torch.equal(out.tokens, ref.tokens)
        assert not out.x0.requires_grad and torch.equal(out.x0, F.one_hot(ref.tokens, V).float())


@pytest.mark.parametrize(("num_steps", "k"), [(8, 3), (8, 7), (16, 1)])
def test_the_hard_prefix_is_the_base_samplers_trajectory(num_steps, k):
    # fails if the K relaxed steps are not the *last* K or the prefix consumes other random numbers
    model = SoftMLP(seed=3)
    out = rollout(num_steps, k)(model, frozen(model), start(), generator=gen(4))
    ref = AncestralSampler(num_steps=num_steps, record_trajectory=True)(
        model, batch_size=B, length=L, prompt=torch.tensor([5]), generator=gen(4))
    assert len(out.hard_states) == num_steps - k and len(out.states) == k + 1
    assert torch.equal(out.states[0].argmax(-1), ref.trajectory[num_steps - k - 1])
    assert torch.equal(out.states[0], F.one_hot(ref.trajectory[num_steps - k - 1], V).float())


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_tau_to_zero_relaxed_states_argmax_to_the_hard_joint_path_under_the_same_noise(model_name):
    # fails if the relaxed transition is not the MDLM posterior (psi p(v), 1 - psi stay), the Gumbel noise is
    # drawn in another shape/order, or the soft carry moves unmasked positions
    model, num_steps = MODELS[model_name](), 6
    for seed in range(4):
        out = rollout(num_steps, num_steps, gumbel_temp=1e-4)(model, frozen(model), start(), generator=gen(seed))
        g, x, tokens = gen(seed), start(), TokenSampling()
        grid = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
        for i in range(num_steps):
            t = grid[i].expand(B).float() if model.time_conditioned else None
            psi = torch.tensor(1.0, dtype=torch.float64) if i == num_steps - 1 else (grid[i] - grid[i + 1]) / grid[i]
            with torch.no_grad():
                x = joint_draw(tokens.log_probs(model(x, t), MASK), x, psi, MASK, generator=g,
                               sampling_precision="float64")
            assert torch.equal(out.states[i + 1].argmax(-1), x), (seed, i)
        assert torch.equal(out.tokens, x)
    # the relaxed KL terms are those of the states each step leaves (checked against the hard joint path)
    ref = frozen(perturbed(model, 0.4))
    out = rollout(num_steps, num_steps, gumbel_temp=1e-4)(model, ref, start(), generator=gen(9))
    g, x, grid = gen(9), start(), torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    for i in range(num_steps):
        t = grid[i].expand(B).float() if model.time_conditioned else None
        psi = torch.tensor(1.0, dtype=torch.float64) if i == num_steps - 1 else (grid[i] - grid[i + 1]) / grid[i]
        with torch.no_grad():
            lp, lq = tokens.log_probs(model(x, t), MASK), tokens.log_probs(ref(x, t), MASK)
            kl = (lp.exp() * (lp - lq).nan_to_num(0.0)).sum(-1)
            expected = ((x == MASK) * kl).sum(-1) * float(psi)
            x = joint_draw(lp, x, psi, MASK, generator=g, sampling_precision="float64")
        assert torch.allclose(out.kl_steps_exact[i], expected, rtol=1e-4, atol=1e-6), i
    # and the library's own joint sampler, one row at a time (it stops drawing once a row is complete)
    for seed in range(3):
        one = rollout(num_steps, num_steps, gumbel_temp=1e-4)(model, frozen(model), start(1), generator=gen(seed))
        ref = JointReferenceSampler(num_steps=num_steps, sampling_precision="float64")(
            model, batch_size=1, length=L, prompt=torch.tensor([5]), generator=gen(seed))
        assert torch.equal(one.tokens, ref.tokens)


# ------------------------------------------------------------------ straight-through x0 and gradients
def test_straight_through_x0_is_exactly_one_hot_and_its_reward_is_the_reward_of_the_argmax():
    # fails if x0 is the soft state (reward of a blend), if the mask column can win, or if the gradient is cut
    model = transformer(time_conditioned=False)
    out = rollout(8, 4)(model, frozen(model), start(), generator=gen(0))
    x0 = out.x0
    assert x0.requires_grad
    assert set(x0.detach().unique().tolist()) <= {0.0, 1.0} and torch.equal(x0.detach().sum(-1), torch.ones(B, L))
    assert not x0.detach()[..., MASK].any()
    assert torch.equal(out.tokens, x0.detach().argmax(-1))
    reward = GCContent()
    r = reward(x0[:, 1:])
    assert torch.equal(r.detach(), reward(F.one_hot(out.tokens[:, 1:], V).float()))
    assert not torch.equal(out.states[-1], x0.detach())  # the forward value is not the soft state ...
    r.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0  # ... but its gradient is


@pytest.mark.parametrize("straight_through", [False, True])
def test_relaxed_states_stay_on_the_simplex_and_clean_positions_never_move(straight_through):
    # fails if the soft carry leaks letter mass into the mask channel (DRAKES' (1 - m) x + m z) or ends with mask mass
    model = SoftMLP(seed=7)
    out = rollout(8, 8, straight_through=straight_through)(model, frozen(model), start(), generator=gen(1))
    for before, after in itertools.pairwise(out.states):
        assert torch.allclose(after.sum(-1), torch.ones(B, L), atol=1e-5) and (after >= -1e-7).all()
        clean = before[..., MASK] == 0
        assert torch.equal(after[clean], before[clean])
    assert out.states[-1][..., MASK].abs().max() < 1e-6  # the last step (psi = 1) leaves no mask mass


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    # fails if the checkpointed recomputation draws new Gumbel noise or drops the KL's graph
    base = transformer(time_conditioned=True)
    ref = frozen(base)
    grads = []
    for ckpt in (False, True):
        model = perturbed(base)
        loss = DrakesLoss(num_steps=6, truncate_steps=3, alpha=0.5, checkpoint_steps=ckpt)
        out = loss(model, ref, GCContent(), batch_size=4, length=L, prompt=torch.tensor([5]), generator=gen(2))
        out.loss.backward()
        grads.append((out.loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_k0_reward_carries_no_gradient_and_alpha_zero_needs_no_kl_graph():
    # fails if the hard (no_grad) steps leak a graph into the reward, or alpha = 0 still builds the KL's graph
    model = SoftMLP(seed=1)
    out = DrakesLoss(num_steps=4, truncate_steps=0, alpha=0.0)(model, frozen(model), GCContent(), batch_size=B,
                                                               length=L, prompt=torch.tensor([5]), generator=gen(0))
    assert not out.loss.requires_grad and not out.rollout.kl_exact.requires_grad
    out = DrakesLoss(num_steps=4, truncate_steps=0, alpha=1.0)(perturbed(model), frozen(model), GCContent(),
                                                               batch_size=B, length=L, prompt=torch.tensor([5]),
                                                               generator=gen(0))
    assert out.loss.requires_grad  # only the KL term


def test_alpha_warms_up_linearly():
    loss = DrakesLoss(num_steps=4, truncate_steps=2, alpha=0.1, alpha_warmup_steps=10)
    assert [loss.alpha_at(s) for s in (0, 5, 10, 50)] == pytest.approx([0.0, 0.05, 0.1, 0.1])
    assert DrakesLoss(num_steps=4, truncate_steps=2, alpha=0.1).alpha_at(0) == 0.1


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"truncate_steps": 9}, r"objective.truncate_steps=9 must be an integer in \[0, 8\]"),
    ({"truncate_steps": -1}, "objective.truncate_steps=-1"),
    ({"gumbel_temp": 0.0}, "objective.gumbel_temp=0.0 must be > 0"),
    ({"alpha": -1.0}, "objective.alpha=-1.0 must be >= 0"),
    ({"kl_estimator": "repo"}, "objective.kl_estimator='repo'; valid: exact"),
    ({"alpha_warmup_steps": -3}, "objective.alpha_warmup_steps=-3"),
])
def test_bad_settings_are_refused_naming_the_key(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DrakesLoss(**{"num_steps": 8, "truncate_steps": 4, **kwargs})


# ------------------------------------------------------------------ KL
@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("k", [0, 3, 6])
def test_kl_is_exactly_zero_for_identical_models_at_every_step(model_name, k):
    # fails if the two transitions are evaluated on different states or times, or the stay mass is mis-weighted
    model = MODELS[model_name]()
    out = rollout(6, k)(model, frozen(model), start(), generator=gen(3))
    assert out.kl_steps_exact.shape == (6, B)
    assert torch.equal(out.kl_steps_exact, torch.zeros(6, B)) and torch.equal(out.kl_steps_public, torch.zeros(6, B))


def test_public_estimator_is_zero_on_hard_states_while_the_exact_one_is_not():
    # the documented negative control (notes §2.5): DRAKES' code weights its integrand by the *unmasked* flag and
    # the current token, where SUBS makes both models the same one-hot; only relaxed states leak a value
    base = SoftMLP(seed=4)
    tuned, ref = perturbed(base, 0.5), frozen(base)
    hard = rollout(8, 0)(tuned, ref, start(), generator=gen(0))
    assert torch.equal(hard.kl_steps_public, torch.zeros(8, B))
    assert (hard.kl_exact > 0).all()
    relaxed = rollout(8, 4)(tuned, ref, start(), generator=gen(0))
    assert torch.equal(relaxed.kl_steps_public[:4], torch.zeros(4, B))  # the hard prefix
    assert (relaxed.kl_steps_public[4:] != 0).any()  # Gumbel-softmax leakage on soft states
    assert (relaxed.kl_steps_exact[:4].sum(0) > 0).all()


def test_truncate_kl_keeps_only_the_relaxed_steps():
    base = SoftMLP(seed=4)
    full = rollout(8, 3)(perturbed(base), frozen(base), start(), generator=gen(0))
    cut = rollout(8, 3, truncate_kl=True)(perturbed(base), frozen(base), start(), generator=gen(0))
    assert cut.kl_steps_exact.shape == (3, B)
    assert torch.allclose(cut.kl_steps_exact, full.kl_steps_exact[5:])


# ------------------------------------------------------------------ enumerable toy: L = 3, two letters
TOY_L, TOY_STEPS = 3, 3
TOY_MASK = 2


def toy_joint(seed: int) -> torch.Tensor:
    p = torch.rand((2,) * TOY_L, generator=gen(seed), dtype=torch.float64) ** 3 + 0.02
    return p / p.sum()


def toy_step_law(model: ExactDenoiser, x: tuple[int, ...], psi: float) -> dict[tuple[int, ...], float]:
    """P(next state | x) of one ancestral step, enumerated: each masked position stays w.p. 1 - psi or becomes
    letter v w.p. psi p(v | x) independently (the law every dlm masked sampler draws)."""
    with torch.no_grad():
        p = model(torch.tensor([x])).double().softmax(-1)[0]  # (L, 3); the mask column is at -1e9
    options = []
    for pos, tok in enumerate(x):
        if tok != TOY_MASK:
            options.append([(tok, 1.0)])
        else:
            options.append([(TOY_MASK, 1.0 - psi)] + [(v, psi * float(p[pos, v])) for v in range(2)])
    law: dict[tuple[int, ...], float] = {}
    for combo in itertools.product(*options):
        prob = math.prod(q for _, q in combo)
        if prob > 0:
            key = tuple(v for v, _ in combo)
            law[key] = law.get(key, 0.0) + prob
    return law


def exact_path_kl(tuned: ExactDenoiser, ref: ExactDenoiser) -> float:
    """KL(P_tuned(x_{0:N}) || P_ref(x_{0:N})) = sum over every trajectory of P log(P / P_ref), trajectories
    enumerated from all-mask (no per-step decomposition is assumed)."""
    grid = [1 - i / TOY_STEPS for i in range(TOY_STEPS + 1)]

    def walk(i: int, x: tuple[int, ...], p: float, q: float) -> float:
        if i == TOY_STEPS:
            return p * math.log(p / q)
        psi = 1.0 if i == TOY_STEPS - 1 else (grid[i] - grid[i + 1]) / grid[i]
        law_p, law_q = toy_step_law(tuned, x, psi), toy_step_law(ref, x, psi)
        return sum(walk(i + 1, y, p * py, q * law_q[y]) for y, py in law_p.items())

    return walk(0, (TOY_MASK,) * TOY_L, 1.0, 1.0)


def test_kl_estimator_is_unbiased_for_the_exact_path_kl_on_an_enumerable_toy():
    # fails if a step's KL lacks the psi weight, counts unmasked positions, uses the reverse direction, or is
    # evaluated on another state than the one the step leaves; the public estimator is the negative control
    tuned, ref = ExactDenoiser(toy_joint(1)), ExactDenoiser(toy_joint(2))
    exact = exact_path_kl(tuned, ref)
    n = 20_000
    out = DrakesLoss(num_steps=TOY_STEPS, truncate_steps=0).rollout()(tuned, ref, torch.full((n, TOY_L), TOY_MASK),
                                                                      generator=gen(0))
    kl = out.kl_exact.double()
    mean, se = float(kl.mean()), float(kl.std() / math.sqrt(n))
    assert exact > 0.05
    assert abs(mean - exact) < 3 * se, (mean, exact, se)
    # the test has power: the reverse-direction per-step KL on the same trajectories is far outside the band
    swapped = DrakesLoss(num_steps=TOY_STEPS, truncate_steps=0).rollout()(ref, tuned, torch.full((n, TOY_L), TOY_MASK),
                                                                          generator=gen(0))
    assert abs(float(swapped.kl_exact.double().mean()) - exact) > 10 * se
    assert torch.equal(out.kl_public, torch.zeros(n))  # the public estimator: 0 although the path KL is not
