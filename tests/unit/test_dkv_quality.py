"""``dlm-bench dkv``'s quality rows (trained model + judge): agreement and the judge-NLL verdict.

Fails when the agreement is not computed on the same random numbers as the uncached run (a refresh-1 cache is the
uncached sampler bit for bit, so it must read exactly 1.0 and a zero difference), or when the verdict ignores it.
"""

from __future__ import annotations

import json

from model_dirs import export_char_model

from dlm.bench.dkv_speed import bench_dkv
from dlm.io.record import Family


def export(path, family: Family):
    return export_char_model(path, family, width=16)


def test_refresh_one_agrees_exactly_and_a_changed_decode_is_measured(tmp_path):
    model = {"_target_": "dlm.models.transformer.Transformer", "dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16}
    caches = {"exact": {"_target_": "dlm.cache.dkv.DKVPolicy", "variant": "decode", "refresh": 1},
              "stale": {"_target_": "dlm.cache.dkv.DKVPolicy", "variant": "decode", "refresh": 16}}
    quality = {"model_dir": str(export(tmp_path / "den", Family.MASKED)), "judge": str(export(tmp_path / "ar", Family.AR)),
               "length": 16, "num_samples": 8}
    bench_dkv(model=model, vocab_size=12, grid=[[8, 1]], caches=caches, rounds=1, threads=1, seed=3, quality=quality,
              out=str(tmp_path / "dkv.json"))
    rows = {r["cache"]: r for r in json.loads((tmp_path / "dkv.json").read_text())["quality"]}
    assert rows["exact"]["agreement"] == 1.0 and rows["exact"]["diff_vs_none"] == 0.0 and rows["exact"]["quality_met"]
    stale = rows["stale"]
    assert stale["quality_met"] == (stale["agreement"] >= 0.95 and abs(stale["diff_vs_none"]) <= 2 * stale["paired_se"])
