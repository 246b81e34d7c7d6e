"""dlm-bench long end to end at toy size: the (block) diffusion needle model and its AR control, trained by
the benchmark, evaluated at 1x and 2x their training length with and without NTK."""

import json

import pytest
from cli_helpers import run_cli

from dlm.io.model_dir import load_model_dir

pytestmark = pytest.mark.slow


def test_bench_long_trains_and_scores_the_ar_control_beside_the_diffusion_model(tmp_path):
    train = "train=['trainer.max_steps=3','model.dim=16','model.n_layers=1','model.n_heads=1','batch_size=4','data.curriculum_steps=1']"
    out = run_cli("dlm-bench", "long", train, f"work_dir={tmp_path}/long", "multiples=[1,2]", "ropes=[none,ntk_auto]",
                  "depths=[0.0]", "num_docs=2", "num_ppl_docs=2", "num_samples=1", f"out={tmp_path}/long.json",
                  f"plot_dir={tmp_path}/plots", cwd=tmp_path)
    result = json.loads((tmp_path / "long.json").read_text())
    assert out["out"] == f"{tmp_path}/long.json" and set(result["models"]) == {"diffusion", "ar"}
    attention = {name: load_model_dir(m["model_dir"]).model.attention for name, m in result["models"].items()}
    assert attention == {"diffusion": "block_causal", "ar": "causal"}  # same recipe, the AR arm causal
    methods = {name: {arm: a["ppl"]["method"] for arm, a in m["arms"].items()} for name, m in result["models"].items()}
    assert methods == {"diffusion": {"none": "nelbo_bound", "ntk_auto": "nelbo_bound"},
                       "ar": {"none": "exact", "ntk_auto": "exact"}}
    rows = [line for line in result["table"].splitlines()[2:]]
    assert len(rows) == 2 * 2 * 2  # models x arms x lengths
    assert all(r.endswith("| 1.00 |") for r in rows if "| 64 | 1 |" in r)  # the ratio column is to the 1x value
    assert (tmp_path / "plots" / "long_context.png").is_file()
    assert (tmp_path / "plots" / "long_context_needle_ar_ntk_auto.png").is_file()
    assert set(result["provenance"]["model_fingerprint"]) == {"diffusion", "ar"}
    for model in result["models"].values():
        assert model["training"]["trained_now"] and model["training"]["seconds"] > 0
    # retrain=true replaces the models, so the benchmark's own results of the old ones are not results to protect:
    # a rerun with other evaluation settings replaces them instead of refusing (it did, naming the file)
    again = run_cli("dlm-bench", "long", train, f"work_dir={tmp_path}/long", "multiples=[1,2]", "ropes=[none]",
                    "depths=[0.0]", "num_docs=3", "num_ppl_docs=2", "num_samples=1", "retrain=true",
                    f"out={tmp_path}/long2.json", f"plot_dir={tmp_path}/plots", cwd=tmp_path)
    second = json.loads((tmp_path / "long2.json").read_text())
    assert again["out"] == f"{tmp_path}/long2.json"
    assert all(m["training"]["trained_now"] for m in second["models"].values())
    assert {c["num_docs"] for c in json.loads((tmp_path / "long" / "needle_ar_none.json").read_text())["cells"]} == {3}
