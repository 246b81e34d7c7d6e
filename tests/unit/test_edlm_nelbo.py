"""EDLM's energy-corrected NELBO (dlm.eval.energy_nelbo): coAR gives the AR model's exact NLL, E = 0 gives
MDLM's NELBO bit for bit, a constant energy cancels with its log Z, the log Z estimators' biases on a toy
with known Z, the documented failure of the joint integrand as a bound, and refusals of misplaced inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from mocks import BigramAR, ExactDenoiser, RandomDenoiser
from torch import Tensor, nn

from dlm.data.tokenizers.char import CharTokenizer
from dlm.errors import ConfigError
from dlm.eval.energy_nelbo import EnergyNELBO, log_z_estimates
from dlm.eval.model_dir import eval_ppl_model_dir
from dlm.eval.perplexity import ExactNLL, MaskedNELBO
from dlm.io.energy_dir import save_energy
from dlm.io.model_dir import save_model_dir
from dlm.io.record import Family
from dlm.io.spec import build
from dlm.models.energy import ARResidualEnergy

V, MASK, L = 7, 6, 8


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def data(rows: int = 4, seed: int = 1) -> dict[str, Tensor]:
    return {"input_ids": torch.randint(0, MASK, (rows, L), generator=gen(seed))}


class ConstantEnergy(nn.Module):
    """E = c for every input; ``exact_normaliser`` as declared (Z = exp(-c): exactly 1 only for c = 0)."""

    time_conditioned = False

    def __init__(self, c: float, *, exact_normaliser: bool) -> None:
        super().__init__()
        self.c, self.exact_normaliser, self.vocab_size, self.mask_id = c, exact_normaliser, V, MASK

    def forward(self, x0: Tensor, xt: Tensor, t: Tensor, proposal_log_probs: Tensor) -> Tensor:
        return torch.full((x0.shape[0],), self.c)


class Flipped(nn.Module):
    """-E of another energy: the sign error the coAR test must catch."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        for name in ("vocab_size", "mask_id", "time_conditioned", "exact_normaliser"):
            setattr(self, name, getattr(inner, name))

    def forward(self, *args) -> Tensor:
        return -self.inner(*args)


def within(estimate: Tensor, var: Tensor, exact: Tensor, k: float = 3.0) -> bool:
    return abs(estimate.sum().item() - exact.sum().item()) <= k * math.sqrt(var.sum().item())


@pytest.mark.parametrize("time_conditioned", [False, True], ids=["k_form", "t_form"])
def test_carry_over_ar_energy_gives_the_ar_models_exact_nll(time_conditioned):
    """coAR's kernel is exactly normalised and its integrand sum_{i masked} -log p_AR(x^i | x^{<i}) integrates
    to the AR NLL (weights n/k with k/n of the tokens masked; w(t)(1 - alpha) = 1 for the log-linear schedule)."""
    ar = BigramAR(V, MASK, seed=3)
    denoiser = RandomDenoiser(L, V, MASK, seed=2, time_conditioned=time_conditioned)
    coar = ARResidualEnergy(ar, carry_over=True, ar_softmax="without_mask")
    batch = data()
    scorer = EnergyNELBO(energy=coar, num_samples=64, keep_first_token=True)
    nll, var, n = scorer.per_sequence(denoiser, batch, gen())
    exact, _, exact_n = ExactNLL(ar_softmax="without_mask").per_sequence(ar, batch)
    assert torch.equal(n, exact_n)  # the same targets: positions 1..L-1
    assert within(nll, var, exact), (nll.sum().item(), exact.sum().item(), var.sum().sqrt().item())
    assert var.sum().sqrt() < 0.05 * exact.sum()  # a few percent at 64 draws: the check has teeth
    # negative controls, both far outside 3 standard errors: the denoiser's own NELBO, and the energy's sign flipped
    plain, plain_var, _ = MaskedNELBO(num_samples=64, keep_first_token=True).per_sequence(denoiser, batch, gen())
    assert not within(plain, plain_var, exact)
    flipped, flipped_var, _ = EnergyNELBO(energy=Flipped(coar), num_samples=64).per_sequence(denoiser, batch, gen())
    assert not within(flipped, flipped_var, exact)
    assert scorer.summary() == {"method": "nelbo_bound", "t_samples": 64, "estimator": "mc", "log_z": "exact"}


@pytest.mark.parametrize("time_conditioned", [False, True], ids=["k_form", "t_form"])
@pytest.mark.parametrize("exact_normaliser", [True, False], ids=["exact_z", "estimated_z"])
def test_zero_energy_is_the_masked_nelbo_bit_for_bit(time_conditioned, exact_normaliser):
    denoiser = RandomDenoiser(L, V, MASK, seed=4, time_conditioned=time_conditioned)
    batch = data(rows=3)
    base, base_var, _ = MaskedNELBO(num_samples=16).per_sequence(denoiser, batch, gen(7))
    scorer = EnergyNELBO(energy=ConstantEnergy(0.0, exact_normaliser=exact_normaliser), num_samples=16,
                         log_z_samples=4)
    nll, var, _ = scorer.per_sequence(denoiser, batch, gen(7))
    assert torch.equal(nll, base) and torch.equal(var, base_var)


def test_a_constant_energy_cancels_with_its_estimated_log_z():
    """E = c: every proposal has weight exp(-c), so log Z = -c exactly and the correction E + log Z is 0; a
    log Z with the wrong sign (or a missing one) would add 2c (or c) times the weight."""
    denoiser = RandomDenoiser(L, V, MASK, seed=5)
    batch = data(rows=3)
    base, _, _ = MaskedNELBO(num_samples=8).per_sequence(denoiser, batch, gen(3))
    scorer = EnergyNELBO(energy=ConstantEnergy(3.0, exact_normaliser=False), num_samples=8, log_z_samples=5)
    nll, _, _ = scorer.per_sequence(denoiser, batch, gen(3))
    torch.testing.assert_close(nll, base, rtol=0, atol=1e-9)
    assert scorer.summary()["method"] == "nelbo_bound_estimated" and scorer.summary()["log_z_samples"] == 5
    assert scorer.summary()["log_z"] == "leave_one_out"


def test_leave_one_out_arithmetic_matches_a_direct_computation():
    neg = torch.randn(5, 3, generator=gen(2), dtype=torch.float64) * 4
    t_n, loo = log_z_estimates(neg)
    direct_t = torch.log(neg.exp().mean(0))
    subsets = [torch.log(neg[[i for i in range(5) if i != j]].exp().mean(0)) for j in range(5)]
    direct_loo = 9 * direct_t - 8 * torch.stack(subsets).mean(0)
    torch.testing.assert_close(t_n, direct_t)
    torch.testing.assert_close(loo, direct_loo)
    with pytest.raises(ConfigError, match="log_z_samples"):
        log_z_estimates(neg[:1])


def test_log_z_estimators_on_a_toy_with_known_z():
    """q over 6 states with skewed importance weights w = exp(-E); Z = sum q w. Over 20000 independent
    repeats: the sandwich E[T_n] < log Z < E[(2n-1) T_n - 2(n-1) T_{n-1}] (Jensen below: the plug-in makes
    perplexity look too good; leave-one-out above, from n = 4 on for these heavy weights), so the plug-in is
    below the leave-one-out estimate on average, and the plug-in's bias shrinks with n."""
    q = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.04, 0.01], dtype=torch.float64)
    energy = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.5, -2.5], dtype=torch.float64)
    log_z = torch.logsumexp(q.log() - energy, 0).item()
    reps, plug_in = 20000, {}
    for n in (2, 4, 16):
        idx = torch.multinomial(q, n * reps, replacement=True, generator=gen(n)).view(n, reps)
        t_n, loo = log_z_estimates(-energy[idx])
        se = lambda x: x.std().item() / math.sqrt(reps)  # noqa: E731
        plug_in[n] = t_n.mean().item()
        assert t_n.mean().item() < log_z - 3 * se(t_n)  # Jensen: biased low
        assert loo.mean().item() > t_n.mean().item() + 3 * se(loo - t_n)  # plug-in below leave-one-out
        if n >= 4:  # the upper side holds asymptotically; here from n = 4 (at n = 2 it sits at log Z)
            assert loo.mean().item() > log_z + 3 * se(loo)
    assert plug_in[2] < plug_in[4] < plug_in[16]  # the plug-in's bias shrinks with n


def exact_residual_energy(joint: Tensor):
    """E(x0, xt) = -log P(x0 | visible xt) + sum_masked log P(x0^i | xt): the residual that turns the exact
    factorised posterior into the exact joint posterior (Z = 1)."""

    class ExactResidual(nn.Module):
        time_conditioned, exact_normaliser = False, True

        def __init__(self) -> None:
            super().__init__()
            self.real = joint.shape[0]
            self.vocab_size, self.mask_id = self.real + 1, self.real
            self.seqs = torch.tensor(list(itertools.product(range(self.real), repeat=joint.dim())))
            self.probs = joint.reshape(-1).double()

        def forward(self, x0: Tensor, xt: Tensor, t: Tensor, proposal_log_probs: Tensor) -> Tensor:
            visible = xt != self.mask_id
            consistent = ((self.seqs[None] == xt[:, None]) | ~visible[:, None]).all(-1)  # (N, S)
            evidence = (consistent.double() * self.probs).sum(-1)
            match = (self.seqs[None] == x0[:, None]).all(-1).double()
            log_post = torch.log((match * self.probs).sum(-1) / evidence)
            return (-log_post + proposal_log_probs.double().sum(-1)).float()

    return ExactResidual()


