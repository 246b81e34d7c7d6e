"""Training callbacks: throughput logging, model export, samples during validation."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars

from dlm.errors import ConfigError
from dlm.eval.sample_job import decode_sample, prompt_ids
from dlm.io.atomic import write_jsonl_atomic
from dlm.io.model_dir import save_model_dir
from dlm.io.record import Family
from dlm.io.spec import build
from dlm.samplers.canvas import check_length
from dlm.train.csv_logger import AppendingCSVLogger
from dlm.types import Sampler


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


class KeepLogHistory(L.Callback):
    """When training starts (after any checkpoint is restored), cut the run's metrics.csv back to the rows
    logged before ``trainer.global_step``: the rest were written by an interrupted run after its checkpoint
    and are logged again now. A new run (step 0) starts an empty file."""

    def on_train_start(self, trainer, pl_module):
        for logger in trainer.loggers:
            if isinstance(logger, AppendingCSVLogger):
                logger.keep_before(trainer.global_step)


class ModelCheckpoint(L.pytorch.callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint, except that a step-interval save falling on a validation step waits for
    that validation (``on_validation_end``, Lightning's own deferred-save path).

    Lightning validates after the ``on_train_batch_end`` hooks, where the step-interval save happens: a run
    killed between the two resumed after the step and never ran its validation (the row was lost from
    metrics.csv and ``best`` never saw it). Saved after validation, the checkpoint is a validation-time
    one, which resumes exactly. Same keys as Lightning's (``callbacks.checkpoint.*``).
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        epoch_loop = trainer.fit_loop.epoch_loop
        step_save = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        if (step_save and not epoch_loop._should_accumulate() and not self._should_skip_saving_checkpoint(trainer)
                and trainer.enable_validation and epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher)):
            self._defer_save_until_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class StepRowBeforeCheckpoint(L.Callback):
    """Writes this optimizer step's train metrics to metrics.csv before ModelCheckpoint (always the last
    callback) can save a checkpoint of the step. Lightning would log them only after every
    ``on_train_batch_end`` hook, so a SIGKILL between a step-interval checkpoint and that log lost the
    row: the resumed run starts at the next step. Must come after every callback that logs train metrics."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loggers = [lg for lg in trainer.loggers if isinstance(lg, AppendingCSVLogger)]
        connector = trainer._logger_connector  # the values Lightning is about to log for this step
        if not loggers or trainer.fit_loop._should_accumulate() or not connector.should_update_logs:
            return
        metrics = convert_tensors_to_scalars(connector.metrics["log"])
        if not metrics:
            return
        metrics.setdefault("epoch", trainer.current_epoch)  # as Lightning's own row has it
        for logger in loggers:
            logger.write_step_row(metrics, trainer.fit_loop.epoch_loop._batches_that_stepped)


class ExportModelDir(L.Callback):
    """At the end of training, rank 0 writes the exportable model directory (EMA weights).

    Done inside the training process so it works for every strategy, ``ddp_spawn`` included (where the
    launching process never sees the trained EMA state). Every rank gathers the full weights (a
    collective under FSDP2, where each holds a shard); rank 0 loads them into a fresh model built from
    the spec, exactly as ``dlm.load`` will rebuild it, and saves that.
    """

    def __init__(self, *, path, model_spec: dict, tokenizer, family: Family, schedule_spec: dict | None,
                 seq_len: int | None, keep_first_token: bool, extra: dict, config_yaml: str) -> None:
        self.path, self.model_spec, self.tokenizer = path, model_spec, tokenizer
        self.family, self.schedule_spec, self.extra, self.config_yaml = family, schedule_spec, extra, config_yaml
        self.seq_len, self.keep_first_token = seq_len, keep_first_token

    def on_train_end(self, trainer, pl_module):
        state = pl_module.export_state_dict()
        if not trainer.is_global_zero:
            return
        model = build(self.model_spec)
        model.load_state_dict(state)
        save_model_dir(self.path, model=model, model_spec=self.model_spec, tokenizer=self.tokenizer,
                       family=self.family, schedule_spec=self.schedule_spec, seq_len=self.seq_len,
                       keep_first_token=self.keep_first_token, step=trainer.global_step, extra=self.extra,
                       config_yaml=self.config_yaml)


