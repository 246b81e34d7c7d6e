"""Rewards for sequence design: PWM motif scans, trained oracles, the GB1 lookup, reward directories,
the evaluation/fine-tuning separation and non-finite refusals. Synthetic data and shipped data/ only."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_bio_data import GB1_ROWS, write_gb1_zip

from dlm.cli import CONF_DIR
from dlm.data.sequence_table import SequenceTable
from dlm.data.synthetic_genome import synthetic_genome
from dlm.errors import CheckpointError, ConfigError, NonFiniteError
from dlm.io.reward_dir import fit_oracle_dir, save_reward
from dlm.rewards.correlation import average_ranks, spearman
from dlm.rewards.finite import check_finite_reward
from dlm.rewards.gb1_lookup import gb1_lookup_from_zip
from dlm.rewards.protocol import RewardModel
from dlm.rewards.pwm import PWMHitCount, PWMReward, log_odds, read_meme, reverse_complement, select_motifs
from dlm.rewards.reward_dir import load_reward
from dlm.rewards.reward_table import reward_windows
from dlm.rewards.separation import check_separate_oracles
from dlm.rewards.toy import GCContent, KmerCount

DNA, PROTEIN = "ACGT", "ACDEFGHIKLMNPQRSTVWY"
COMPLEMENT = str.maketrans("ACGT", "TGCA")


def one_hot(seqs: list[str], alphabet: str = DNA, vocab: int = 8) -> torch.Tensor:
    """(B, L, vocab) one-hot over the model vocabulary (letters first, specials after)."""
    return F.one_hot(torch.tensor([[alphabet.index(c) for c in s] for s in seqs]), vocab).float()


def consensus(pfm) -> str:
    return "".join(DNA[max(range(4), key=lambda c: row[c])] for row in pfm)


@pytest.fixture(scope="module")
def liver():
    motifs, background = read_meme()  # the shipped data/jaspar/liver_factors.meme
    return motifs, background


# ----------------------------------------------------------------------------------------------- PWM
def test_shipped_meme_holds_the_four_liver_factors(liver):
    motifs, background = liver
    assert sorted(m.name for m in motifs) == ["MA0046.2 HNF1A", "MA0047.3 FOXA2", "MA0114.4 HNF4A", "MA0466.3 CEBPB"]
    assert background == [0.25] * 4 and all(abs(sum(r) - 1) < 1e-3 for m in motifs for r in m.pfm)
    with pytest.raises(ConfigError, match="'GATA1', which is not in the file; valid: MA0046.2 HNF1A"):
        select_motifs(motifs, ["GATA1"])


def planted_and_shuffles(motif: str, n: int = 30, seed: int = 0) -> list[str]:
    """A genome-like 200-mer with ``motif`` planted at 90, then the same with the motif's letters shuffled."""
    bg, rng = synthetic_genome(200, seed=5).sequence, random.Random(seed)
    out = [bg[:90] + motif + bg[90 + len(motif):]]
    for _ in range(n):
        letters = list(motif)
        rng.shuffle(letters)
        out.append(bg[:90] + "".join(letters) + bg[90 + len(motif):])
    return out