def test_joint_integrand_is_not_a_bound_for_a_correlated_pair():
    """The caveat in dlm.eval.energy_nelbo, on L = 2: with the exact posterior as kernel, the joint integrand
    integrates to -(3/2) log P(a, b) + (1/2) log P(a) P(b), below -log P(a, b) for a positively correlated
    pair, while the factorised kernel (E = 0, exact marginals) integrates to -log P(a, b) itself."""
    joint = torch.tensor([[0.45, 0.05], [0.05, 0.45]])  # a and b agree 90% of the time
    denoiser = ExactDenoiser(joint)
    batch = {"input_ids": torch.zeros(64, 2, dtype=torch.long)}  # (a, b) = (0, 0)
    p_ab, p_a, p_b = 0.45, 0.5, 0.5
    nll = -math.log(p_ab)
    joint_form = -1.5 * math.log(p_ab) + 0.5 * math.log(p_a * p_b)
    assert joint_form < nll - 0.25
    exact = EnergyNELBO(energy=exact_residual_energy(joint), num_samples=32, keep_first_token=False)
    est, var, _ = exact.per_sequence(denoiser, batch, gen(1))
    rows = batch["input_ids"].shape[0]
    assert within(est, var, torch.full((rows,), joint_form))
    assert est.mean().item() < nll - 3 * math.sqrt(var.sum().item()) / rows  # below the true NLL: no bound
    zero = EnergyNELBO(energy=ConstantEnergy(0.0, exact_normaliser=True), num_samples=32, keep_first_token=False)
    est0, var0, _ = zero.per_sequence(denoiser, batch, gen(1))
    assert within(est0, var0, torch.full((rows,), nll))


# ---------------------------------------------------------------- dlm-eval-ppl energy=<dir>: results and refusals
def spec_for(tok, attention: str) -> dict:
    return {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": 32, "attention": attention, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id}


def export(path, family: Family, tok=None):
    tok = tok or CharTokenizer()
    spec = spec_for(tok, family.attention)
    torch.manual_seed(0)
    return save_model_dir(path, model=build(spec), model_spec=spec, tokenizer=tok, family=family, seq_len=16,
                          keep_first_token=True, schedule_spec=None if family is Family.AR else
                          {"_target_": "dlm.diffusion.schedule.LogLinearSchedule"})


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("edlm_nelbo")
    tok = CharTokenizer()
    backbone = {k: v for k, v in spec_for(tok, "bidirectional").items() if k != "_target_"}
    nce_spec = {"_target_": "dlm.models.energy.NCEEnergy", "backbone": backbone}
    text = root / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 12)
    return {"radd": export(root / "radd", Family.MASKED), "ar": export(root / "ar", Family.AR),
            "energy": save_energy(root / "energy", energy=build(nce_spec), model_spec=nce_spec, tokenizer=tok),
            "other": export(root / "ar_other", Family.AR, tok=CharTokenizer(alphabet="abcdefgh")), "text": text}


def evaluate(model_dir, dirs, tmp_path, **kw):
    kw = {"dataset": str(dirs["text"]), "source": str(dirs["text"]), "split": "test", "batch_size": 4,
          "num_samples": 2, "device": "cpu", "cache_dir": tmp_path / "cache", **kw}
    return eval_ppl_model_dir(model_dir, **kw)


def test_eval_ppl_with_an_energy_reports_how_log_z_was_obtained(dirs, tmp_path):
    coar = evaluate(dirs["radd"], dirs, tmp_path, energy=dirs["ar"], energy_carry_over=True)
    nce = evaluate(dirs["radd"], dirs, tmp_path, energy=dirs["energy"], log_z_samples=3)
    plain = evaluate(dirs["radd"], dirs, tmp_path)
    assert plain["sequences"] > 4  # several batches: the log Z proposals never shift the next batch's masks
    assert coar["method"] == "nelbo_bound" and coar["log_z"] == "exact" and "log_z_samples" not in coar
    assert nce["method"] == "nelbo_bound_estimated" and nce["log_z_samples"] == 3
    assert nce["energy"] == str(dirs["energy"]) and nce["settings"]["energy"] == str(dirs["energy"].resolve())
    assert len({coar["out"], nce["out"], plain["out"]}) == 3  # each energy's result has its own file
    assert all(math.isfinite(r["nll"]) for r in (coar, nce, plain))
    # the untrained NCE energy is 0 everywhere and its log Z estimate 0: the diffusion model's own NELBO,
    # from the same masks
    assert nce["nll"] == pytest.approx(plain["nll"], rel=1e-9)


@pytest.mark.parametrize("case, model, kw, message", [
    ("energy as model", "energy", {}, r"model=.*energy directory.*energy="),
    ("tokenizer differs", "radd", {"energy": "other"}, r"energy: the energy .* uses tokenizer .* but the denoiser"),
    ("AR model corrected", "ar", {"energy": "ar"}, r"energy= corrects .* 'ar' model"),
    ("carry-over NCE", "radd", {"energy": "energy", "energy_carry_over": True}, r"energy_carry_over=true"),
    ("one log Z sample", "radd", {"energy": "energy", "log_z_samples": 1}, r"log_z_samples=1"),
    ("zero log Z samples", "radd", {"energy": "energy", "log_z_samples": 0}, r"log_z_samples=0"),
])
def test_misplaced_directories_and_bad_settings_are_refused(dirs, tmp_path, case, model, kw, message):
    kw = {k: dirs[v] if k == "energy" else v for k, v in kw.items()}
    with pytest.raises(ConfigError, match=message):
        evaluate(dirs[model], dirs, tmp_path, **kw)
