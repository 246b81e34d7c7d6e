"""run_lsd(cfg): distil an N-step sampler schedule (LSD / LSD+) for a frozen model directory.

``dlm-train experiment=lsd_demo init_from=<model dir> objective.num_steps=8`` reaches here from
``dlm.train.run.run`` because the objective is an ``LSDLoss`` (the ``_target_`` of ``objective``). The
train config's own keys keep their meaning where they have one:

    init_from        the masked-diffusion model directory whose sampler is distilled; frozen (eval mode,
                     requires_grad False, outside the optimiser and the checkpoints), never re-exported
    objective        dlm.objectives.lsd.LSDLoss: num_steps, learn_grid (LSD+), learn_rates (kappa), t_min,
                     teacher_steps, teacher_state; its noise schedule is the model directory's
    batch_size       start canvases per device and step (global_batch_size derives accumulation, as in run.py)
    data.seq_len     canvas length: BOS (when the tokenizer has one) and seq_len - 1 generated tokens, the rows
                     dlm-sample draws unconditionally
    optim            Adam on (log c, log kappa, u): lr, betas, eps, warmup_steps, min_lr_ratio (cosine decay)
    trainer logger callbacks seed run_dir ckpt_path   as for every run (validation: the loss on fixed seeds,
                     ``val/kl``, with common random numbers across validations)
Not read: model, tokenizer, schedule, ema_decay, compile and the rest of data (LSD needs no data).

Writes <run_dir>/config.yaml, checkpoints/ (schedule parameters + optimiser), logs/, schedule/ (a schedule
directory, ``dlm.io.schedule_dir``: what ``sampler=lsd sampler.schedule.path=<run_dir>/schedule`` loads) and
summary.json (the learned grid and scalars included).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from dlm.errors import ConfigError, DlmError
from dlm.eval.sample_job import prompt_ids
from dlm.io.schedule_dir import denoiser_fingerprint, save_schedule_dir
from dlm.objectives.lsd import LSDLoss
from dlm.samplers.canvas import init_canvas
from dlm.train.console import quiet_lightning
from dlm.train.module import NonFiniteLossError, warmup_cosine
from dlm.train.resume import resolve_ckpt
from dlm.train.run import accumulation, fit, load_frozen_masked, world_size, write_summary

VAL_SEED = 10_000  # validation generators are seeded VAL_SEED + batch index: the same draws at every validation


class Ticks(IterableDataset):
    """0, 1, 2, ...: LSD reads no data (every batch is an all-mask start), the loop only needs a count."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit

    def __iter__(self):
        return iter(range(self.limit)) if self.limit is not None else itertools.count()