class SampleDuringValidation(L.Callback):
    """Draws a few samples at the end of validation, to watch sample quality while training.

    On global rank 0, outside the sanity check, every ``every_n_validations``-th validation:
    ``sampler(module.model, batch_size=num_samples, length=length, prompt=[BOS], generator=...)``
    with the EMA weights swapped in (when the module keeps an EMA) and the model in eval mode
    (train mode is restored after). ``length`` defaults to ``datamodule.seq_len``; the prompt
    is the tokenizer's BOS (required for AR models, ``objective.family.needs_prompt``; used for
    diffusion models whenever the tokenizer has one, since training rows start with it). The
    generator is re-seeded with ``seed`` every time, so successive files differ only through the
    weights. The tokenizer comes from ``trainer.datamodule.tokenizer``.

    Writes ``<trainer.default_root_dir>/samples/step_<global_step>.jsonl`` atomically, one
    ``{"step", "text", "tokens", "nfe"}`` object per sample (``text`` decoded as by dlm-sample),
    logs ``val/sample_nfe``, and sends the texts to every logger with a ``log_text`` method
    (WandbLogger) as the table ``val/samples``.

    Hydra: ``callbacks=sample`` (conf/callbacks/sample.yaml) adds it with the ancestral sampler;
    for an AR run swap the sampler with
    ``callbacks.sample.sampler._target_=dlm.samplers.autoregressive.AutoregressiveSampler
    ~callbacks.sample.sampler.num_steps``.
    """

    def __init__(self, sampler: Sampler, *, num_samples: int = 4, length: int | None = None,
                 every_n_validations: int = 1, seed: int = 0) -> None:
        if num_samples < 1:
            raise ConfigError(f"callbacks.sample.num_samples={num_samples} must be >= 1")
        if every_n_validations < 1:
            raise ConfigError(f"callbacks.sample.every_n_validations={every_n_validations} must be >= 1")
        self.sampler, self.num_samples, self.length = sampler, num_samples, length
        self.every_n_validations, self.seed = every_n_validations, seed
        self._validations = 0
        self._prompt: list[int] = []
        self._length = length

    def _tokenizer(self, trainer):
        tokenizer = getattr(getattr(trainer, "datamodule", None), "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("callbacks.sample (SampleDuringValidation) decodes with trainer.datamodule.tokenizer; "
                              "train with a datamodule that has a tokenizer, or drop callbacks=sample")
        return tokenizer

    def setup(self, trainer, pl_module, stage):
        # checked at build time, not after the first validation's compute
        self.sampler.check_model(pl_module.model)
        self._prompt = prompt_ids(self._tokenizer(trainer), None, family=pl_module.objective.family)
        self._length = self.length or trainer.datamodule.seq_len
        check_length(self._length, prompt_len=len(self._prompt), max_seq_len=pl_module.model.max_seq_len,
                     key="callbacks.sample.length")

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations or not trainer.is_global_zero:
            return
        model, device = pl_module.model, pl_module.device
        was_training = model.training
        # Lightning calls callbacks' epoch-end hooks before the module's, so the module's own EMA
        # swap may still be active: a nested swap is harmless (it copies the same EMA weights and
        # restores them), and it keeps this callback right whatever the hook order.
        ema = getattr(pl_module, "ema", None)
        ctx = ema.swapped(model) if ema is not None else nullcontext()
        generator = torch.Generator(device=device).manual_seed(self.seed)
        prompt = torch.tensor(self._prompt, dtype=torch.long, device=device) if self._prompt else None
        try:
            model.eval()
            with ctx, torch.no_grad():
                out = self.sampler(model, batch_size=self.num_samples, length=self._length, prompt=prompt,
                                   generator=generator)
        finally:
            model.train(was_training)
        tokenizer, step = self._tokenizer(trainer), trainer.global_step
        rows = out.tokens.tolist()
        texts = [decode_sample(row, tokenizer, len(self._prompt)) for row in rows]
        path = Path(trainer.default_root_dir) / "samples" / f"step_{step}.jsonl"
        write_jsonl_atomic(path, [{"step": step, "text": t, "tokens": r, "nfe": int(out.nfe)}
                                  for t, r in zip(texts, rows, strict=True)])
        pl_module.log("val/sample_nfe", float(out.nfe), rank_zero_only=True)
        for logger in trainer.loggers:
            if hasattr(logger, "log_text"):  # WandbLogger; CSV has no text tables
                logger.log_text(key="val/samples", columns=["step", "text"], data=[[step, t] for t in texts],
                                step=step)


