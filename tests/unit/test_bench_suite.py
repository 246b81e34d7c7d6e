"""dlm-bench all: runs benchmarks in their own processes, records command / date / machine / status,
skips a benchmark whose prerequisite it cannot make (saying why), and renders one page."""

import json

import pytest

from dlm.bench.report import render, table, targets
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


def test_quick_mode_checks_and_makes_the_quick_prerequisite(tmp_path, monkeypatch):
    import dlm.bench.suite as suite

    made: list[list[str]] = []

    def fake_run(command, log):  # records the dlm command lines instead of running them
        made.append(command[3:])
        return 0, '{"ok": 1}'

    monkeypatch.setattr(suite, "_run", fake_run)
    (tmp_path / "full.json").write_text("{}")  # the full recipe's model exists: quick mode must not use it
    prepare = {"recipe": {"path": str(tmp_path / "full.json"), "quick_path": str(tmp_path / "quick.json"),
                          "quick": [["train", "a=1"], ["convert", "b=2"]], "full": []}}
    benches = {"block": {"needs": ["recipe"], "quick": ["x=1"], "full": [], "outputs": {"out": "block.json"}}}
    summary = bench_all(benches=benches, prepare=prepare, quick=True, quick_out_dir=str(tmp_path / "q"))
    assert summary["benchmarks"] == {"block": "ok"}
    assert made == [["train", "a=1"], ["convert", "b=2"], ["bench", "block", "x=1", f"out={tmp_path / 'q/results/block.json'}"]]
    made.clear()
    bench_all(benches=benches, prepare=prepare, quick=False, out_dir=str(tmp_path / "f"))
    assert made == [["bench", "block", f"out={tmp_path / 'f/results/block.json'}"]]  # full mode: its own file exists


def test_unknown_benchmark_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"only=\['nope'\] are not benchmarks; valid: train"):
        bench_all(benches={"train": {}}, prepare={}, only=["nope"], out_dir=str(tmp_path))


def test_table_and_targets():
    rows = [{"a": 1.234567, "b": "x|y", "nested": {"c": 1}}, {"a": 2, "d": None}]
    assert table(rows).splitlines() == ["| a | b | d |", "|---|---|---|", "| 1.235 | x\\|y | None |",
                                        "| 2 | None | None |"]
    assert targets({"target_ratio": 1.1, "target_met": True, "rows": []}) == ["`target_ratio`: 1.1",
                                                                                "`target_met`: True"]


def test_page_includes_each_benchmarks_notes_and_needs_none(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "results" / "alpha.json").write_text(json.dumps({"rows": [{"x": 1.5}], "target_met": True}))
    (tmp_path / "results" / "beta.json").write_text(json.dumps({"rows": [{"y": 2}]}))
    (tmp_path / "notes" / "alpha.md").write_text("Measured on 2 cores: **0.986×** (target ≤ 1.10).\n\n| a |\n|---|\n")
    (tmp_path / "notes" / "gamma.md").write_text("Not run yet; the lead will fill this in.\n")
    benches = {n: {"outputs": {"out": f"{n}.json"}} for n in ("alpha", "beta", "gamma")}
    page = render(tmp_path, benches=benches, records={}, quick=False).read_text()
    alpha, beta, gamma = page.split("## `alpha`")[1].split("## `beta`")[0], *page.split("## `beta`")[1].split(
        "## `gamma`")
    assert "### Notes (reference run)\n\nMeasured on 2 cores: **0.986×** (target ≤ 1.10).\n\n| a |\n|---|\n" in alpha
    assert alpha.index("| x |") < alpha.index("`target_met`: True") < alpha.index("### Notes")
    assert "how it was run is in the notes below" in alpha
    assert "Notes" not in beta and "| y |" in beta and "not run by the suite." in beta  # no notes file: fine
    assert "No result (not run yet)" in gamma and "Not run yet; the lead will fill this in." in gamma
    assert render(tmp_path, benches=benches, records={}, quick=False).read_text() == page  # deterministic
