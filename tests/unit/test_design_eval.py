"""Design metrics (dlm/eval/design.py, design_exact.py) on hand-computed cases, and the exact sampler law of an
enumerable space against the sampler itself (with a negative control that the comparison can fail)."""

from __future__ import annotations

import math

import pytest
import torch

from dlm.data.tokenizers.bio import DNATokenizer
from dlm.diffusion.schedule import LogLinearSchedule
from dlm.eval.design import app_log_lik, design_diversity, reward_stats, share_in, top_fraction_cells
from dlm.eval.design_dna_metrics import kmer_counts, kmer_pearson, motif_counts, top_sequences
from dlm.eval.design_exact import (
    all_sequences,
    ancestral_law,
    binned_kl,
    cells_of,
    equal_mass_bins,
    histogram,
    kl,
    ordered_partitions,
    partition_probability,
    plugin_kl,
    reveal_step_law,
    tilted,
)
from dlm.io.spec import build
from dlm.rewards.pwm import pwm_hit_count_from_meme
from dlm.samplers.ancestral import AncestralSampler


def test_hamming_and_unique_fraction_by_hand():
    x = torch.tensor([[0, 1, 2], [0, 1, 3], [0, 1, 2]])
    d = design_diversity(x)
    # ordered pairs: (0,1) 1/3, (0,2) 0, (1,2) 1/3, each twice, over 3·2 pairs
    assert d["hamming"] == pytest.approx(2 * (1 / 3 + 0 + 1 / 3) / 6)
    assert d["unique_fraction"] == pytest.approx(2 / 3)


def test_kmer_counts_and_pearson_by_hand():
    a = torch.tensor([[0, 0, 1]])  # 2-mers 00, 01 over a 2-letter alphabet
    b = torch.tensor([[1, 1, 0]])  # 11, 10
    assert kmer_counts(a, k=2, alphabet_size=2).tolist() == [1, 1, 0, 0]
    assert kmer_pearson(a, b, k=2, alphabet_size=2) == pytest.approx(-1.0)
    assert kmer_pearson(a, torch.tensor([[0, 0, 1], [0, 0, 1]]), k=2, alphabet_size=2) == pytest.approx(1.0)
    with_special = torch.tensor([[0, 5, 1, 1]])  # windows holding id 5 (not a letter) are skipped: only 11
    assert kmer_counts(with_special, k=2, alphabet_size=2).tolist() == [0, 0, 0, 1]


def test_top_one_percent_share_by_hand():
    cells, values = torch.tensor([10, 11, 12, 13]), torch.tensor([5.0, 1.0, 3.0, 9.0])
    top = top_fraction_cells(cells, values, num_cells=16, fraction=0.5)  # the 2 highest: cells 13 and 10
    assert top.nonzero().flatten().tolist() == [10, 13]
    assert share_in(torch.tensor([13, 10, 11, -1]), top) == pytest.approx(0.5)  # -1: outside the space
    assert top_sequences(torch.arange(4)[:, None], values, fraction=0.25).tolist() == [[3]]


def test_reward_stats_by_hand():
    s = reward_stats(torch.tensor([0.0, 1.0, 2.0, 10.0]), threshold=1.5)
    assert s["median_reward"] == pytest.approx(1.0)  # torch's lower median of an even count
    assert s["mean_reward"] == pytest.approx(3.25)
    assert s["fraction_above"] == pytest.approx(0.5)


def test_exact_kl_tilt_and_a_negative_control():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    assert kl(p, q) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    assert kl(p, p) == 0.0  # negative control: identical laws
    assert kl(p, torch.tensor([1.0, 0.0])) == math.inf
    t = tilted(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]), alpha=0.5)  # ∝ (1, e^2)
    assert t.tolist() == pytest.approx([1 / (1 + math.e ** 2), math.e ** 2 / (1 + math.e ** 2)])