class ClipIntervalSearch(L.Callback):
    """BD3-LM's data-driven clipped schedule: at every validation, pick the training t interval whose
    loss estimator varies least across validation batches (``dlm.diffusion.clip_search``).

    Validation itself runs on ``eval_interval`` (the full interval: val/nll stays the NELBO bound),
    then training continues on the chosen interval. Each of the first ``max_batches`` validation
    batches is scored once more with t on the full interval. The interval is logged
    (``clip/t_min``, ``clip/t_max``) and saved in checkpoints, so a resumed run keeps it.
    Needs an objective with ``t_min`` / ``t_max`` and ``segment_losses`` (``objective=block``).
    """

    def __init__(self, *, widths: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9), delta: float = 0.05,
                 eval_interval: tuple[float, float] = (1e-3, 1.0), max_batches: int = 100, seed: int = 4321) -> None:
        from dlm.diffusion.clip_search import clip_candidates

        self.eval_interval = (float(eval_interval[0]), float(eval_interval[1]))
        self.candidates = clip_candidates(widths, delta, self.eval_interval)
        self.max_batches, self.seed = max_batches, seed
        self.interval: tuple[float, float] | None = None  # the current training interval once searched

    def on_fit_start(self, trainer, pl_module):
        objective = pl_module.objective
        if not all(hasattr(objective, a) for a in ("t_min", "t_max", "segment_losses")):
            raise ConfigError(f"callbacks.clip_search needs a block diffusion objective (objective=block); "
                              f"{type(objective).__name__} has no clipped t interval to search")
        if self.interval is not None:  # restored from a checkpoint
            self._apply(objective, self.interval)

    @staticmethod
    def _apply(objective, interval: tuple[float, float]) -> None:
        objective.t_min, objective.t_max = max(interval[0], 1e-6), interval[1]  # t = 0 has infinite weight 1/t

    def on_validation_epoch_start(self, trainer, pl_module):
        objective = pl_module.objective
        self._train_interval = (objective.t_min, objective.t_max)
        objective.t_min, objective.t_max = self.eval_interval
        self._scores: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._generator = torch.Generator(device=pl_module.device).manual_seed(self.seed + trainer.global_rank)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking or batch_idx >= self.max_batches:
            return
        t, loss = pl_module.objective.segment_losses(pl_module.forward_model, batch, self._generator)
        self._scores.append((t.cpu(), loss.cpu(), torch.full_like(t, len(self._scores), device="cpu")))

    def on_validation_epoch_end(self, trainer, pl_module):
        from dlm.diffusion.clip_search import best_interval, interval_stats

        objective = pl_module.objective
        objective.t_min, objective.t_max = self._train_interval
        if trainer.sanity_checking or not self._scores:
            return
        t, loss, batch = (torch.cat(x) for x in zip(*self._scores, strict=True))
        stats = interval_stats(t, loss, batch, self.candidates).to(pl_module.device)
        stats = pl_module.all_gather(stats).reshape(-1, *stats.shape).sum(0).cpu()  # every rank: same choice
        best = best_interval(stats, self.candidates)
        if best is not None:
            self.interval = best
            self._apply(objective, best)
        pl_module.log("clip/t_min", float(objective.t_min), rank_zero_only=True)
        pl_module.log("clip/t_max", float(objective.t_max), rank_zero_only=True)

    def state_dict(self):
        return {"interval": self.interval}

    def load_state_dict(self, state_dict):
        self.interval = state_dict.get("interval")
