"""callbacks=clip_search through dlm-train: the chosen interval is logged, validation stays on the full
interval (val/nll is the bound), the interval is checkpointed and a resumed run restores it."""

import csv

import pytest
import torch
from cli_helpers import run_cli

pytestmark = pytest.mark.slow

BLOCK = ["debug=tiny", "objective=block", "objective.block_size=4", "model.attention=block_causal",
         "+model.block_size=4", "callbacks=clip_search", "callbacks.clip_search.widths=[0.5]",
         "callbacks.clip_search.delta=0.25"]


def test_clip_search_logs_checkpoints_and_resumes(tmp_path):
    run_cli("dlm-train", *BLOCK, f"run_dir={tmp_path}/run", cwd=tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv")))
    chosen = [(float(r["clip/t_min"]), float(r["clip/t_max"])) for r in rows if r.get("clip/t_min")]
    assert chosen, "no clip/t_min logged"
    allowed = {(1e-3, 1.0), (1e-6, 0.5), (0.25, 0.75), (0.5, 1.0)}
    assert all(any(abs(a - x) < 1e-9 and abs(b - y) < 1e-9 for x, y in allowed) for a, b in chosen), chosen
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if "ClipIntervalSearch" in k)
    assert state["interval"] is not None
    resumed = run_cli("dlm-train", *BLOCK, "trainer.max_steps=6", "ckpt_path=last", f"run_dir={tmp_path}/run",
                      cwd=tmp_path)
    assert resumed["step"] == 6


def test_clip_search_refuses_a_non_block_objective(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([str(Path(sys.executable).parent / "dlm-train"), "debug=tiny", "callbacks=clip_search",
                           f"run_dir={tmp_path}/r"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "objective=block" in proc.stderr