class ScheduleDistillation(L.LightningModule):
    """Trains ``loss.make_schedule()`` (the only registered submodule) against a frozen ``denoiser``."""

    def __init__(self, *, denoiser: nn.Module, loss: LSDLoss, batch_size: int, length: int, prompt: Tensor | None,
                 seed: int, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 warmup_steps: int = 0, max_steps: int = 1000, min_lr_ratio: float = 1.0, weight_decay: float = 0.0,
                 val_batches: int = 2) -> None:
        super().__init__()
        if weight_decay:
            raise ConfigError(f"optim.weight_decay={weight_decay}: LSD trains a handful of log-scales with Adam and "
                              "no decay; set optim.weight_decay=0")
        self.loss, self.steps = loss, loss.make_schedule()
        # kept out of the module tree: no checkpoint holds a copy, no optimiser or DDP sees it
        object.__setattr__(self, "denoiser", denoiser.requires_grad_(False).eval())
        self.batch_size, self.length, self.prompt, self.seed = batch_size, length, prompt, seed
        self.hp = dict(lr=lr, betas=tuple(betas), eps=eps, warmup_steps=warmup_steps, max_steps=max_steps,
                       min_lr_ratio=min_lr_ratio)
        self.val_batches = val_batches

    def on_fit_start(self) -> None:
        self.denoiser.to(self.device)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Ticks(), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Ticks(self.val_batches), batch_size=None)

    def _loss(self, seed: int):
        generator = torch.Generator(device=self.device).manual_seed(seed)
        start = init_canvas(self.denoiser, batch_size=self.batch_size, length=self.length, prompt=self.prompt)
        out = self.loss(self.denoiser, self.steps, start, generator=generator)
        if not torch.isfinite(out.loss):
            raise NonFiniteLossError(f"LSD loss is {out.loss.item()} at step {self.global_step}; the run stops and "
                                     "checkpoints/last.ckpt is kept. Lower optim.lr.")
        return out

    def training_step(self, batch, batch_idx):
        # one seed per (step, micro-batch, rank): resumable and distinct across devices
        out = self._loss(hash((self.seed, self.global_step, batch_idx, self.global_rank)) & (2**62 - 1))
        self.log("train/kl", out.loss, prog_bar=True, batch_size=self.batch_size)
        for k, v in out.metrics.items():
            self.log(f"train/{k}", v, batch_size=self.batch_size)
        with torch.no_grad():
            for n, (c, kappa, t) in enumerate(zip(self.steps.logit_scales(), self.steps.rate_scales(),
                                                  self.steps.timesteps()[1:], strict=True)):
                self.log_dict({f"schedule/c{n}": c.float(), f"schedule/kappa{n}": kappa.float(),
                               f"schedule/t{n + 1}": t.float()}, batch_size=self.batch_size)
        return out.loss

    def validation_step(self, batch, batch_idx):
        out = self._loss(VAL_SEED + int(batch) + self.global_rank * 1_000_003)
        self.log("val/kl", out.loss, prog_bar=True, batch_size=self.batch_size, sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.steps.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.hp["lr"], betas=self.hp["betas"], eps=self.hp["eps"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(
            step, warmup_steps=self.hp["warmup_steps"], max_steps=self.hp["max_steps"],
            min_lr_ratio=self.hp["min_lr_ratio"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ExportSchedule(L.Callback):
    """At the end of training, rank 0 writes the schedule directory (inside the training process, so every
    strategy, ddp_spawn included, exports the trained values)."""

    def __init__(self, *, path: Path, meta: dict) -> None:
        self.path, self.meta = path, meta

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            steps = pl_module.steps
            save_schedule_dir(self.path, state=steps.state_dict(),
                              meta={**self.meta, "step": trainer.global_step, **steps.describe()})


def build_objective(cfg: DictConfig, **kwargs) -> LSDLoss:
    """``cfg.objective`` built; a refusal raised in its constructor comes out as itself (Hydra wraps it)."""
    try:
        return instantiate(cfg.objective, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, DlmError):
            raise e.__cause__ from None
        raise


def load_frozen_denoiser(cfg: DictConfig, loss: LSDLoss):
    """The init_from directory, checked against the LSD objective before any compute."""
    return load_frozen_masked(
        cfg, loss, null_fix="LSD distils the sampler of a trained masked-diffusion model; pass init_from=<model dir> "
                            "(e.g. runs/demo_radd/model from dlm-train experiment=demo_radd)",
        exported="LSD uses the model of init_from={} exactly as exported (the schedule is tied to its weights)",
        family_fix="LSD distils the ancestral sampler of a masked-diffusion model (dlm-train objective=radd or "
                   "objective=mdlm)")


def run_lsd(cfg: DictConfig) -> dict:
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    quiet_lightning()
    resume = resolve_ckpt(cfg.get("ckpt_path"), ckpt_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    probe = build_objective(cfg)  # validates num_steps / teacher_steps before the model is read
    loaded = load_frozen_denoiser(cfg, probe)
    loss = build_objective(cfg, schedule=loaded.schedule)  # the denoiser's own noise schedule
    ids = prompt_ids(loaded.tokenizer, None, family=loaded.family)
    if len(ids) >= cfg.data.seq_len:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} leaves nothing to generate after BOS; raise data.seq_len")
    fingerprint = denoiser_fingerprint(loaded.model)

    world = world_size(cfg.trainer)
    accumulate = accumulation(cfg.get("global_batch_size"), cfg.batch_size, world)
    module = ScheduleDistillation(denoiser=loaded.model, loss=loss, batch_size=cfg.batch_size,
                                  length=int(cfg.data.seq_len), prompt=torch.tensor(ids) if ids else None,
                                  seed=int(cfg.seed), max_steps=cfg.trainer.max_steps, **cfg.optim)
    meta = {"num_steps": loss.num_steps, "learn_grid": loss.learn_grid, "learn_rates": loss.learn_rates, "t_min": loss.t_min,
            "teacher_steps": loss.teacher_steps, "teacher_state": loss.teacher_state, "fingerprint": fingerprint,
            "noise_schedule": loaded.record.schedule_spec, "trained_for": str(cfg.init_from),
            "length": int(cfg.data.seq_len)}
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    trainer = fit(cfg, module, callbacks=[ExportSchedule(path=run_dir / "schedule", meta=meta)], run_dir=run_dir,
                  accumulate=accumulate, resume=resume, config_yaml=config_yaml)
    summary = {"run_dir": str(run_dir), "schedule_dir": str(run_dir / "schedule"),
               "checkpoint": str(ckpt_dir / "last.ckpt"), "step": trainer.global_step, "kind": "step_schedule",
               "fingerprint": fingerprint, "num_steps": loss.num_steps, "learn_grid": loss.learn_grid,
               "teacher_steps": loss.teacher_steps, **module.steps.describe(),
               **{k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/kl"))}}
    if trainer.is_global_zero:
        summary = write_summary(run_dir, summary, seed=cfg.seed, config_yaml=config_yaml, model_dir=None)
    return summary
