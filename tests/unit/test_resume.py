"""ckpt_path=null|last|auto|<path> (dlm.train.resume) and the CSV log that survives a resume."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import pytest
import torch

from dlm.errors import CheckpointError, ConfigError
from dlm.train.csv_logger import AppendingCSVLogger
from dlm.train.resume import resolve_ckpt


def fake_checkpoint(path: Path, step: int, *, age: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"w": torch.zeros(2)}}, path)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_last_without_a_checkpoint_is_refused_naming_the_path(tmp_path):
    # a mistyped run name must not silently train from scratch
    with pytest.raises(CheckpointError, match=str(tmp_path / "typo" / "checkpoints" / "last.ckpt")) as e:
        resolve_ckpt("last", tmp_path / "typo" / "checkpoints")
    assert "ckpt_path=auto" in str(e.value)


def test_auto_starts_when_there_is_no_checkpoint_and_resumes_when_there_is(tmp_path):
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert resolve_ckpt("auto", ckpt_dir) is None
    ckpt_dir.mkdir(parents=True)
    assert resolve_ckpt("auto", ckpt_dir) is None  # an empty directory is no checkpoint
    last = fake_checkpoint(ckpt_dir / "last.ckpt", 7)
    assert resolve_ckpt("auto", ckpt_dir) == resolve_ckpt("last", ckpt_dir) == str(last)


def test_null_refuses_a_run_that_has_checkpoints(tmp_path):
    fake_checkpoint(tmp_path / "best.ckpt", 3)
    with pytest.raises(ConfigError, match="ckpt_path=last"):
        resolve_ckpt(None, tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "not_a_checkpoint"])
def test_unreadable_last_falls_back_to_the_newest_readable_and_says_so(tmp_path, capsys, damage):
    fake_checkpoint(tmp_path / "old.ckpt", 2, age=100)
    newest = fake_checkpoint(tmp_path / "best.ckpt", 4, age=10)
    last = fake_checkpoint(tmp_path / "last.ckpt", 6)
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:200])
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "text":
        last.write_text("not a checkpoint")
    else:
        torch.save({"weights": torch.zeros(2)}, last)
    for ckpt_path in ("last", "auto"):
        assert resolve_ckpt(ckpt_path, tmp_path) == str(newest)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(last) in err[0] and str(newest) in err[0] and "step 4" in err[0], err


def test_no_readable_checkpoint_is_refused_naming_each_file(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04garbage")
    (tmp_path / "best.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no readable checkpoint") as e:
        resolve_ckpt("auto", tmp_path)
    assert str(tmp_path / "last.ckpt") in str(e.value) and str(tmp_path / "best.ckpt") in str(e.value)


def test_a_named_corrupt_checkpoint_is_refused_not_replaced(tmp_path):
    fake_checkpoint(tmp_path / "good.ckpt", 3)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=str(bad)):
        resolve_ckpt(str(bad), tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_ckpt(str(tmp_path / "missing.ckpt"), tmp_path)


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_log_is_appended_across_a_resume_and_cut_at_the_resume_step(tmp_path):
    first = AppendingCSVLogger(save_dir=tmp_path, name="logs", version="")
    for step in range(6):
        first.log_metrics({"train/loss": float(step)}, step=step)
        first.save()
    first.log_metrics({"val/nll": 9.0}, step=3)
    first.save()  # the interrupted run got to step 5; its checkpoint is at step 4

    resumed = AppendingCSVLogger(save_dir=tmp_path, name="logs", version="")
    resumed.keep_before(4)  # what KeepLogHistory does at on_train_start
    for step in range(4, 8):
        resumed.log_metrics({"train/loss": float(step), "train/new": 1.0}, step=step)
        resumed.save()
    got = rows(tmp_path / "logs" / "metrics.csv")
    assert [int(r["step"]) for r in got if r["train/loss"]] == list(range(8))
    assert [(r["step"], r["val/nll"]) for r in got if r["val/nll"]] == [("3", "9.0")]
    assert all(r["train/new"] == "1.0" for r in got if int(r["step"]) >= 4 and r["train/loss"])

    fresh = AppendingCSVLogger(save_dir=tmp_path, name="logs", version="")
    fresh.keep_before(0)  # a new run in the same directory starts an empty history
    assert rows(tmp_path / "logs" / "metrics.csv") == []


def test_a_newer_slurm_preemption_checkpoint_wins_over_last(tmp_path, capsys):
    ckpt_dir = tmp_path / "checkpoints"
    fake_checkpoint(ckpt_dir / "last.ckpt", 100, age=60)
    hpc = fake_checkpoint(tmp_path / "hpc_ckpt_1.ckpt", 130)  # Lightning's SIGUSR1 save in the run directory
    assert resolve_ckpt("auto", ckpt_dir) == str(hpc)
    assert capsys.readouterr().err == ""  # a normal requeue says nothing
