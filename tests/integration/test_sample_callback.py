"""callbacks=sample: samples written at every validation of a real (tiny) training run."""

import csv
import json

import pytest
from hydra_helpers import compose_config

from dlm.train.run import run

pytestmark = pytest.mark.slow


def test_sample_callback_writes_jsonl_at_each_validation(tmp_path):
    cfg = compose_config("train", ["debug=tiny", "callbacks=sample", f"run_dir={tmp_path}/r",
                                   "callbacks.sample.sampler.num_steps=8"])
    run(cfg)
    files = sorted((tmp_path / "r" / "samples").glob("step_*.jsonl"))
    # debug=tiny validates at steps 2 and 4; the sanity check writes nothing
    assert [f.name for f in files] == ["step_2.jsonl", "step_4.jsonl"]
    for f in files:
        recs = [json.loads(line) for line in f.read_text().splitlines()]
        assert len(recs) == 4
        assert all(len(r["tokens"]) == cfg.data.seq_len and isinstance(r["text"], str) for r in recs)
    assert not [p for p in (tmp_path / "r" / "samples").iterdir() if p.name.startswith(".")]
    with open(tmp_path / "r" / "logs" / "metrics.csv") as fh:
        assert any(row.get("val/sample_nfe") for row in csv.DictReader(fh))
