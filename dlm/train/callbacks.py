"""Training callbacks: throughput logging."""

from __future__ import annotations

import time

import lightning as L


class TokenThroughput(L.Callback):
    """Logs ``train/tokens_per_s`` (all ranks together) averaged over ``window`` batches."""

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self._t0: float | None = None
        self._tokens = 0
        self._batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._tokens += batch["input_ids"].numel() * trainer.world_size
        self._batches += 1
        if self._batches >= self.window:
            elapsed = time.perf_counter() - self._t0
            pl_module.log("train/tokens_per_s", self._tokens / elapsed, prog_bar=True, rank_zero_only=True)
            self._t0, self._tokens, self._batches = time.perf_counter(), 0, 0


class ExportModelDir(L.Callback):
    """At the end of training, rank 0 writes the exportable model directory (EMA weights).

    Done inside the training process so it works for every strategy, ``ddp_spawn`` included
    (where the launching process never sees the trained EMA state).
    """

    def __init__(self, *, path, model_spec: dict, tokenizer, kind: str, schedule_spec: dict | None,
                 extra: dict, config_yaml: str) -> None:
        self.path, self.model_spec, self.tokenizer = path, model_spec, tokenizer
        self.kind, self.schedule_spec, self.extra, self.config_yaml = kind, schedule_spec, extra, config_yaml

    def on_train_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        from contextlib import nullcontext

        from dlm.checkpoint import save_model_dir

        ctx = pl_module.ema.swapped(pl_module.model) if pl_module.ema is not None else nullcontext()
        with ctx:
            save_model_dir(self.path, model=pl_module.model, model_spec=self.model_spec, tokenizer=self.tokenizer,
                           kind=self.kind, schedule_spec=self.schedule_spec,
                           extra={**self.extra, "step": trainer.global_step}, config_yaml=self.config_yaml)
