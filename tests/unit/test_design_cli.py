"""dlm-design end to end on tiny models and toy rewards in tmp_path: CSV and FASTA, the summary's keys, exact KLs
where the law is enumerable, and every refusal (alphabet, length, gradient, NaN, same oracle, unknown method)
writing nothing."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from cli_helpers import BIN
from hydra import compose, initialize_config_dir

from dlm.cli import CONF_DIR
from dlm.cli import design as design_main
from dlm.data.gb1 import PROTEIN
from dlm.data.tokenizers.bio import DNATokenizer, ProteinTokenizer
from dlm.errors import ConfigError, NonFiniteError
from dlm.eval.design_job import design_to_file
from dlm.io.model_dir import load_model_dir, save_model_dir
from dlm.io.record import Family
from dlm.io.reward_dir import save_reward
from dlm.io.spec import build
from dlm.rewards.toy import GCContent, KmerCount
from dlm.samplers.ancestral import AncestralSampler

KEYS = {"method", "num_samples", "median_reward", "mean_reward", "unique_fraction", "nfe", "seconds", "provenance",
        "app_log_lik", "hamming", "fraction_above", "network_rows_per_design", "kl_to_pretrained"}


def export(path, tok, seq_len: int, seed: int = 0):
    spec = {"_target_": "dlm.models.conv.ConvDenoiser", "dim": 16, "kernel_size": 3, "dilations": [1],
            "num_stacks": 1, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id}
    torch.manual_seed(seed)
    return str(save_model_dir(path, model=build(spec), model_spec=spec, tokenizer=tok, family=Family.MASKED,
                              seq_len=seq_len, schedule_spec={"_target_": "dlm.diffusion.schedule.LogLinearSchedule"}))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("design")
    save_reward(KmerCount("W", alphabet=PROTEIN), root / "trp")
    save_reward(KmerCount("A"), root / "a_count")
    save_reward(KmerCount("A", alphabet=PROTEIN), root / "a_count_protein")
    save_reward(GCContent(), root / "gc_saved")
    return {"protein": export(root / "protein", ProteinTokenizer(), 4), "dna": export(root / "dna", DNATokenizer(), 3),
            "trp": str(root / "trp"), "a_count": str(root / "a_count"),
            "a_count_protein": str(root / "a_count_protein"), "gc_saved": str(root / "gc_saved")}


def run_design(overrides: list[str], capsys) -> dict:
    """The dlm-design task in-process (the composed config, as the console script builds it)."""
    with initialize_config_dir(config_dir=CONF_DIR + "/design", version_base="1.3"):
        cfg = compose("design", overrides=["device=cpu", "num_steps=4", "log_lik_samples=2", *overrides])
    design_main.__wrapped__(cfg)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_gb1_base_design_writes_a_csv_and_exact_numbers(models, tmp_path, capsys):
    # a small "measured library" stands in for GB1's (parsing the 46 MB table takes seconds): its top 1 % is WWWW
    table = tmp_path.parent / f"{tmp_path.name}_measured.csv"
    table.write_text("seq,hepg2\nWWWW,9\n" + "".join(f"A{a}{b}C,0.5\n" for a in "CDEFGHIKLM" for b in "CDEFGHIKLM"))
    measured = f"design_spaces.{PROTEIN}.measured"
    out = tmp_path / "designs.csv"
    s = run_design([f"model={models['protein']}", f"reward={models['trp']}", "num_samples=64", f"out={out}",
                    f"eval_reward={models['a_count_protein']}", "target_alpha=0.5",
                    f"+{measured}={{_target_: dlm.data.mpra_table.load_mpra_table, path: '{table}', "
                    f"alphabet: {PROTEIN}, length: 4}}"], capsys)
    assert KEYS | {"top1_share", "top1_share_exact", "kl_to_tilted", "kl_to_tilted_reward_bins"} <= set(s)
    lines = out.read_text().splitlines()
    assert lines[0] == "sequence,reward,eval_reward" and len(lines) == 65
    seq, reward, count_a = lines[1].split(",")
    assert len(seq) == 4 and float(reward) == seq.count("W") and float(count_a) == seq.count("A")
    # the base model *is* the pretrained model: its exact KL to it is 0 (the cell-level sample estimate is not)
    assert s["kl_exact"] and s["kl_to_pretrained"] == pytest.approx(0.0, abs=1e-9)
    assert s["kl_to_pretrained_upper"] > 1.0 and s["kl_to_pretrained_reward_bins"] == pytest.approx(0.0, abs=1e-9)
    # the top 1 % of 101 measured variants is the best one, WWWW: exactly its probability under the law
    assert 0 < s["top1_share_exact"] < 0.01 and s["optimum"]["pretrained_tilted"]["top1_share"] > s["top1_share_exact"]
    assert s["method"] == "base" and s["num_samples"] == 64 and (tmp_path / "designs.summary.json").is_file()


def test_gb1_default_evaluation_oracle_is_the_measured_fitness(models, tmp_path, capsys):
    s = run_design([f"model={models['protein']}", "num_samples=4", f"out={tmp_path / 'd.csv'}",
                    f"design_spaces.{PROTEIN}.measured=null"], capsys)
    assert s["eval_reward"] == "gb1_lookup" and s["threshold"] == 1.0 and "top1_share" not in s


def test_svdd_designs_as_fasta_with_estimated_kls(models, tmp_path, capsys):
    out = tmp_path / "designs.fa"
    s = run_design([f"model={models['dna']}", "reward=gc", f"eval_reward={models['a_count']}", "method=svdd",
                    "method.sampler.num_candidates=3", "num_samples=32", f"out={out}"], capsys)
    lines = out.read_text().splitlines()
    assert len(lines) == 64 and lines[0].startswith(">design_0 reward=") and set(lines[1]) <= set("ACGT-")
    assert not s["kl_exact"] and "SVDDSampler" in s["kl_estimated_because"]
    assert s["network_rows_per_design"] > 3 and s["reward_calls"] > 0 and s["target_alpha"] == 1.0
    assert "kl_to_tilted_reward_bins" in s and s["kl_to_tilted_reward_bins_se"] >= 0


def test_a_rerun_replaces_and_other_settings_are_refused(models, tmp_path, capsys):
    out = tmp_path / "d.csv"
    args = [f"model={models['dna']}", f"eval_reward={models['a_count']}", "num_samples=8", f"out={out}"]
    run_design(args, capsys)
    before = out.read_text()
    run_design(args, capsys)  # same settings: a rerun
    with pytest.raises(ConfigError, match="other settings"):
        run_design([*args, "seed=3"], capsys)
    assert out.read_text() == before


@pytest.mark.parametrize("overrides, match", [
    (["reward=gc"], "alphabet"),                                   # a DNA reward on the protein model
    (["reward=TRP", "length=5"], "length"),                        # the design space is 4 long
    (["reward=jaspar_liver_hits", "method=cg", "model=DNA"], "differentiable"),  # a hit count cannot guide by gradient
    (["method=svdd"], "steers with a reward"),
    (["reward=TRP", "method=drakes"], "no drakes record"),
    (["reward=TRP", "eval_reward=TRP"], "allow_same_oracle"),      # the same directory
    (["reward=TRP", "out=designs.txt"], "extension"),
])
def test_bad_input_is_refused_and_nothing_is_written(models, tmp_path, capsys, overrides, match):
    overrides = [o.replace("TRP", models["trp"]).replace("DNA", models["dna"]) for o in overrides]
    if not any(o.startswith("out=") for o in overrides):
        overrides.append(f"out={tmp_path / 'designs.csv'}")
    else:
        overrides = [f"out={tmp_path / o[4:]}" if o.startswith("out=") else o for o in overrides]
    with pytest.raises(ConfigError, match=match):
        run_design([f"model={models['protein']}", "num_samples=4", *overrides], capsys)  # a later model= wins
    assert list(tmp_path.iterdir()) == []


def test_a_named_reward_equal_to_a_saved_eval_oracle_is_refused_unless_allowed(models, tmp_path, capsys):
    args = [f"model={models['dna']}", "reward=gc", f"eval_reward={models['gc_saved']}", "num_samples=4",
            f"out={tmp_path / 'd.csv'}"]
    with pytest.raises(ConfigError, match="same fingerprint"):
        run_design(args, capsys)
    assert list(tmp_path.iterdir()) == []
    assert run_design([*args, "allow_same_oracle=true"], capsys)["num_samples"] == 4


def test_a_drakes_model_is_sampled_exactly_and_checked_against_its_own_reward(models, tmp_path, capsys):
    spec = {"_target_": "dlm.models.conv.ConvDenoiser", "dim": 16, "kernel_size": 3, "dilations": [1],
            "num_stacks": 1, "vocab_size": 8, "mask_id": 7}
    torch.manual_seed(5)  # other weights than the base model: a non-zero exact KL
    record = {"finetuned_from": models["dna"], "num_steps": 3, "alpha": 0.5,
              "reward": {"_target_": "dlm.rewards.reward_dir.load_reward", "path": models["a_count"]}}
    drakes = save_model_dir(tmp_path / "drakes", model=build(spec), model_spec=spec, tokenizer=DNATokenizer(),
                            family=Family.MASKED, seq_len=3, extra={"drakes": record},
                            schedule_spec={"_target_": "dlm.diffusion.schedule.LogLinearSchedule"})
    args = [f"model={drakes}", "method=drakes", "num_samples=16", "num_steps=null", f"out={tmp_path / 'out' / 'd.csv'}"]
    with pytest.raises(ConfigError, match="same fingerprint"):  # its fine-tuning reward, read from model.json
        run_design([*args, f"eval_reward={models['a_count']}"], capsys)
    assert not (tmp_path / "out").exists()
    s = run_design([*args, "eval_reward=gc"], capsys)
    assert s["kl_exact"] and s["kl_to_pretrained"] > 0 and s["pretrained"] == models["dna"]
    assert s["reward"] == models["a_count"] and s["target_alpha"] == 0.5 and s["nfe"] <= 3


def test_nan_rewards_stop_the_job_and_nothing_is_written(models, tmp_path):
    class NaNReward:
        alphabet, length, differentiable = "ACGT", None, True

        def __call__(self, probs):
            return torch.full(probs.shape[:1], float("nan"))

    loaded = load_model_dir(models["dna"])
    with pytest.raises(NonFiniteError):
        design_to_file(loaded=loaded, sampler=AncestralSampler(num_steps=3), method="base", needs_gradient=False,
                       reward=NaNReward(), reward_label="nan", reward_path=None, eval_reward=KmerCount("A"),
                       eval_label="a", eval_path=None, num_samples=4, out=tmp_path / "d.csv", allow_same_oracle=True)
    assert list(tmp_path.iterdir()) == []


def test_the_console_script_refuses_in_one_line(models, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(BIN / "dlm"), "design", f"model={models['dna']}", f"reward={models['trp']}",
                           f"out={tmp_path / 'd.csv'}"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "alphabet" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_benchmark_targets_are_met_or_missed_by_their_numbers():
    from dlm.bench.design_demo import targets

    row = {"median_reward": 0.01, "top1_share": 0.01, "kl_to_tilted_reward_bins": 3.0, "unique_fraction": 0.9}
    results = {m: dict(row) for m in ("base", "drakes", "drakes_alpha0", "svdd", "smc", "cg", "best_of_n")}
    results["drakes"] |= {"median_reward": 0.03, "top1_share": 0.2, "kl_to_tilted_reward_bins": 1.0,
                          "unique_fraction": 0.5}
    results["drakes_alpha0"]["unique_fraction"] = 0.15
    assert all(t["met"] for t in targets(results).values())
    results["cg"]["kl_to_tilted_reward_bins"] = 0.5  # one inference method closer to the optimum
    results["drakes_alpha0"]["unique_fraction"] = 0.2  # 0.4x: not collapsed enough
    met = targets(results)
    assert not met["kl_to_tilted_below_inference"]["met"] and not met["alpha0_unique_ratio"]["met"]


def test_the_design_benchmark_refuses_to_run_nothing_and_bad_dna_settings_before_compute(tmp_path):
    from dlm.bench.design_demo import bench_design

    with pytest.raises(ConfigError, match="nothing to run"):
        bench_design(gb1=False, dna=False, out=str(tmp_path / "d.json"))
    with pytest.raises(ConfigError, match="dna_settings.genome"):
        bench_design(gb1=False, dna=True, dna_settings={"genome": str(tmp_path / "none.fa")}, out=str(tmp_path / "d.json"))
    with pytest.raises(ConfigError, match="unknown key"):
        bench_design(gb1=False, dna=True, dna_settings={"num_sample": 3}, out=str(tmp_path / "d.json"))
    assert list(tmp_path.iterdir()) == []


def test_dna_designs_are_compared_with_the_top_windows_of_a_reference(models, tmp_path, capsys):
    dna12 = export(tmp_path / "dna12", DNATokenizer(), 12)
    g = torch.Generator().manual_seed(0)
    genome = "".join("ACGT"[i] for i in torch.randint(0, 4, (600,), generator=g).tolist())
    fasta = tmp_path / "genome.fa"
    fasta.write_text(">g\n" + genome + "\n")
    args = [f"model={dna12}", "eval_reward=gc", "num_samples=16", f"out={tmp_path / 'd.csv'}"]
    plain = run_design(args, capsys)
    assert "kmer_pearson_top" not in plain and "reference" not in plain["settings"]  # no reference: no metrics
    s = run_design([*args, f"reference.path={fasta}", "reference.top_fraction=0.2", "overwrite=true"], capsys)
    assert s["reference_windows"] == 50 and s["reference_top_windows"] == 10 and s["motifs"] == 4
    assert s["reference_ranked_by"] == "eval_reward" and s["settings"]["reference"]["top_fraction"] == 0.2
    # the top windows are the GC-richest (the evaluation oracle ranks them): their least GC is above the median
    windows = [genome[i:i + 12] for i in range(0, 600, 12)]
    gc = sorted(sum(c in "GC" for c in w) / 12 for w in windows)
    assert s["reference_top_value_min"] == pytest.approx(gc[-10]) and gc[-10] > gc[25]
    for key in ("kmer_pearson_top", "kmer_pearson_all", "motif_pearson_top", "motif_spearman_top"):
        assert -1.0 <= s[key] <= 1.0
    table = tmp_path / "mpra.tsv"
    table.write_text("seq\thepg2\n" + "".join(f"{w}\t{i}\n" for i, w in enumerate(windows)))
    t = run_design([*args, f"reference.path={table}", "overwrite=true"], capsys)
    assert t["reference_ranked_by"] == "hepg2" and t["reference_top_value_min"] == 45.0  # top 10 % of rows 0..49
    with pytest.raises(ConfigError, match="needs 12"):  # a table of other lengths, refused before sampling
        table.write_text("seq\thepg2\nACGT\t1\n")
        run_design([*args, f"reference.path={table}", f"out={tmp_path / 'e.csv'}"], capsys)
    assert not (tmp_path / "e.csv").exists()
