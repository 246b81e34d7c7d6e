"""DNA design metrics against data (dlm/eval/design_dna_metrics.py) and their reference (design_reference.py):
exact k-mer counts on hand-made sequences, r = 1 for identical sets, a motif-planted law recognised against random
sequences, the top windows ranked as stated, and every reference refusal."""

from __future__ import annotations

import pytest
import torch

from dlm.errors import ConfigError
from dlm.eval.design_dna_metrics import (
    kmer_counts,
    kmer_pearson,
    mean_motif_counts,
    motif_correlations,
    reference_metrics,
    top_sequences,
)
from dlm.eval.design_reference import load_reference
from dlm.rewards.pwm import DNA, pwm_hit_count_from_meme


def ids(*seqs: str) -> torch.Tensor:
    return torch.tensor([[DNA.index(c) for c in s] for s in seqs])


def test_3mer_counts_are_exact_on_a_hand_made_example():
    counts = kmer_counts(ids("ACGTA", "AAAAC"), k=3, alphabet_size=4)
    # ACG = 0·16 + 1·4 + 2 = 6, CGT = 27, GTA = 44; AAA twice (0), AAC = 1
    expected = torch.zeros(64, dtype=torch.float64)
    expected[[6, 27, 44, 1]] = 1.0
    expected[0] = 2.0
    assert counts.tolist() == expected.tolist()
    assert counts.sum() == 2 * (5 - 3 + 1)  # every overlapping window of every row, forward strand only
    # the reverse complement is not added: TACGT (revcomp of ACGTA) counts other 3-mers
    assert kmer_counts(ids("TACGT"), k=3, alphabet_size=4).nonzero().flatten().tolist() == [6, 27, 49]  # TAC = 3·16 + 0·4 + 1


def test_identical_sets_correlate_perfectly_and_a_different_one_does_not():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (20, 60), generator=g)
    hits = pwm_hit_count_from_meme(min_score_fraction=0.6)  # 4 liver motifs; 0.6: random 60-mers have some hits
    assert kmer_pearson(x, x) == pytest.approx(1.0)
    assert kmer_pearson(x, x.flip(0)) == pytest.approx(1.0)  # pooled over rows: order-free
    assert motif_correlations(x, x, hits) == pytest.approx({"pearson": 1.0, "spearman": 1.0})
    poly = ids("AC" * 30, "GT" * 30)  # negative control: another composition entirely
    assert kmer_pearson(x, poly) < 0.5


