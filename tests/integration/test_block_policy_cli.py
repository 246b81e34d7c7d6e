"""dlm-train-policy end to end: tiny block denoiser + tiny AR judge from dlm-train, REINFORCE through the
CLI, then dlm-sample with sampler=block_dynamic reading the saved policy.

With a large step cost the return is dominated by -step_cost x NFE/token, which falls as blocks grow
(one commit pass per block), so the trained greedy policy must choose the largest size and match
the best fixed size's return; a policy that did not learn (or learned the wrong way) stays at or
drifts towards the smaller size and fails the assertions."""

import json

import pytest
from cli_helpers import run_cli

pytestmark = pytest.mark.slow


def test_policy_learns_the_cheapest_block_size_and_samples(tmp_path):
    block = run_cli("dlm-train", "debug=tiny", "objective=block", "objective.block_size=4",
                    "model.attention=block_causal", "+model.block_size=4", f"run_dir={tmp_path}/block",
                    cwd=tmp_path)["model_dir"]
    ar = run_cli("dlm-train", "debug=tiny", "objective=ar", "model.attention=causal", f"run_dir={tmp_path}/ar",
                 cwd=tmp_path)["model_dir"]
    summary = run_cli("dlm-train-policy", f"model={block}", f"reward_model={ar}", "policy.sizes=[2,8]",
                      "step_cost=5.0", "steps=40", "batch_size=2", "length=32", "lr=0.05", "eval_rollouts=2",
                      f"out={tmp_path}/policy", cwd=tmp_path)
    assert summary["best_fixed_size"] == 8
    assert summary["policy"]["mean_block_size"] == 8.0, summary
    assert summary["return_gain_over_best_fixed"] == pytest.approx(0.0, abs=1e-6)
    log = [json.loads(line) for line in (tmp_path / "policy" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 40 and sum(r["mean_block_size"] for r in log[-10:]) > sum(r["mean_block_size"] for r in log[:10])

    out = run_cli("dlm-sample", f"model={block}", "sampler=block_dynamic",
                  f"sampler.block_size_policy.path={summary['policy_dir']}", "num_samples=2", "length=32",
                  f"out={tmp_path}/dynamic.jsonl", cwd=tmp_path)
    assert out["samples"] == 2


def test_policy_refuses_a_judge_of_the_wrong_kind(tmp_path):
    block = run_cli("dlm-train", "debug=tiny", "objective=block", "objective.block_size=4",
                    "model.attention=block_causal", "+model.block_size=4", f"run_dir={tmp_path}/block",
                    cwd=tmp_path)["model_dir"]
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([str(Path(sys.executable).parent / "dlm-train-policy"), f"model={block}",
                           f"reward_model={block}", "steps=1", f"out={tmp_path}/p"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "reward_model=" in proc.stderr and "autoregressive" in proc.stderr
