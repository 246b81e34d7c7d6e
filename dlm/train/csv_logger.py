"""CSV metrics that survive a resume: ``logs/metrics.csv`` holds the whole history of a run.

Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts, so a resumed run kept only
the rows from its resume step on. This logger appends instead; at the start of training
``KeepLogHistory`` (dlm.train.callbacks) drops the rows from the checkpoint's step on, which the
interrupted run wrote after its checkpoint and the resumed run logs again, so every step appears
once, exactly as in an uninterrupted run.
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
