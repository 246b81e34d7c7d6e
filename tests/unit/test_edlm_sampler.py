"""EDLM's importance-sampling decoder: identities with the base sampler, the sign of the weights, the
exact law of one step on an enumerable toy, the per-row batch layout, call accounting, refusals."""

from __future__ import annotations

import itertools

import pytest
import torch
from mocks import MockDenoiser, PairEnergy, RandomDenoiser, TableEnergy
from torch import Tensor, nn

from dlm.errors import ConfigError
from dlm.models.energy import ARResidualEnergy
from dlm.models.transformer import Transformer
from dlm.samplers.ancestral import AncestralSampler
from dlm.samplers.importance import ImportanceSampler, choose_per_row, draw_candidates
from dlm.samplers.row_generators import RowGenerators

V, MASK, L = 7, 6, 10


class Factorised(MockDenoiser):
    """Fixed per-position logits (L, V) whatever the input: a factorised proposal over the real tokens."""

    def __init__(self, logits: Tensor, mask_id: int) -> None:
        super().__init__()
        self.register_buffer("table", logits)
        self.vocab_size, self.mask_id = logits.shape[-1], mask_id

    def forward(self, xt: Tensor, t: Tensor | None = None, **_) -> Tensor:
        out = self.table[None].expand(xt.shape[0], -1, -1).clone()
        out[..., self.mask_id] = float("-inf")
        return out


class OwnRowToken(MockDenoiser):
    """Puts almost all mass on the token at position 0 of the row: each row proposes its own token."""

    def __init__(self, vocab_size: int, mask_id: int) -> None:
        super().__init__()
        self.vocab_size, self.mask_id = vocab_size, mask_id

    def forward(self, xt: Tensor, t: Tensor | None = None, **_) -> Tensor:
        out = torch.zeros(*xt.shape, self.vocab_size)
        out.scatter_(-1, xt[:, :1, None].expand(-1, xt.shape[1], 1), 30.0)
        return out


