"""dlm-bench lsd in quick mode on tiny models, the matched-entropy temperature search, and the schedule
display of ``dlm-sample ... info=true``."""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest
import torch
from cli_helpers import BIN

from dlm.bench.lsd_quality import RowRunner, Scored, bench_lsd, match_temperature, self_closure
from dlm.data.tokenizers.char import CharTokenizer
from dlm.errors import ConfigError
from dlm.eval.gen_ppl import load_judge
from dlm.eval.schedule_info import schedule_info, schedule_table
from dlm.io.model_dir import load_model_dir, save_model_dir
from dlm.io.record import Family
from dlm.io.schedule_dir import denoiser_fingerprint, save_schedule_dir
from dlm.io.spec import build
from dlm.samplers.ancestral import AncestralSampler
from dlm.samplers.learned_schedule import StepSchedule

SEQ = 16


def export(path, family: Family, seed: int):
    tok = CharTokenizer()
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": SEQ, "attention": family.attention, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id,
            "init_std": 0.2}
    torch.manual_seed(seed)
    return save_model_dir(path, model=build(spec), model_spec=spec, tokenizer=tok, family=family, seq_len=SEQ,
                          schedule_spec={"_target_": "dlm.diffusion.schedule.LogLinearSchedule"})


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lsd_bench")
    return {"radd": export(root / "radd", Family.MASKED, 0), "judge": export(root / "judge", Family.AR, 1), "root": root}


def softmax_entropy(logits: torch.Tensor):
    """A toy 'sampler': the entropy of softmax(logits / T), increasing in T from 0 to log V."""
    return lambda t: float(torch.distributions.Categorical(logits=logits / t).entropy())


TOY = torch.tensor([3.0, 1.0, 0.5, 0.0, -1.0], dtype=torch.float64)


@pytest.mark.parametrize("target_temperature", [0.7, 1.0, 1.6])
def test_the_temperature_search_matches_a_reachable_entropy(target_temperature):
    entropy_at = softmax_entropy(TOY)
    target = entropy_at(target_temperature)
    found = match_temperature(entropy_at, target, tolerance=0.02, refine_tolerance=0.0025,
                              temperature_range=(0.5, 2.0), max_evals=8)
    assert abs(found.entropy / target - 1) <= 0.02 and abs(found.relative_error) <= 0.02
    assert found.entropy == pytest.approx(entropy_at(found.temperature))
    assert len(found.evaluations) <= 8
    # refined to within 0.25 % when the budget allows: the temperature itself is close
    assert abs(found.relative_error) <= 0.0025 and found.temperature == pytest.approx(target_temperature, rel=0.05)


def test_an_unreachable_entropy_is_refused_naming_the_range():
    entropy_at = softmax_entropy(TOY)
    too_high = math.log(len(TOY)) * 1.5  # above the uniform distribution's entropy: no temperature reaches it
    with pytest.raises(ConfigError, match=r"temperature_range=\[0.5, 2.0\].*widen temperature_range"):
        match_temperature(entropy_at, too_high, temperature_range=(0.5, 2.0), max_evals=20)
    with pytest.raises(ConfigError, match="temperature_range"):  # reachable in principle, not in this range
        match_temperature(entropy_at, entropy_at(5.0), temperature_range=(0.5, 2.0), max_evals=20)


def test_a_search_out_of_evaluations_is_refused_naming_max_search_evals():
    entropy_at = softmax_entropy(TOY)
    with pytest.raises(ConfigError, match="max_search_evals=2"):
        match_temperature(entropy_at, entropy_at(0.55), temperature_range=(0.5, 2.0), max_evals=2)


