"""Fault tests: a training process killed with SIGKILL, resumed, ends exactly where an uninterrupted run does.

For validation-time checkpoints (the default ``callbacks.checkpoint``), step-interval checkpoints
(``callbacks.checkpoint.every_n_train_steps``) and a corrupt ``last.ckpt`` after the kill (the run
falls back to the newest readable checkpoint and says so): every logged train loss, learning rate and
validation NLL equals the uninterrupted run's, and ``logs/metrics.csv`` holds the whole history, each
step once.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import BIN

pytestmark = pytest.mark.slow

STEPS = 24
COMMON = ["debug=tiny", f"trainer.max_steps={STEPS}", "trainer.val_check_interval=4", "trainer.limit_val_batches=2"]
STEP_INTERVAL = ["callbacks.checkpoint.monitor=null", "callbacks.checkpoint.every_n_train_steps=3"]
COMPARED = ("train/loss", "train/mask_rate", "lr-AdamW/pg1", "val/nll", "val/ppl")  # not timings (tokens/s)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "dlm-train"), *COMMON, f"run_dir={run_dir}", *overrides], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def train_and_kill(run_dir: Path, *overrides: str) -> int:
    """Start a run, SIGKILL it as soon as its first checkpoint exists; the step of the checkpoint left."""
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([str(BIN / "dlm-train"), *COMMON, f"run_dir={run_dir}", *overrides], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{err[-3000:]}"
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < step < STEPS
    return step


def history(run_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """metric -> every (step, value) row of metrics.csv, in file order (duplicates kept)."""
    out: dict[str, list[tuple[int, str]]] = {k: [] for k in COMPARED}
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            for k in COMPARED:
                if row.get(k):
                    out[k].append((int(row["step"]), row[k]))
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, list[tuple[int, str]]]:
    run_dir = tmp_path_factory.mktemp("fault") / "full"
    train(run_dir)  # checkpointing draws no random numbers: one reference run serves every case
    full = history(run_dir)
    assert [s for s, _ in full["train/loss"]] == list(range(STEPS))
    assert len(full["val/nll"]) == STEPS // 4
    return full


def assert_same_history(resumed: dict, full: dict) -> None:
    for key in COMPARED:
        assert [s for s, _ in resumed[key]] == [s for s, _ in full[key]], (key, resumed[key], full[key])
        for (step, got), (_, want) in zip(resumed[key], full[key], strict=True):
            assert float(got) == pytest.approx(float(want), rel=1e-6, abs=1e-7), (key, step, got, want)


@pytest.mark.parametrize("checkpoints", ["validation", "step_interval"])
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted, checkpoints):
    extra = STEP_INTERVAL if checkpoints == "step_interval" else []
    run_dir = tmp_path / "killed"
    step = train_and_kill(run_dir, *extra)
    if checkpoints == "step_interval":
        assert step % 3 == 0, step
    train(run_dir, *extra, "ckpt_path=last")
    assert_same_history(history(run_dir), uninterrupted)


KILLER = """
import os, signal
from lightning.pytorch.callbacks import Checkpoint

class KillAfterCheckpoint(Checkpoint):
    # a Checkpoint, so Lightning runs it after the run's ModelCheckpoint: it kills the process just after
    # the step-interval checkpoint of `step` is written, before Lightning logs that step's train metrics
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
"""


def kill_after_checkpoint(tmp_path: Path, *, step: int) -> Path:
    """A step-interval run SIGKILLed right after the checkpoint of ``step`` (the KILLER callback); its run dir."""
    (tmp_path / "killer.py").write_text(KILLER)
    run_dir = tmp_path / "killed"
    kill = ["+callbacks.kill._target_=killer.KillAfterCheckpoint", f"+callbacks.kill.step={step}"]
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), ENV.get("PYTHONPATH")]))}
    proc = subprocess.run([str(BIN / "dlm-train"), *COMMON, f"run_dir={run_dir}", *STEP_INTERVAL, *kill], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    return run_dir


def test_kill_right_after_a_step_checkpoint_keeps_that_steps_row(tmp_path, uninterrupted):
    """The worst moment, made deterministic: SIGKILL between the checkpoint of step 3 and Lightning's log
    of its metrics. The row must already be on disk (StepRowBeforeCheckpoint); without it the row of
    step 2 is missing from the resumed history (this failed before the fix)."""
    run_dir = kill_after_checkpoint(tmp_path, step=3)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
    train(run_dir, *STEP_INTERVAL, "ckpt_path=last")
    assert_same_history(history(run_dir), uninterrupted)


def test_corrupt_last_ckpt_falls_back_to_newest_readable_and_says_so(tmp_path, uninterrupted):
    run_dir = tmp_path / "corrupt"
    train_and_kill(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4096])  # a truncated write
    best = run_dir / "checkpoints" / "best.ckpt"
    proc = train(run_dir, "ckpt_path=auto")
    notes = [line for line in proc.stderr.splitlines() if str(last) in line]
    assert len(notes) == 1 and str(best) in notes[0], proc.stderr[-3000:]
    assert_same_history(history(run_dir), uninterrupted)


def test_kill_right_after_the_step_checkpoint_of_a_validation_step_keeps_that_validation(tmp_path, uninterrupted):
    """Step 12 is both a step-interval checkpoint (every 3) and a validation step (every 4): Lightning validates
    after on_train_batch_end, where the step checkpoint is written. SIGKILL in between, then resume: the
    validation of step 12 must be in the history once, with the uninterrupted run's value."""
    run_dir = kill_after_checkpoint(tmp_path, step=12)
    train(run_dir, *STEP_INTERVAL, "ckpt_path=last")
    assert_same_history(history(run_dir), uninterrupted)