def gen(seed: int = 5) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_transformer(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(vocab_size=V, mask_id=MASK, dim=16, n_layers=2, n_heads=2, max_seq_len=L,
                       init_std=0.5).eval()


@pytest.mark.parametrize("model", [RandomDenoiser(L, V, MASK, seed=1), tiny_transformer()], ids=["mock", "transformer"])
@pytest.mark.parametrize("row_cache", ["row", "none"])
@pytest.mark.parametrize("setting", [{"num_candidates": 1, "window": 1.0}, {"num_candidates": 4, "window": 0.0}],
                         ids=["k1", "w0"])
def test_k1_and_w0_are_the_base_sampler_bit_for_bit(model, row_cache, setting):
    energy = PairEnergy(L, V, MASK)
    prompt = torch.tensor([1, 2])
    base = AncestralSampler(num_steps=16, row_cache=row_cache)(model, batch_size=4, length=L, prompt=prompt,
                                                               generator=gen())
    edlm = ImportanceSampler(energy=energy, num_steps=16, row_cache=row_cache, **setting)
    out = edlm(model, batch_size=4, length=L, prompt=prompt, generator=gen())
    assert torch.equal(out.tokens, base.tokens) and out.nfe == base.nfe
    assert energy.calls == 0 and out.aux_calls == {"energy": 0}
    # negative control: inside the window with k > 1 the samples differ
    other = ImportanceSampler(energy=energy, num_steps=16, row_cache=row_cache, num_candidates=4, window=1.0)
    assert not torch.equal(other(model, batch_size=4, length=L, prompt=prompt, generator=gen()).tokens, base.tokens)


def one_step_law(energy, proposal: Tensor, *, k: int, rows: int, seed: int = 0) -> Tensor:
    """Empirical law (V_real^L,) of the x0 chosen by one importance-sampled step from all-mask."""
    n_real, length = proposal.shape[1] - 1, proposal.shape[0]
    sampler = ImportanceSampler(energy=energy, num_candidates=k, window=1.0, num_steps=1)
    out = sampler(Factorised(proposal, n_real), batch_size=rows, length=length, generator=gen(seed)).tokens
    index = (out * n_real ** torch.arange(length - 1, -1, -1)).sum(-1)
    return torch.bincount(index, minlength=n_real ** length).double() / rows


def toy(seed: int = 0, n_real: int = 3, length: int = 3):
    """A factorised proposal q and a tabular energy with a strongly non-factorised target q exp(-E) / Z."""
    g = torch.Generator().manual_seed(seed)
    proposal = torch.zeros(length, n_real + 1)
    proposal[:, :n_real] = torch.randn(length, n_real, generator=g) * 0.5
    table = torch.randn(n_real ** length, generator=g) * 1.5
    seqs = torch.tensor(list(itertools.product(range(n_real), repeat=length)))
    log_q = proposal[:, :n_real].log_softmax(-1)[torch.arange(length), seqs].sum(-1).double()
    target = (log_q - table.double()).softmax(0)
    return proposal, table, target, log_q.exp()


def test_one_step_law_converges_to_the_corrected_kernel():
    proposal, table, target, q = toy()
    energy = TableEnergy(table, base=3, vocab_size=4, mask_id=3)
    tv = {k: 0.5 * (one_step_law(energy, proposal, k=k, rows=40000) - target).abs().sum().item() for k in (1, 2, 4, 16)}
    assert tv[1] == pytest.approx(0.5 * (q - target).abs().sum().item(), abs=0.02)  # k = 1 draws the proposal
    assert tv[1] > tv[2] > tv[4] > tv[16]
    assert tv[16] <= 0.25 * tv[1], tv
    # negative control: weights exp(+E) (the public code's sign) move the law away from the target
    flipped = TableEnergy(table, base=3, vocab_size=4, mask_id=3, sign=-1.0)
    assert 0.5 * (one_step_law(flipped, proposal, k=16, rows=40000) - target).abs().sum().item() > tv[1]


def test_lower_energy_is_chosen_more_often_and_the_flipped_sign_fails():
    proposal = torch.zeros(2, 4)  # uniform over 3 real tokens at 2 positions: 9 sequences
    table = torch.zeros(9)
    table[5] = -4.0  # sequence (1, 2) is far more likely under the corrected kernel
    share = one_step_law(TableEnergy(table, base=3, vocab_size=4, mask_id=3), proposal, k=8, rows=4000)[5]
    assert share > 0.5  # 1/9 under the proposal; 1 - (8/9)^8 = 0.61 that a candidate is it
    flipped = one_step_law(TableEnergy(table, base=3, vocab_size=4, mask_id=3, sign=-1.0), proposal, k=8, rows=4000)[5]
    assert not flipped > 0.5 and flipped < 1 / 9  # the public code's exp(+E) avoids it


def test_each_row_takes_its_own_candidates():
    # every row proposes its own token (the one at its position 0); a candidate from another row
    # would reveal a foreign token
    prompts = torch.arange(8)[:, None] % 6
    energy = PairEnergy(L, V, MASK, seed=2)
    sampler = ImportanceSampler(energy=energy, num_candidates=4, window=1.0, num_steps=6, record_trajectory=True)
    out = sampler(OwnRowToken(V, MASK), batch_size=8, length=L, prompt=prompts, generator=gen())
    assert (out.tokens == prompts).all()
    assert out.aux_calls["energy"] == energy.calls > 0


def test_a_row_alone_equals_the_same_row_in_a_batch_with_row_generators():
    model, energy = RandomDenoiser(L, V, MASK, seed=3), PairEnergy(L, V, MASK, seed=4)
    sampler = ImportanceSampler(energy=energy, num_candidates=3, window=0.5, num_steps=8)
    seeds = list(range(100, 108))
    batch = sampler(model, batch_size=8, length=L, generator=RowGenerators.seeded(seeds)).tokens
    for b in (0, 5):
        alone = sampler(model, batch_size=1, length=L, generator=RowGenerators.seeded([seeds[b]])).tokens
        assert torch.equal(alone[0], batch[b])
    # negative control: one generator for the batch does not have this property
    shared = sampler(model, batch_size=8, length=L, generator=gen(100)).tokens
    assert not torch.equal(sampler(model, batch_size=1, length=L, generator=gen(100)).tokens[0], shared[5])


def test_energy_calls_follow_the_window_and_score_k_times_the_evaluated_rows():
    model, energy = RandomDenoiser(L, V, MASK, seed=1), PairEnergy(L, V, MASK)
    calls = []
    orig = energy.forward
    energy.forward = lambda x0, *a: (calls.append(x0.shape[0]), orig(x0, *a))[1]
    k, n = 3, 8
    sampler = ImportanceSampler(energy=energy, num_candidates=k, window=0.5, num_steps=n, row_cache="none")
    out = sampler(model, batch_size=2, length=L, generator=gen())
    grid = sampler.grid(torch.device("cpu"))
    in_window = sum(float(grid[i]) >= 0.5 for i in range(n))
    assert out.aux_calls["energy"] == len(calls) == in_window and all(c == k * 2 for c in calls)
    assert out.nfe == n


def test_a_forced_candidate_is_the_one_revealed():
    # C13: the candidate with by far the lowest energy is the one whose tokens the step reveals
    log_p = torch.randn(2, 5, 4).log_softmax(-1)
    log_p[..., 3] = float("-inf")
    xt = torch.full((2, 5), 3)
    cands, lp = draw_candidates(log_p, xt, 3, 6, gen())
    energies = torch.zeros(6, 2)
    energies[4, 0], energies[1, 1] = -1e4, -1e4
    assert choose_per_row(energies, gen()).tolist() == [4, 1]
    assert torch.equal(choose_per_row(energies + 123.0, gen()), choose_per_row(energies, gen()))  # shift-invariant
    assert torch.isfinite(lp).all() and (lp <= 0).all()
    # +-1e4 energies: no NaN, still a valid index
    assert choose_per_row(torch.tensor([[1e4, -1e4], [-1e4, 1e4]]), gen()).tolist() == [1, 0]


def test_draw_candidates_follow_the_proposal():
    log_p = torch.tensor([[[0.7, 0.2, 0.1, 0.0]]]).log()
    log_p[..., 3] = float("-inf")
    cands, _ = draw_candidates(log_p.expand(1, 1, 4), torch.tensor([[3]]), 3, 20000, gen())
    freq = torch.bincount(cands.flatten(), minlength=4).double() / 20000
    assert torch.allclose(freq[:3], torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), atol=0.015)


class CountingAR(nn.Module):
    attention, vocab_size, mask_id = "causal", V, MASK

    def forward(self, x, t=None, **_):
        return torch.zeros(*x.shape, V)


def test_ar_energy_weights_are_the_importance_ratio():
    # uniform AR over the 6 real tokens ("without_mask"): E = -log p_AR + log p_theta, so exp(-E) = p_AR / p_theta
    energy = ARResidualEnergy(CountingAR(), carry_over=False, ar_softmax="without_mask")
    x0 = torch.randint(0, 6, (3, 4))
    xt = x0.clone()
    xt[:, 1:] = MASK
    plp = torch.full((3, 4), -0.5)
    plp[:, 0] = 0.0
    e = energy(x0, xt, torch.ones(3), plp)
    assert torch.allclose(e, torch.full((3,), 3 * torch.log(torch.tensor(6.0)).item() - 1.5))
    co = ARResidualEnergy(CountingAR(), carry_over=True)
    xt[:, 2] = x0[:, 2]  # an observed position: coAR scores it with an indicator
    plp[:, 2] = 0.0
    assert torch.allclose(co(x0, xt, torch.ones(3), plp), torch.full((3,), 2 * torch.log(torch.tensor(6.0)).item() - 1.0))


@pytest.mark.parametrize("kwargs, key", [({"num_candidates": 0}, "num_candidates"), ({"window": 1.5}, "window"),
                                         ({"window": -0.1}, "window"), ({"energy_temperature": 0}, "energy_temperature")])
def test_bad_settings_are_refused(kwargs, key):
    with pytest.raises(ConfigError, match=f"sampler.{key}"):
        ImportanceSampler(energy=PairEnergy(L, V, MASK), **kwargs)


def test_an_energy_of_another_vocabulary_or_time_conditioned_is_refused():
    model = RandomDenoiser(L, V, MASK)
    with pytest.raises(ConfigError, match="different tokenizers"):
        ImportanceSampler(energy=PairEnergy(L, V + 1, MASK))(model, batch_size=1, length=L)
    timed = TableEnergy(torch.zeros(9), base=3, vocab_size=V, mask_id=MASK, time_conditioned=True)
    with pytest.raises(ConfigError, match="time-conditioned"):
        ImportanceSampler(energy=timed)(model, batch_size=1, length=L)
