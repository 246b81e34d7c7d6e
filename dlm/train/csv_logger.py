"""CSV metrics that survive a resume: ``logs/metrics.csv`` holds the whole history of a run.

Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts, so a resumed run kept only
the rows from its resume step on. This logger appends instead; at the start of training
``KeepLogHistory`` (dlm.train.callbacks) drops the rows from the checkpoint's step on, which the
interrupted run wrote after its checkpoint and the resumed run logs again, so every step appears
once, exactly as in an uninterrupted run.

Lightning logs a step's train metrics *after* the ``on_train_batch_end`` hooks, where ModelCheckpoint
saves a step-interval checkpoint, so a kill between the checkpoint and the log lost that step's row for
good (the resumed run starts after it). ``StepRowBeforeCheckpoint`` (dlm.train.callbacks) writes the row
first through ``write_step_row``; when Lightning then logs the same step, only keys not yet written (or
with a different value) make a row, so every step still appears once.
"""

from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from dlm.io.atomic import atomic_file


class AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer that keeps an existing metrics.csv (and its columns) instead of deleting it."""

    def _check_log_dir_exists(self) -> None:  # called by the base __init__ in place of the deletion
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def keep_before(self, step: int) -> None:
        """Drop the rows logged at ``step`` or later (rewritten atomically)."""
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [r for r in rows if r.get("step") not in (None, "") and int(float(r["step"])) < step]
        if len(kept) == len(rows):
            return
        with atomic_file(self.metrics_file_path) as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(kept)


class AppendingCSVLogger(CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` whose metrics.csv is appended to across resumes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._early: tuple[int | None, dict[str, float]] = (None, {})  # the row write_step_row wrote

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def keep_before(self, step: int) -> None:
        self.experiment.keep_before(step)

    @rank_zero_only
    def write_step_row(self, metrics: dict[str, float], step: int) -> None:
        """Log and flush ``metrics`` of ``step`` now (ahead of Lightning), remembering them."""
        super().log_metrics(metrics, step)
        self.save()
        self._early = (step, dict(metrics))

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        early_step, early = self._early
        if step is not None and step == early_step:
            # the same step's row was written by write_step_row: keep only what it did not hold
            metrics = {k: v for k, v in metrics.items() if k not in early or early[k] != v}
            self._early = (None, {})
            if set(metrics) <= {"epoch"}:
                return
        super().log_metrics(metrics, step)
