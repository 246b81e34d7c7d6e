"""DlmModule: one LightningModule for every objective (MDLM/RADD losses, AR, later block/NCE/...).

``training_step`` calls the objective and logs its metrics; it never branches on the kind of
model or objective. EMA weights are used for validation and export.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from dlm.errors import ConfigError, NonFiniteError
from dlm.io.record import Family
from dlm.train.ema import EMA, full_tensor
from dlm.types import Objective, Shardable


class NonFiniteLossError(NonFiniteError, RuntimeError):
    """The loss became NaN/inf: the run stops, the last good checkpoint is kept untouched."""


def warmup_cosine(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to ``min_lr_ratio`` at ``max_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class DlmModule(L.LightningModule):
    def __init__(
        self,
        *,
        model: nn.Module,
        objective: Objective,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_steps: int = 1000,
        max_steps: int = 100_000,
        min_lr_ratio: float = 0.1,
        ema_decay: float = 0.9999,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.hp = dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps, warmup_steps=warmup_steps,
                       max_steps=max_steps, min_lr_ratio=min_lr_ratio)
        self.ema_decay = ema_decay
        self.ema = EMA(model, ema_decay) if ema_decay > 0 else None
        # compile only the backbone: the objective's data-dependent masking would graph-break.
        # Kept out of the module tree so checkpoints hold each weight once, under "model.".
        object.__setattr__(self, "forward_model", torch.compile(model) if compile else model)

    def configure_model(self):
        """FSDP2 (``trainer=fsdp``): shard each of the model's units, then the root, over the data-parallel
        mesh; the EMA shadow is rebuilt from the sharded parameters so it is sharded alike. Lightning calls
        this before any checkpoint is restored. Other strategies have no device mesh: nothing to do."""
        mesh = self.device_mesh
        if mesh is None or isinstance(next(self.model.parameters()), DTensor):
            return
        if not isinstance(self.model, Shardable):
            raise ConfigError(f"{type(self.model).__name__} declares no shard_units(), so trainer=fsdp cannot shard "
                              "it; use trainer=ddp")
        from torch.distributed.fsdp import fully_shard  # noqa: I001  (only under trainer=fsdp)

        dp = mesh["data_parallel"]
        for unit in self.model.shard_units():
            fully_shard(unit, mesh=dp)
        fully_shard(self.model, mesh=dp)
        if self.ema is not None:
            self.ema = EMA(self.model, self.ema_decay)

    # -- steps ---------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        # a compiled module forwards attribute reads (mask_id, ...) to the original one
        out = self.objective(self.forward_model, batch)
        if not torch.isfinite(out.loss):
            raise NonFiniteLossError(
                f"loss is {out.loss.item()} at step {self.global_step}; the run stops here and the last "
                "good checkpoint (checkpoints/last.ckpt) is kept. Lower optim.lr or check the data."
            )
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=bs)
        for k, v in out.metrics.items():
            self.log(f"train/{k}", v, batch_size=bs)
        return out.loss

    def optimizer_step(self, *args, **kwargs):
        # The EMA follows every optimizer step right here, not in on_train_batch_end: Lightning runs the
        # callbacks' on_train_batch_end (ModelCheckpoint's step-interval save) before the module's, so a
        # checkpoint saved there held an EMA one update behind and a resumed run validated with it.
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.model)

    def on_validation_epoch_start(self):
        self._val = [0.0, 0]
        # validation draws its own t and masks: the same every time, and the training RNG stream
        # is left untouched, so a resumed run continues bit-for-bit
        self._val_generator = torch.Generator(device=self.device).manual_seed(1234 + self.global_rank)
        if self.ema is not None:
            self.ema.to(self.device)
            self._ema_ctx = self.ema.swapped(self.model)
            self._ema_ctx.__enter__()

    def validation_step(self, batch, batch_idx):
        out = self.objective(self.forward_model, batch, self._val_generator)
        self._val[0] += out.nll_sum.item()
        self._val[1] += int(out.num_tokens.item())

    def on_validation_epoch_end(self):
        if isinstance(self.model, FSDPModule):
            self.model.reshard()  # FSDP2's root keeps its parameters gathered after a forward: shard them back
        if self.ema is not None:
            self._ema_ctx.__exit__(None, None, None)
        nll_sum = torch.tensor(self._val, dtype=torch.float64, device=self.device)
        nll_sum = self.all_gather(nll_sum).reshape(-1, 2).sum(0)
        nll = (nll_sum[0] / nll_sum[1].clamp(min=1)).item()
        self.log("val/nll", nll, prog_bar=True, sync_dist=False, rank_zero_only=False)
        if self.objective.family is not Family.ENERGY:  # an energy's val/nll is its NCE loss: exp() of it is no perplexity
            self.log("val/ppl", math.exp(min(nll, 50.0)), sync_dist=False)

    # -- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self):
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        hp = self.hp
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp["lr"], betas=hp["betas"], eps=hp["eps"],
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, warmup_steps=hp["warmup_steps"], max_steps=hp["max_steps"],
                                         min_lr_ratio=hp["min_lr_ratio"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoint state: EMA and RNG, so a resumed run draws the same next t and masks ----
    def on_save_checkpoint(self, checkpoint):
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()
        checkpoint["rng"] = {"torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def on_load_checkpoint(self, checkpoint):
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
        # applied in on_train_start: the restore happens before the sanity-check loop runs
        self._pending_rng = checkpoint.get("rng")

    def on_train_start(self):
        if self.ema is not None:  # a restored shadow arrives on the CPU; update() needs it beside the weights
            self.ema.to(self.device)
        rng = getattr(self, "_pending_rng", None)
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            if rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self._pending_rng = None

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The full weights to export (``model.state_dict()`` keys): the EMA shadow where enabled, else the
        live weights, gathered from their shards under FSDP2. A collective there: every rank calls it."""
        state = dict(self.model.state_dict())
        if self.ema is not None:
            state.update(self.ema.shadow)
        return {k: full_tensor(v).detach().cpu() for k, v in state.items()}