def test_quick_bench_runs_end_to_end(dirs, tmp_path):
    out, plot = tmp_path / "lsd.json", tmp_path / "lsd.png"
    summary = bench_lsd(radd=str(dirs["radd"]), judge=str(dirs["judge"]), work_dir=str(tmp_path / "work"), quick=True,
                        out=str(out), plot=str(plot))
    report = json.loads(out.read_text())
    assert summary["out"] == str(out) and plot.stat().st_size > 0
    for key in ("rows", "closures", "training", "target", "settings", "seeds", "provenance", "load_average",
                "wall_seconds", "judge", "radd"):
        assert key in report, key
    assert report["provenance"]["dlm_version"] and set(report["provenance"]["model_fingerprint"]) == {"radd", "judge"}
    assert report["settings"]["quick"] and report["settings"]["steps"] == [2]
    # an LSD and an LSD+ schedule trained through dlm-train, with their seconds and learned values
    assert {(t["variant"], t["steps"]) for t in report["training"]} == {("lsd", 2), ("lsd_plus", 2)}
    for t in report["training"]:
        assert t["train_seconds"] > 0 and len(t["logit_scales"]) == 2 and len(t["timesteps"]) == 3
        assert (tmp_path / "work" / f"{t['variant']}_2" / "schedule" / "schedule.json").is_file()
    families = {r["family"] for r in report["rows"]}
    assert {"teacher", "base", "lsd", "lsd_plus"} <= families
    for r in report["rows"]:
        if r.get("matched") is False:  # a refused search is recorded with its one-line reason
            assert "temperature_range" in r["error"] or "max_search_evals" in r["error"]
            continue
        assert {"gen_ppl", "gen_ppl_se", "entropy", "path_entropy", "seconds_per_sample", "temperature"} <= set(r)
        assert r["path_entropy"] > 0  # every row's sampler records its draws
        assert r["gen_ppl"] > 0 and r["gen_ppl_se"] >= 0
        if r.get("matched"):  # matched rows hit the entropy tolerance
            assert abs(r["entropy_relative_error"]) <= report["settings"]["entropy_tolerance"]
    assert {r.get("matched_on") for r in report["rows"] if r.get("matched")} <= {"entropy", "path_entropy"}
    assert any(c["self"] is not None for c in report["closures"])  # the model's own closure was reached
    for c in report["closures"]:
        assert {"variant", "steps", "matched_temperature", "gap", "closed", "closure", "unmatched", "self"} <= set(c)
        if c["self"] is not None:  # the model's own closure: its base matched on path entropy, all rows scored
            assert {"matched_temperature", "gap", "closed", "closure", "closure_se", "judge"} <= set(c["self"])
            assert all("self_nelbo" in r for r in report["rows"] if r["family"] in ("teacher", c["variant"]))
    assert set(report["target"]) >= {"closure", "closure_se", "met", "max_train_seconds", "train_time_met"}


def test_bench_refuses_a_target_outside_the_steps(dirs, tmp_path):
    with pytest.raises(ConfigError, match="target_steps=8"):
        bench_lsd(radd=str(dirs["radd"]), judge=str(dirs["judge"]), steps=[4], target_steps=8, out=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="teacher_steps=4"):
        bench_lsd(radd=str(dirs["radd"]), judge=str(dirs["judge"]), steps=[4], target_steps=4, teacher_steps=4,
                  out=str(tmp_path / "x"))


@pytest.fixture
def schedule_dir(dirs, tmp_path):
    steps = StepSchedule(4, learn_grid=True)
    with torch.no_grad():
        steps.grid_logits.copy_(torch.tensor([0.5, -0.2, 0.1, -0.4], dtype=torch.float64))
        steps.log_logit_scales.copy_(torch.tensor([0.2, -0.1, 0.05, 0.0], dtype=torch.float64))
    model = load_model_dir(dirs["radd"]).model
    meta = {"num_steps": 4, "learn_grid": True, "learn_rates": False, "t_min": 0.0, "teacher_steps": 16,
            "teacher_state": "student", "fingerprint": denoiser_fingerprint(model), "noise_schedule": None,
            "trained_for": str(dirs["radd"]), "step": 7, **steps.describe()}
    return save_schedule_dir(tmp_path / "schedule", state=steps.state_dict(), meta=meta), steps


def test_schedule_info_shows_the_learned_grid_and_scalars(dirs, schedule_dir):
    path, steps = schedule_dir
    info = schedule_info(path, load_model_dir(dirs["radd"]).model)
    t, c = steps.timesteps().tolist(), steps.logit_scales().tolist()
    assert info["kind"] == "lsd_plus" and info["num_steps"] == 4 and info["fingerprint_matches"]
    assert [r["t_start"] for r in info["steps"]] == t[:-1] and [r["t_end"] for r in info["steps"]] == t[1:]
    assert [r["logit_scale"] for r in info["steps"]] == c and all(r["rate_scale"] == 1.0 for r in info["steps"])
    assert sum(r["delta"] for r in info["steps"]) == pytest.approx(1.0)
    assert info["teacher_steps"] == 16 and info["step"] == 7
    table = schedule_table(info).splitlines()
    assert len(table) == 2 + 4 and "lsd_plus" in table[0] and "matches" in table[0]
    assert table[2].split()[:2] == ["0", "1.00000"] and f"{c[0]:.4f}" in table[2]
    other = schedule_info(path, load_model_dir(dirs["judge"]).model)  # another network: named as a mismatch
    assert not other["fingerprint_matches"] and "does NOT match" in schedule_table(other)


