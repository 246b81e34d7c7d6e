"""dlm-bench design dna=true (dlm/bench/design_dna.py): the whole DNA path at quick settings on a synthetic genome
(every method, the reference metrics, the report merged beside an existing GB1 part), and the choices it makes
(alpha without the evaluation oracle, targets met or missed by their numbers)."""

from __future__ import annotations

import json
import os

import pytest

from dlm.bench.design_demo import bench_design
from dlm.bench.design_dna import choose_alpha, targets
from dlm.bench.design_runs import METHODS


def test_alpha_is_chosen_by_finetuning_reward_within_the_likelihood_limit():
    sweep = {0.1: {"mean_finetune_reward": 30.0, "app_log_lik_drop": 0.2},   # best reward, too far from p_pre
             0.3: {"mean_finetune_reward": 25.0, "app_log_lik_drop": 0.05},
             1.0: {"mean_finetune_reward": 20.0, "app_log_lik_drop": -0.01},
             0.0: {"mean_finetune_reward": 99.0, "app_log_lik_drop": 0.0}}   # alpha = 0 is never the choice
    assert choose_alpha(sweep, max_log_lik_drop=0.1) == 0.3
    assert choose_alpha(sweep, max_log_lik_drop=0.3) == 0.1
    assert choose_alpha({a: {**r, "app_log_lik_drop": r["app_log_lik_drop"] + 1} for a, r in sweep.items()},
                        max_log_lik_drop=0.1) == 1.0  # none within the limit: the smallest drop


def test_dna_targets_are_met_or_missed_by_their_numbers():
    met = targets({"drakes": {"reward_gain_sd": 2.1, "app_log_lik_drop": 0.09, "kmer_pearson_top": 0.8}})
    assert all(t["met"] for t in met.values())
    missed = targets({"drakes": {"reward_gain_sd": 1.9, "app_log_lik_drop": 0.11, "kmer_pearson_top": None}})
    assert not any(t["met"] for t in missed.values())


def test_quick_dna_bench_runs_every_method_and_keeps_the_gb1_part(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "design.json"
    gb1 = {"task": "design", "dataset": "gb1", "results": {"base": {"median_reward": 0.5}}, "dna": "not run"}
    out.write_text(json.dumps(gb1))
    line = bench_design(gb1=False, dna=True, workers=1, out=str(out),
                        dna_settings={"quick": True, "work_dir": str(tmp_path / "work"),
                                      "plot": str(tmp_path / "dna.png")})
    report = json.loads(out.read_text())
    assert report["results"] == gb1["results"] and report["dataset"] == "gb1"  # GB1 untouched
    dna = report["dna"]
    assert set(dna["results"]) == set(METHODS) and set(line["dna"]) >= set(METHODS)
    assert set(dna["sweep"]) == {"0.3", "0.0"} and dna["settings"]["alpha"] == 0.3
    for name, row in dna["results"].items():
        assert row["num_samples"] == 8 and row["eval_reward"] == "jaspar_liver_hits", name
        assert row["reward"] == "jaspar_liver" or name.startswith("drakes"), name
        assert row["reference_windows"] == 250 and row["reference_top_windows"] == 25, name  # 12 kb / 48 bp, 10 %
        assert -1 <= row["kmer_pearson_top"] <= 1 and "app_log_lik_drop" in row and "reward_gain_sd" in row
    base = dna["results"]["base"]
    assert base["reward_gain_sd"] == 0 and base["app_log_lik_drop"] == 0  # the base row is its own reference
    # matched compute: the inference methods spend more denoiser rows than the base sampler
    assert all(dna["results"][m]["network_rows_per_design"] > base["network_rows_per_design"]
               for m in ("svdd", "smc", "best_of_n"))
    assert dna["results"]["drakes"]["model"].endswith("drakes_alpha0p3/model")
    assert set(dna["targets"]) == {"reward_gain_sd", "app_log_lik_drop", "kmer_pearson_top"}
    assert (tmp_path / "dna.png").stat().st_size > 0
    assert os.path.isfile(tmp_path / "work" / "synthetic_genome.fa")


def test_the_task_config_names_only_real_arguments():
    import inspect
    from pathlib import Path

    from omegaconf import OmegaConf

    from dlm.bench.design_dna import QUICK, bench_dna

    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "task" / "design.yaml")
    assert set(cfg) - {"_target_", "_convert_"} <= set(inspect.signature(bench_design).parameters)
    dna_keys = set(inspect.signature(bench_dna).parameters)
    assert set(cfg.dna_settings) - {"quick"} <= dna_keys and set(QUICK) <= dna_keys


def test_a_dna_only_run_refuses_to_merge_into_another_report_before_compute(tmp_path):
    from dlm.errors import ConfigError

    out = tmp_path / "lsd.json"
    out.write_text(json.dumps({"task": "lsd"}))
    with pytest.raises(ConfigError, match="not a dlm-bench design report"):
        bench_design(gb1=False, dna=True, out=str(out), dna_settings={"quick": True, "work_dir": str(tmp_path / "w")})
    assert json.loads(out.read_text()) == {"task": "lsd"} and not (tmp_path / "w").exists()


def test_a_gb1_only_run_keeps_the_dna_block_of_the_report(tmp_path):
    from dlm.bench.design_demo import kept_dna_block

    out = tmp_path / "design.json"
    assert kept_dna_block(out) is None  # no report yet
    out.write_text(json.dumps({"task": "design", "dna": {"results": {"base": {}}}}))
    assert kept_dna_block(out) == {"results": {"base": {}}}
    out.write_text(json.dumps({"task": "design", "dna": "not run (dna=false)"}))
    assert kept_dna_block(out) is None
    out.write_text(json.dumps({"task": "lsd", "dna": {"results": {}}}))  # another benchmark's file
    assert kept_dna_block(out) is None