def test_planted_motif_scores_above_its_shuffles_and_a_shuffled_pwm_does_not(liver):
    motifs, background = liver
    hnf4a = select_motifs(motifs, ["HNF4A"])
    seqs = planted_and_shuffles(consensus(hnf4a[0].pfm))
    scores = PWMReward(motifs=hnf4a, background=background, temperature=0.1)(one_hot(seqs))
    assert scores[0] > scores[1:].max() + 2.0  # the planted consensus beats every shuffle by > 2 nats
    # teeth: the same matrix with its positions permuted prefers no particular order of those letters
    perm = torch.randperm(len(hnf4a[0].pfm), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = [type(hnf4a[0])("shuffled", [hnf4a[0].pfm[i] for i in perm])]
    shuffled_scores = PWMReward(motifs=shuffled, background=background, temperature=0.1)(one_hot(seqs))
    assert shuffled_scores[0] < shuffled_scores[1:].max()


def test_both_strands_reverse_complement_scores_the_same(liver):
    motifs, background = liver
    reward = PWMReward(motifs=motifs, background=background, temperature=0.5)
    seqs = [synthetic_genome(200, seed=s).sequence for s in range(4)]
    rc = [s.translate(COMPLEMENT)[::-1] for s in seqs]
    assert torch.allclose(reward(one_hot(seqs)), reward(one_hot(rc)), atol=1e-4)
    # a motif planted on the minus strand scores like the same motif on the plus strand
    cons = consensus(select_motifs(motifs, ["FOXA2"])[0].pfm)
    fox = PWMReward(motifs=select_motifs(motifs, ["FOXA2"]), background=background, temperature=0.1)
    bg = synthetic_genome(200, seed=9).sequence
    plus = bg[:50] + cons + bg[50 + len(cons):]
    minus = bg[:50] + cons.translate(COMPLEMENT)[::-1] + bg[50 + len(cons):]
    assert abs(float(fox(one_hot([plus])) - fox(one_hot([minus])))) < 1e-3
    assert torch.equal(reverse_complement(torch.arange(8.0).view(2, 4)), torch.tensor([[7.0, 6, 5, 4], [3, 2, 1, 0]]))


def test_hard_one_hot_equals_the_log_odds_of_the_argmax_letters(liver):
    motifs, background = liver
    tau, weights = 0.7, [1.0, 0.5, 2.0, -1.0]
    reward = PWMReward(motifs=motifs, weights=weights, background=background, pseudocount=0.05, temperature=tau)
    seq = synthetic_genome(60, seed=4).sequence
    expected = 0.0
    for m, w in zip(motifs, weights, strict=True):
        pwm = log_odds(torch.tensor(m.pfm, dtype=torch.float64), torch.tensor(background, dtype=torch.float64), 0.05)
        width = pwm.shape[0]
        windows = [seq[i:i + width] for i in range(len(seq) - width + 1)]
        scores = [sum(float(pwm[j, DNA.index(c)]) for j, c in enumerate(win)) for win in windows]
        scores += [sum(float(pwm[j, DNA.index(c)]) for j, c in enumerate(win.translate(COMPLEMENT)[::-1]))
                   for win in windows]
        expected += w * tau * float(torch.logsumexp(torch.tensor(scores) / tau, 0))
    # a soft input whose argmax is seq, made hard with the straight-through trick, scores exactly seq
    soft = torch.softmax(torch.randn(1, 60, 8) + 5 * one_hot([seq]), -1)
    hard = F.one_hot(soft.argmax(-1), 8).float()
    assert float(reward(hard)) == pytest.approx(expected, abs=1e-3)
    assert float(reward(one_hot([seq]))) == pytest.approx(expected, abs=1e-3)


def test_gradients_are_finite_wrt_a_one_hot_and_mask_mass_is_ignored(liver):
    motifs, background = liver
    reward = PWMReward(motifs=motifs, background=background)
    x = one_hot([synthetic_genome(200, seed=s).sequence for s in range(3)]).requires_grad_(True)
    reward(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[..., :4].abs().sum() > 0 and (x.grad[..., 4:] == 0).all()
    assert reward.differentiable and isinstance(reward, RewardModel)


def test_hit_count_is_an_integer_count_of_planted_sites(liver):
    motifs, background = liver
    cebpb = select_motifs(motifs, ["CEBPB"])
    hits = PWMHitCount(motifs=cebpb, background=background, min_score_fraction=0.9)
    cons = consensus(cebpb[0].pfm)
    bg = synthetic_genome(300, seed=7).sequence
    planted = bg[:20] + cons + bg[20 + len(cons):150] + cons + bg[150 + len(cons):]
    got = hits(one_hot([bg, planted]))
    assert not hits.differentiable and torch.equal(got, got.round())
    # CEBPB's consensus TATTGCGCAATA is its own reverse complement: each planted site is a hit on both strands
    assert cons == cons.translate(COMPLEMENT)[::-1]
    assert got.tolist() == [0.0, 4.0]
    assert PWMHitCount(motifs=cebpb, weights=[2.5], background=background, min_score_fraction=0.9)(
        one_hot([planted])).tolist() == [10.0]


# ----------------------------------------------------------------------------------------------- oracle
def linear_table(n: int, seed: int, *, length: int = 14, noise: float = 0.1) -> SequenceTable:
    """Random ACGT sequences with y = sum_i w[i, x_i] + noise, w fixed (seed 123): linear in the one-hot."""
    w = torch.randn(length, 4, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, (n, length), generator=g)
    y = w.gather(1, ids.T).sum(0) + noise * torch.randn(n, generator=g)
    seqs = ["".join(DNA[i] for i in row) for row in ids.tolist()]
    return SequenceTable(seqs, y.tolist(), list(range(n)), DNA, f"linear seed {seed}")


MLP = {"_target_": "dlm.rewards.oracle_nets.OneHotMLP", "hidden": 32, "layers": 1}


@pytest.fixture(scope="module")
def oracle_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracles")
    test = linear_table(500, seed=2)
    ft = fit_oracle_dir(root / "ft", train=linear_table(2000, seed=1), test=test, network=MLP, steps=400)
    ev = fit_oracle_dir(root / "ev", train=linear_table(2000, seed=3), test=test, network=MLP, steps=400)
    ctrl = fit_oracle_dir(root / "ctrl", train=linear_table(2000, seed=1), test=test, network=MLP, steps=400,
                          shuffle_labels=True)
    return root, ft, ev, ctrl


def test_oracle_fits_a_linear_target_and_shuffled_labels_do_not(oracle_dirs):
    _, ft, ev, ctrl = oracle_dirs
    assert ft["test_spearman"] > 0.9 and ev["test_spearman"] > 0.9
    assert abs(ctrl["test_spearman"]) < 0.2  # negative control: the labels carry the signal


def test_oracle_directory_round_trip_gives_equal_differentiable_outputs(oracle_dirs):
    root, *_ = oracle_dirs
    reward = load_reward(root / "ft")
    again = load_reward(root / "ft")
    x = torch.softmax(torch.randn(5, 14, 8), -1).requires_grad_(True)
    out = reward(x)
    assert torch.equal(out, again(x)) and out.shape == (5,) and reward.differentiable
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ConfigError, match="scores sequences of length 14, got 13; set length=14"):
        reward(x[:, :13])
    record = json.loads((root / "ft" / "oracle.json").read_text())
    assert record["trained_on"]["rows"] == 2000 and record["summary"]["test_spearman"] > 0.9


def test_refits_reuse_the_same_request_and_refuse_a_different_one(oracle_dirs):
    root, ft, *_ = oracle_dirs
    again = fit_oracle_dir(root / "ft", train=linear_table(2000, seed=1), test=linear_table(500, seed=2),
                           network=MLP, steps=400)
    assert again["reused"] and again["fingerprint"] == ft["fingerprint"]
    with pytest.raises(ConfigError, match="already holds a different oracle; choose another out="):
        fit_oracle_dir(root / "ft", train=linear_table(2000, seed=1), test=linear_table(500, seed=2), network=MLP,
                       steps=401)


def test_evaluation_oracle_equal_to_or_overlapping_the_finetuning_one_is_refused(oracle_dirs, tmp_path):
    root, *_ = oracle_dirs
    check_separate_oracles(root / "ft", root / "ev")  # disjoint training sequences: accepted
    copy = tmp_path / "copy"
    shutil.copytree(root / "ft", copy)
    with pytest.raises(ConfigError, match="is the fine-tuning reward .* \\(same fingerprint\\).*allow_same_oracle=true"):
        check_separate_oracles(root / "ft", copy)
    check_separate_oracles(root / "ft", copy, allow_same_oracle=True)
    # same rows, different seed: another fingerprint, but trained on the fine-tuning oracle's sequences
    with pytest.raises(ConfigError, match="trained on 2000 sequences the fine-tuning reward"):
        check_separate_oracles(root / "ft", root / "ctrl")


def test_fit_oracle_cli_prints_held_out_correlations_as_its_last_line(tmp_path):
    table = linear_table(600, seed=11)
    csv_path = tmp_path / "table.csv"
    csv_path.write_text("seq,value\n" + "".join(f"{s},{v}\n" for s, v in zip(table.sequences, table.values,
                                                                             strict=True)))
    proc = subprocess.run(
        [sys.executable, "-m", "dlm", "fit-oracle", "oracle_table=mpra", f"oracle_table.path={csv_path}",
         "oracle_table.value_column=value", "oracle_table.length=14", "oracle_table.train.row_range=[0,0.8]",
         "oracle_table.test.row_range=[0.8,1.0]", "oracle_network.hidden=32", "steps=300", f"out={tmp_path / 'o'}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["train_rows"] == 480 and summary["test_rows"] == 120 and summary["test_spearman"] > 0.9
    assert isinstance(load_reward(tmp_path / "o")(one_hot(["ACGTACGTACGTAC"])), torch.Tensor)


def test_reward_windows_label_contiguous_genome_parts_by_a_reward(tmp_path):
    seq = synthetic_genome(2000, seed=8).sequence
    fasta = tmp_path / "g.fa"
    fasta.write_text(">chr1\n" + seq + "\n")
    first = reward_windows(reward=GCContent(), path=str(fasta), seq_len=100, stride=50, row_range=[0.0, 0.5])
    second = reward_windows(reward=GCContent(), path=str(fasta), seq_len=100, stride=50, row_range=[0.5, 1.0])
    assert len(first) + len(second) == 39 and first.rows == list(range(19)) and second.rows[0] == 19
    assert first.sequences[1] == seq[50:150]
    assert first.values[1] == pytest.approx((seq[50:150].count("G") + seq[50:150].count("C")) / 100)
    # contiguous parts: only the one window straddling the boundary shares bases with the other part
    assert seq.find(second.sequences[1]) >= seq.find(first.sequences[-1]) + 100


# ----------------------------------------------------------------------------------------------- GB1 lookup
def test_gb1_lookup_is_exact_on_measured_variants_and_fills_the_rest(tmp_path):
    z = write_gb1_zip(tmp_path / "gb1.zip", GB1_ROWS)
    lookup = gb1_lookup_from_zip(str(z), fill=-1.0)
    measured = [v for v, *_ in GB1_ROWS]
    got = lookup(one_hot(measured, PROTEIN, 24))
    assert got.tolist() == pytest.approx([f for _, f, *_ in GB1_ROWS])
    assert lookup(one_hot(["AAAA"], PROTEIN, 24)).tolist() == [-1.0] and not lookup.differentiable
    masked = one_hot(["VDGV"], PROTEIN, 24)
    masked[0, 2] = F.one_hot(torch.tensor(23), 24).float()  # a [MASK] left at site 3
    assert lookup(masked).tolist() == [-1.0]
    strict = gb1_lookup_from_zip(str(z), fill=None)
    with pytest.raises(ConfigError, match=r"row 1 \(AAAA\) is not a measured GB1 variant.*reward.fill"):
        strict(one_hot(["VDGV", "AAAA"], PROTEIN, 24))
    train_only = gb1_lookup_from_zip(str(z), split="sampled", sets=["train"], fill=0.0)
    assert train_only(one_hot(["VDGV", "FWAA"], PROTEIN, 24)).tolist() == [1.0, 0.0]


def test_gb1_lookup_on_the_shipped_landscape_and_its_directory(tmp_path):
    lookup = gb1_lookup_from_zip()
    assert int(lookup.measured.sum()) == 149_361
    assert lookup(one_hot(["VDGV", "FWAA"], PROTEIN, 24)).tolist() == pytest.approx([1.0, 8.762], abs=1e-3)
    save_reward(lookup, tmp_path / "lookup")
    again = load_reward(tmp_path / "lookup")
    x = one_hot(["VDGV", "FWAA", "WWWW"], PROTEIN, 24)
    assert torch.equal(again(x), lookup(x))


# ----------------------------------------------------------------------------------------------- directories, configs
def test_reward_directory_round_trip_for_every_closed_form_reward(tmp_path, liver):
    motifs, background = liver
    rewards = [GCContent(length=200), KmerCount("TATA"), PWMReward(motifs=motifs, background=background),
               PWMHitCount(motifs=motifs[:2], weights=[1.0, 2.0], background=background)]
    x = one_hot([synthetic_genome(200, seed=s).sequence for s in range(3)])
    for i, reward in enumerate(rewards):
        fp = save_reward(reward, tmp_path / str(i))
        again = load_reward(tmp_path / str(i))
        assert type(again) is type(reward) and torch.allclose(again(x), reward(x))
        assert json.loads((tmp_path / str(i) / "reward.json").read_text())["fingerprint"] == fp
    assert save_reward(GCContent(length=200), tmp_path / "gc_again") == save_reward(GCContent(length=200), tmp_path / "x")


def test_only_dlm_targets_are_built_from_a_directory(tmp_path):
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "reward.json").write_text(json.dumps(
        {"format": 1, "spec": {"_target_": "os.system", "command": "echo hi"}, "fingerprint": "x"}))
    with pytest.raises(ConfigError, match="only dlm.\\* targets are built from a saved directory"):
        load_reward(tmp_path / "evil")
    with pytest.raises(CheckpointError, match="missing or not a dlm reward record"):
        load_reward(tmp_path)


def test_every_reward_config_builds_a_reward_of_its_alphabet():
    folder = Path(CONF_DIR) / "reward"
    built = {p.stem: instantiate(OmegaConf.load(p)) for p in sorted(folder.glob("*.yaml")) if p.stem != "oracle"}
    assert set(built) == {"gc", "kmer", "jaspar_liver", "jaspar_liver_hits", "gb1_lookup"}
    for name, reward in built.items():
        assert isinstance(reward, RewardModel), name
        assert reward.alphabet == (PROTEIN if name == "gb1_lookup" else DNA)
    assert built["jaspar_liver"].differentiable and not built["jaspar_liver_hits"].differentiable


def test_non_finite_rewards_are_refused_naming_the_rows():
    check_finite_reward(torch.tensor([0.0, 1.0]))
    with pytest.raises(NonFiniteError, match=r"2 of 4 sequences \(row 1 = nan, row 3 = inf\)"):
        check_finite_reward(torch.tensor([0.0, float("nan"), 1.0, float("inf")]), reward="oracle")


def test_spearman_uses_average_ranks_for_ties():
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 25])) == pytest.approx(0.8)