def run_sample(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(BIN / "dlm-sample"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_dlm_sample_info_prints_the_schedule_and_does_not_sample(schedule_dir, tmp_path):
    path, steps = schedule_dir
    proc = run_sample("sampler=lsd_plus", f"sampler.schedule.path={path}", "info=true", f"out={tmp_path / 'x.jsonl'}",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    info = json.loads(lines[-1])
    assert info["num_steps"] == 4 and len(info["steps"]) == 4 and "t_n" in lines[1] and "c_n" in lines[1]
    assert not (tmp_path / "x.jsonl").exists()  # nothing sampled
    refused = run_sample("sampler=ancestral", "info=true", cwd=tmp_path)
    assert refused.returncode == 2 and "sampler.schedule.path" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_an_empty_sample_drops_out_of_the_pooled_score_instead_of_stopping_the_run(dirs):
    # a sampler that stops at an early EOS leaves an empty text; scoring it alone used to raise "no token to
    # score" and end the whole benchmark
    from dlm.bench.judged_quality import gen_ppl_with_se, sample_nlls
    from dlm.eval.gen_ppl import load_judge

    judge = load_judge(str(dirs["judge"]), device="cpu")
    texts = ["def f(x):", "return x"]
    alone = sample_nlls(texts, judge)
    with_empty = sample_nlls([texts[0], "", texts[1]], judge)
    assert with_empty.tokens.tolist() == [alone.tokens[0], 0.0, alone.tokens[1]] and with_empty.nll[1] == 0.0
    assert with_empty.mean() == pytest.approx(alone.mean(), rel=1e-12)  # pooled over tokens: unchanged
    assert math.isfinite(gen_ppl_with_se([texts[0], "", texts[1]], judge)["gen_ppl"])


def test_the_models_own_closure_is_the_paired_gain_over_the_gap_at_the_teachers_entropy():
    """(NELBO(base) - NELBO(student)) / (NELBO(base at the teacher's entropy) - NELBO(teacher)), the numerator's
    error from the paired per-sample differences: a student that tracks the base sample by sample has a tiny
    error, one whose samples are shuffled against the base's (the same mean) a large one; the gap is the
    teacher's, not the matched base's."""
    def scored(values):
        t = torch.tensor(values, dtype=torch.float64)
        return Scored(row={"self_nelbo": float(t.mean()), "self_nelbo_se": float(t.std() / len(values) ** 0.5)},
                      scores=None, tokens=torch.zeros(len(values), 1), path_nll=t, self_nelbo=t)

    base = scored([3.0, 3.2, 2.8, 3.4])
    at_teacher = scored([3.5, 3.7, 3.3, 3.9])
    teacher = scored([2.5, 2.7, 2.3, 2.9])
    paired = scored([2.5, 2.7, 2.3, 2.9])  # the base minus 0.5 on every sample
    c = self_closure(base, paired, at_teacher, teacher)
    assert c["closure"] == pytest.approx(0.5) and c["gap"] == pytest.approx(1.0) and c["closed_se"] == pytest.approx(0)
    shuffled = scored([2.9, 2.3, 2.7, 2.5])
    assert self_closure(base, shuffled, at_teacher, teacher)["closed_se"] > 0.1
    assert self_closure(base, base, at_teacher, teacher)["closure"] == 0.0
    assert self_closure(base, paired, teacher, at_teacher)["closure"] is None  # no gap: no fraction


def test_a_row_whose_sampler_records_no_draws_is_refused(dirs, tmp_path):
    """The path entropy comes from the recorded draws: a sampler built without them is named, not read as 0."""
    run = RowRunner(model_dir=str(dirs["radd"]), judge=load_judge(str(dirs["judge"]), device="cpu"), length=8,
                    num_samples=2, batch_size=2, seed=0, tmp=tmp_path, denoiser=load_model_dir(dirs["radd"]))
    with pytest.raises(ConfigError, match="record_trajectory=True"):
        run(AncestralSampler(num_steps=2), name="plain")
    assert run(AncestralSampler(num_steps=2, record_trajectory=True), name="recorded").row["path_entropy"] > 0