def planted(n: int, consensus: list[str], seed: int) -> torch.Tensor:
    """n random 100-mers, each with every consensus word written at a random place."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 4, (n, 100), generator=g)
    for row in x:
        for word in consensus:
            start = int(torch.randint(0, 100 - len(word), (1,), generator=g))
            row[start:start + len(word)] = ids(word)[0]
    return x


def test_a_motif_planted_law_is_recognised_against_random_sequences():
    hits = pwm_hit_count_from_meme()
    consensus = ["".join(DNA[i] for i in torch.tensor(m.pfm).argmax(-1).tolist()) for m in hits.motifs[:2]]
    a, b = planted(40, consensus, seed=1), planted(40, consensus, seed=2)  # two draws of the same planted law
    rand = torch.randint(0, 4, (40, 100), generator=torch.Generator().manual_seed(3))
    counts = mean_motif_counts(a, hits)
    assert (counts[:2] >= 1).all() and (mean_motif_counts(rand, hits)[:2] < 0.5).all()  # the planting is seen
    same_law = motif_correlations(a, b, hits)["pearson"]
    assert same_law > 0.9
    assert motif_correlations(rand, a, hits)["pearson"] < same_law - 0.3


def test_top_windows_are_ranked_by_value_with_ties_in_data_order():
    windows = ids("AAAA", "CCCC", "GGGG", "TTTT", "ACGT")
    values = torch.tensor([1.0, 3.0, 3.0, 0.0, 2.0])
    assert top_sequences(windows, values, fraction=0.4).tolist() == ids("CCCC", "GGGG").tolist()
    assert top_sequences(windows, values, fraction=0.01).tolist() == ids("CCCC").tolist()  # at least one row


def test_reference_metrics_compare_with_the_top_windows_not_all_of_them():
    g = torch.Generator().manual_seed(4)
    top = planted(30, ["TGTTTAC"], seed=5)  # FOXA-like words in the top windows
    rest = torch.randint(0, 4, (70, 100), generator=g)
    rest[:, ::3] = 2  # the rest: G-rich, another composition
    windows = torch.cat([rest, top])
    values = torch.cat([torch.zeros(70), torch.ones(30)])
    hits = pwm_hit_count_from_meme(min_score_fraction=0.7)
    m = reference_metrics(top.clone(), windows, values, top_fraction=0.3, hits=hits)
    assert m["reference_windows"] == 100 and m["reference_top_windows"] == 30 and m["motifs"] == 4
    assert m["kmer_pearson_top"] == pytest.approx(1.0) and m["motif_pearson_top"] == pytest.approx(1.0)
    assert m["kmer_pearson_all"] < 0.95
    worse = reference_metrics(rest[:30], windows, values, top_fraction=0.3, hits=hits)  # designs like the rest
    assert worse["kmer_pearson_top"] < m["kmer_pearson_all"]


def test_a_fasta_reference_is_cut_into_design_windows_and_a_table_ranks_by_its_values(tmp_path):
    fasta = tmp_path / "g.fa"
    fasta.write_text(">chr\nACGTACGTAC\nGTACGTACGT\n>two\nAAAAAAAAAA\n")
    ref = load_reference(path=str(fasta), top_fraction=0.5)
    rows = ref.rows(5)
    assert rows.sequences == ["ACGTA", "CGTAC", "GTACG", "TACGT", "AAAAA", "AAAAA"] and rows.values is None
    assert load_reference(path=str(fasta), row_range=[0.5, 1.0]).rows(5).sequences == ["TACGT", "AAAAA", "AAAAA"]
    assert ref.settings()["ranked_by"] == "eval_reward" and ref.settings()["motifs"] == 4
    table = tmp_path / "t.csv"
    table.write_text("seq,hepg2\nACGTA,1.5\nttttt,-2\n")
    rows = load_reference(path=str(table)).rows(5)
    assert rows.sequences == ["ACGTA", "TTTTT"] and rows.values == [1.5, -2.0]
    with pytest.raises(ConfigError, match="needs 4"):  # a table row of another length than the designs
        load_reference(path=str(table)).rows(4)
    with pytest.raises(ConfigError, match="no 30-bp window"):
        ref.rows(30)
    assert load_reference(path=None) is None


@pytest.mark.parametrize("kwargs, match", [
    ({"path": "genome.txt.zip"}, "extension"),
    ({"path": "missing.fa"}, "does not exist"),
    ({"top_fraction": 0.0}, "top_fraction"),
    ({"row_range": [0.5, 0.2]}, "row_range"),
    ({"policy": "guess"}, "policy"),
    ({"motif_file": "missing.meme"}, "motif_file"),
])
def test_bad_references_are_refused_naming_the_key(tmp_path, kwargs, match):
    fasta = tmp_path / "g.fa"
    fasta.write_text(">chr\nACGTACGTAC\n")
    kwargs = {"path": str(fasta), **kwargs}
    if kwargs["path"] != str(fasta):
        kwargs["path"] = str(tmp_path / kwargs["path"])
    with pytest.raises(ConfigError, match=match):
        load_reference(**kwargs)


def test_sequences_shorter_than_a_motif_score_no_window_of_it():
    hits = pwm_hit_count_from_meme(min_score_fraction=0.0)  # every window that fits is a hit
    widths = [len(m.pfm) for m in hits.motifs]
    short = min(widths) + 1  # some motifs fit, the widest (15) does not
    counts = mean_motif_counts(torch.zeros(3, short, dtype=torch.long), hits)
    assert counts.tolist() == [2.0 * max(0, short - w + 1) for w in widths] and 0.0 in counts.tolist()
