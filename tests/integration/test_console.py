"""The console contract: refusals are one line on stderr with exit status 2 (a traceback only with
DLM_DEBUG=1), a normal run prints no Lightning chatter, ``--version`` and ``dlm`` / ``python -m dlm``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import BIN

import dlm

pytestmark = pytest.mark.slow

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
ENV.pop("DLM_DEBUG", None)
ENV.pop("HYDRA_FULL_ERROR", None)


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, env=env or ENV, capture_output=True,
                          text=True, timeout=600)


REFUSALS = {  # overrides -> a fragment of the one line
    "unknown option": (["experiment=nope"], "Available options in 'experiment': ar_owt"),
    "misspelled key": (["trainer.max_stpes=3"], "+trainer.max_stpes=3"),
    "unknown constructor argument": (["debug=tiny", "+model.dimm=8"], "unexpected keyword argument 'dimm'"),
    "mistyped run name": (["debug=tiny", "name=tpyo", "ckpt_path=last"], "runs/tpyo/checkpoints/last.ckpt"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refused_input_is_one_line_on_stderr_and_exit_2(tmp_path, case):
    overrides, fragment = REFUSALS[case]
    proc = cli("dlm-train", *overrides, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("dlm-train: error: ") and fragment in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.ckpt"))


def test_dlm_debug_shows_the_traceback(tmp_path):
    proc = cli("dlm-train", "debug=tiny", "name=tpyo", "ckpt_path=last", cwd=tmp_path, env={**ENV, "DLM_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


def test_a_normal_cpu_run_prints_no_tips_deprecations_or_hardware_lines(tmp_path):
    proc = cli("dlm-train", "debug=tiny", f"run_dir={tmp_path}/run", "trainer.limit_val_batches=1",
               "trainer.log_every_n_steps=50", cwd=tmp_path)  # 4 steps < 50: Lightning's "log more often" tip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    for chatter in ("Tip", "litlogger", "GPU available", "TPU available", "LOCAL_RANK", "deprecated",
                    "Deprecation", "Warning", "HYDRA_FULL_ERROR", "was configured so",
                    "logging interval"):
        assert chatter not in out, (chatter, out[-3000:])


def test_version_and_the_dlm_command(tmp_path):
    for args in (["dlm", "--version"], ["dlm-train", "--version"]):
        proc = cli(*args, cwd=tmp_path)
        assert proc.returncode == 0 and proc.stdout.strip() == f"dlm {dlm.__version__}", proc.stderr
    listing = subprocess.run([sys.executable, "-m", "dlm"], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert listing.returncode == 0
    for command in ("train", "eval-ppl", "sample", "eval-gen", "convert", "bench"):
        assert f"\n  {command} " in listing.stdout, listing.stdout
    unknown = cli("dlm", "trian", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr
