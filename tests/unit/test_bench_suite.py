"""dlm-bench all: runs benchmarks in their own processes, records command / date / machine / status,
skips a benchmark whose prerequisite it cannot make (saying why), and renders one page."""

import json

import pytest

from dlm.bench.report import table, targets
from dlm.bench.suite import bench_all
from dlm.errors import ConfigError

TINY_TRAIN = ["model.dim=16", "model.n_layers=1", "model.n_heads=2", "vocab_size=64", "batch_size=1", "length=16",
              "repeats=1", "rounds=1", "warmup=1", "threads=1"]


def test_suite_runs_records_skips_and_renders(tmp_path):
    benches = {"train": {"quick": TINY_TRAIN, "outputs": {"out": "train.json"}},
               "block": {"needs": ["recipe"], "quick": [], "outputs": {"out": "block.json"}}}
    prepare = {"recipe": {"path": str(tmp_path / "absent"), "how": "make block-recipe", "quick": []}}
    summary = bench_all(benches=benches, prepare=prepare, quick=True, quick_out_dir=str(tmp_path / "q"))
    assert summary["benchmarks"] == {"train": "ok", "block": f"skipped: needs {tmp_path / 'absent'} (make block-recipe)"}
    records = json.loads((tmp_path / "q" / "results" / "suite.json").read_text())
    train = records["train"]
    assert train["command"].startswith("dlm-bench train model.dim=16") and train["command"].endswith(
        f"out={tmp_path / 'q' / 'results' / 'train.json'}")
    assert train["machine"]["cores"] >= 1 and train["started"].endswith("+00:00") and train["summary"]
    assert (tmp_path / "q" / "results" / "train.json").is_file()
    page = (tmp_path / "q" / "README.md").read_text()
    assert "## `train`" in page and train["command"] in page and "quick settings" in page
    assert "## `block`" in page and "No result (skipped: needs" in page


def test_unknown_benchmark_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"only=\['nope'\] are not benchmarks; valid: train"):
        bench_all(benches={"train": {}}, prepare={}, only=["nope"], out_dir=str(tmp_path))


def test_table_and_targets():
    rows = [{"a": 1.234567, "b": "x|y", "nested": {"c": 1}}, {"a": 2, "d": None}]
    assert table(rows).splitlines() == ["| a | b | d |", "|---|---|---|", "| 1.235 | x\\|y | None |",
                                        "| 2 | None | None |"]
    assert targets({"target_ratio": 1.1, "target_met": True, "rows": []}) == ["`target_ratio`: 1.1",
                                                                                "`target_met`: True"]