def test_plugin_kl_is_near_zero_for_the_target_and_near_the_truth_otherwise():
    g = torch.Generator().manual_seed(0)
    target = torch.tensor([0.4, 0.3, 0.2, 0.1])
    same = torch.multinomial(target, 20000, replacement=True, generator=g)
    est = plugin_kl(same, target)
    assert abs(est["estimate"]) < 3 * est["se"] + 1e-3 and est["plugin"] >= est["estimate"]
    other = torch.tensor([0.1, 0.2, 0.3, 0.4])
    est = plugin_kl(torch.multinomial(other, 20000, replacement=True, generator=g), target)
    assert est["estimate"] == pytest.approx(kl(other, target), abs=4 * est["se"] + 2e-3)
    bins = torch.tensor([0, 0, 1, 1])  # coarse KL: a lower bound, exact from a law
    assert binned_kl(target, bins, 2, law=other)["estimate"] <= kl(other, target)


def test_equal_mass_bins_split_the_law_evenly():
    law = torch.full((8,), 1 / 8)
    bins = equal_mass_bins(torch.arange(8.0), law, 4)
    assert bins.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_ordered_partition_probabilities_sum_to_one():
    q = reveal_step_law(AncestralSampler(num_steps=5))
    assert float(q.sum()) == pytest.approx(1.0)
    parts = list(ordered_partitions((0, 1, 2, 3)))
    assert len(parts) == 75  # Fubini number of 4
    assert sum(partition_probability(tuple(len(b) for b in p), q) for p in parts) == pytest.approx(1.0)


def tiny_dna_model(seed: int = 0):
    tok = DNATokenizer()
    spec = {"_target_": "dlm.models.conv.ConvDenoiser", "dim": 16, "kernel_size": 3, "dilations": [1],
            "num_stacks": 1, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id}
    torch.manual_seed(seed)
    model = build(spec).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)  # sharper conditionals: the law then depends visibly on the number of steps
    return model


def test_the_exact_ancestral_law_matches_the_sampler():
    model = tiny_dna_model()
    sampler = AncestralSampler(num_steps=4)
    law = ancestral_law(model, sampler, alphabet_size=4, length=3)
    out = sampler(model, batch_size=60000, length=3, generator=torch.Generator().manual_seed(1))
    cells = cells_of(out.tokens, 4)
    assert float((cells < 0).double().mean()) == pytest.approx(1 - float(law.sum()), abs=0.01)
    tv = 0.5 * float((histogram(cells, 64) - law / law.sum()).abs().sum())
    # negative control: the law of a 1-step grid (every position revealed together) is a different law,
    # and the histogram must be much closer to the right one than to it
    law1 = ancestral_law(model, AncestralSampler(num_steps=1), alphabet_size=4, length=3)
    tv_wrong = 0.5 * float((histogram(cells, 64) - law1 / law1.sum()).abs().sum())
    assert tv < 0.02 and tv_wrong > 3 * tv


def test_all_sequences_and_cells_round_trip():
    x = all_sequences(3, 2)
    assert x.tolist()[:4] == [[0, 0], [0, 1], [0, 2], [1, 0]]
    assert cells_of(x, 3).tolist() == list(range(9))
    assert cells_of(torch.tensor([[0, 7]]), 3).tolist() == [-1]


def test_app_log_lik_of_a_uniform_denoiser_is_minus_l_log_v():
    class Uniform(torch.nn.Module):
        vocab_size, mask_id, time_conditioned = 8, 7, False

        def forward(self, x, t=None, **_):
            return torch.zeros(*x.shape, self.vocab_size)

    ll, var = app_log_lik(Uniform(), torch.zeros(5, 3, dtype=torch.long), schedule=LogLinearSchedule(),
                          num_samples=4, generator=torch.Generator().manual_seed(0))
    # SUBS: the mask is never a prediction, so each of 3 positions costs log 7 whatever is masked
    assert ll.tolist() == pytest.approx([-3 * math.log(7)] * 5)
    assert var.tolist() == pytest.approx([0.0] * 5, abs=1e-12)


def test_motif_counts_add_up_to_the_hit_count_reward():
    hits = pwm_hit_count_from_meme()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (6, 60), generator=g)
    per_motif = motif_counts(x, hits)
    expected = hits(torch.nn.functional.one_hot(x, 8).float()).double()
    assert (per_motif @ torch.tensor(hits.weights, dtype=torch.float64)).tolist() == pytest.approx(expected.tolist())
