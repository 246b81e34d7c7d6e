"""run_drakes(cfg): DRAKES reward fine-tuning of a masked-diffusion model directory.

``dlm-train experiment=drakes_dna_demo init_from=<model dir> reward=gc`` reaches here from
``dlm.train.run.run`` because the objective is a ``DrakesLoss`` (the ``_target_`` of ``objective``). Keys read:

    init_from        the pretrained masked-diffusion model directory. Two copies are made: the fine-tuned
                     model (trained, checkpointed, exported) and the pretrained reference of the KL (eval mode,
                     requires_grad False, outside the module tree: no optimiser, checkpoint or DDP sees it)
    reward           a conf/reward entry (``reward=gc``); must be differentiable, over the tokenizer's alphabet,
                     of the generated length (checked with ``check_reward_fits(method="drakes")`` before compute)
    objective        dlm.objectives.drakes.DrakesLoss; its noise schedule is the model directory's
    data.seq_len     canvas length: the prompt (BOS when the model was trained with a clean first token,
                     ``keep_first_token``; nothing for letter-only DNA / protein rows) + the designed positions
                     the reward reads
    batch_size       trajectories per device and micro-step (global_batch_size derives accumulation)
    eval_batch_size  trajectories per validation batch (default batch_size)
    optim            Adam(W) on the fine-tuned weights: lr, weight_decay, betas, eps, warmup_steps, min_lr_ratio
    trainer logger callbacks seed run_dir ckpt_path   as for every run; validation (``val/*``) draws K = 0
                     samples of the fine-tuned model with fixed seeds: their reward, the exact path-KL estimate
                     ``val/kl`` (unbiased), the public estimator ``val/kl_public`` and diversity
Not read: model, tokenizer, schedule, ema_decay (no EMA: DRAKES fine-tunes the raw weights), compile.

Writes <run_dir>/config.yaml, checkpoints/, logs/, model/ (a model directory in dlm-train's format, read by
dlm-sample / dlm.load, with ``drakes`` provenance in model.json) and summary.json (reward and KL curves).
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dlm.data.tokenizers.bio import LetterTokenizer
from dlm.errors import ConfigError, DlmError
from dlm.io.model_dir import RESERVED, LoadedModel, save_model_dir
from dlm.io.record import Family
from dlm.objectives.drakes import DrakesLoss
from dlm.rewards.oracle import OracleReward
from dlm.rewards.protocol import RewardModel, check_reward_fits
from dlm.train.console import quiet_lightning
from dlm.train.lsd_run import VAL_SEED, Ticks, build_objective
from dlm.train.module import NonFiniteLossError, warmup_cosine
from dlm.train.resume import resolve_ckpt
from dlm.train.run import accumulation, fit, load_frozen_masked, world_size, write_summary

CURVE_KEYS = ("reward", "kl_exact", "kl_public", "unique_fraction", "hamming")


class RewardFinetune(L.LightningModule):
    """Trains ``model`` (the only registered submodule) with a ``DrakesLoss`` against a frozen ``reference``."""

    def __init__(self, *, model: nn.Module, reference: nn.Module, reward: RewardModel, loss: DrakesLoss,
                 batch_size: int, eval_batch_size: int, length: int, prompt: Tensor | None, seed: int, lr: float,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 warmup_steps: int = 0, max_steps: int = 1000, min_lr_ratio: float = 1.0, val_batches: int = 1) -> None:
        super().__init__()
        self.model, self.loss = model, loss
        # kept out of the module tree: no checkpoint holds them, no optimiser or DDP sees them
        object.__setattr__(self, "reference", reference.requires_grad_(False).eval())
        # the reward is read, never trained: its weights get no gradient (only its input does)
        if isinstance(reward, nn.Module):
            reward.requires_grad_(False).eval()
        elif isinstance(reward, OracleReward):
            reward.network.requires_grad_(False)
        object.__setattr__(self, "reward", reward)
        self.batch_size, self.eval_batch_size, self.length, self.prompt = batch_size, eval_batch_size, length, prompt
        self.seed, self.val_batches = seed, val_batches
        self.hp = dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps, warmup_steps=warmup_steps,
                       max_steps=max_steps, min_lr_ratio=min_lr_ratio)
        self.curve: list[dict] = []  # validation metrics per evaluation, step 0 = the pretrained model

    def on_fit_start(self) -> None:
        self.reference.to(self.device)
        if isinstance(self.reward, nn.Module | OracleReward):  # rewards load on the CPU
            self.reward.to(self.device)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Ticks(), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Ticks(self.val_batches), batch_size=None)

    def _prompt(self) -> Tensor | None:
        return None if self.prompt is None else self.prompt.to(self.device)

    def training_step(self, batch, batch_idx):
        seed = hash((self.seed, self.global_step, batch_idx, self.global_rank)) & (2**62 - 1)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        out = self.loss(self.model, self.reference, self.reward, batch_size=self.batch_size, length=self.length,
                        prompt=self._prompt(), generator=generator, step=self.global_step)
        if not torch.isfinite(out.loss):
            raise NonFiniteLossError(f"DRAKES loss is {out.loss.item()} at step {self.global_step}; the run stops and "
                                     "checkpoints/last.ckpt is kept. Lower optim.lr or objective.gumbel_temp.")
        self.log("train/loss", out.loss, prog_bar=True, batch_size=self.batch_size)
        for k, v in out.metrics.items():
            self.log(f"train/{k}", v.float(), prog_bar=k == "reward", batch_size=self.batch_size)
        return out.loss

    def evaluate(self) -> dict[str, float]:
        """Means over the fixed-seed validation batches of the K = 0 samples' metrics (``DrakesLoss.evaluate``)."""
        sums = dict.fromkeys(CURVE_KEYS, 0.0)
        was_training = self.model.training
        self.model.eval()
        for i in range(self.val_batches):
            generator = torch.Generator(device=self.device).manual_seed(VAL_SEED + i + self.global_rank * 1_000_003)
            out = self.loss.evaluate(self.model, self.reference, self.reward, batch_size=self.eval_batch_size,
                                     length=self.length, prompt=self._prompt(), generator=generator)
            for k in CURVE_KEYS:
                sums[k] += float(out.metrics[k]) / self.val_batches
        self.model.train(was_training)
        return sums

    def on_train_start(self) -> None:
        if self.global_step == 0 and not self.curve:
            self.curve.append({"step": 0, **self.evaluate()})

    def validation_step(self, batch, batch_idx):
        pass  # the whole evaluation runs once per validation, in on_validation_epoch_end

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        m = self.evaluate()
        alpha = self.loss.alpha
        self.log_dict({"val/reward": m["reward"], "val/kl": m["kl_exact"], "val/kl_public": m["kl_public"],
                       "val/unique_fraction": m["unique_fraction"], "val/hamming": m["hamming"],
                       "val/objective": m["reward"] - alpha * m["kl_exact"]}, sync_dist=True)
        if not self.curve or self.curve[-1]["step"] != self.global_step:
            self.curve.append({"step": self.global_step, **m})

    def on_save_checkpoint(self, checkpoint):
        checkpoint["drakes_curve"] = self.curve

    def on_load_checkpoint(self, checkpoint):
        self.curve = list(checkpoint.get("drakes_curve", []))

    def configure_optimizers(self):
        hp = self.hp
        opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=hp["lr"],
                                betas=hp["betas"], eps=hp["eps"], weight_decay=hp["weight_decay"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(
            step, warmup_steps=hp["warmup_steps"], max_steps=hp["max_steps"], min_lr_ratio=hp["min_lr_ratio"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ExportFinetuned(L.Callback):
    """At the end of training, rank 0 writes the fine-tuned model directory in the base directory's format."""

    def __init__(self, *, path: Path, base: LoadedModel, extra: dict, config_yaml: str) -> None:
        self.path, self.base, self.extra, self.config_yaml = path, base, extra, config_yaml

    def on_train_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        record = self.base.record
        save_model_dir(self.path, model=pl_module.model, model_spec=record.model_spec, tokenizer=self.base.tokenizer,
                       family=Family.MASKED, schedule_spec=record.schedule_spec, seq_len=record.seq_len,
                       keep_first_token=record.keep_first_token, step=trainer.global_step, extra=self.extra,
                       config_yaml=self.config_yaml)


def load_pretrained(cfg: DictConfig, loss: DrakesLoss) -> LoadedModel:
    """The init_from directory: a masked-diffusion model, used exactly as exported."""
    return load_frozen_masked(
        cfg, loss, null_fix="DRAKES fine-tunes a pretrained masked-diffusion model; pass init_from=<model dir> "
                            "(e.g. runs/dna_base_demo/model)",
        exported="DRAKES fine-tunes the model of init_from={} as exported (the KL is to those weights)",
        family_fix="DRAKES fine-tunes a masked-diffusion model (dlm-train objective=mdlm or objective=radd)")


def build_reward(cfg: DictConfig, loaded: LoadedModel, *, generated: int, prompt_len: int) -> RewardModel:
    """``cfg.reward`` built and checked against the model: alphabet, length, differentiability."""
    if cfg.get("reward") is None:
        raise ConfigError("reward=null: DRAKES fine-tunes toward a reward; pass reward=<conf/reward entry>, "
                          "e.g. reward=gc")
    tokenizer = loaded.tokenizer
    if not isinstance(tokenizer, LetterTokenizer):
        raise ConfigError(f"init_from={cfg.init_from} uses the {tokenizer.name} tokenizer; DRAKES designs sequences "
                          "over a letter alphabet (a model trained with tokenizer=dna or tokenizer=protein)")
    try:
        reward = instantiate(cfg.reward)
    except InstantiationException as e:  # a refusal raised in the reward's constructor comes out as itself
        if isinstance(e.__cause__, DlmError):
            raise e.__cause__ from None
        raise
    if not isinstance(reward, RewardModel):
        raise ConfigError(f"reward._target_={cfg.reward.get('_target_')} is not a reward model (it needs alphabet, "
                          "length, differentiable and __call__(probs) -> (B,)); see dlm/rewards/protocol.py")
    if reward.length is not None and reward.length != generated:
        raise ConfigError(f"the reward scores sequences of length {reward.length} but data.seq_len={cfg.data.seq_len} "
                          f"designs {generated} after the {prompt_len}-token prompt; set "
                          f"data.seq_len={reward.length + prompt_len}")
    check_reward_fits(reward, alphabet=tokenizer.letters, length=generated, needs_gradient=True, method="drakes")
    return reward


def design_prompt(loaded: LoadedModel) -> list[int]:
    """[BOS] when the model was trained on rows that start with it (``keep_first_token``), else nothing: DNA and
    protein base models train on letters only (conf/data/dna_genome.yaml, gb1.yaml), and a BOS they never saw
    would shift every position the reward reads."""
    bos = loaded.tokenizer.bos_id
    return [bos] if loaded.record.keep_first_token and bos is not None else []


def run_drakes(cfg: DictConfig) -> dict:
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    quiet_lightning()
    resume = resolve_ckpt(cfg.get("ckpt_path"), ckpt_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    probe = build_objective(cfg)  # validates truncate_steps, alpha, ... before the model is read
    loaded = load_pretrained(cfg, probe)
    loss = build_objective(cfg, schedule=loaded.schedule)  # the model's own noise schedule
    ids = design_prompt(loaded)
    generated = int(cfg.data.seq_len) - len(ids)
    if generated < 1:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} leaves nothing to design after the {len(ids)}-token "
                          "prompt; raise data.seq_len")
    reward = build_reward(cfg, loaded, generated=generated, prompt_len=len(ids))

    world = world_size(cfg.trainer)
    accumulate = accumulation(cfg.get("global_batch_size"), cfg.batch_size, world)
    model = copy.deepcopy(loaded.model).train()
    module = RewardFinetune(model=model, reference=loaded.model, reward=reward, loss=loss, batch_size=cfg.batch_size,
                            eval_batch_size=cfg.get("eval_batch_size") or cfg.batch_size,
                            length=int(cfg.data.seq_len), prompt=torch.tensor(ids) if ids else None,
                            seed=int(cfg.seed), max_steps=cfg.trainer.max_steps,
                            val_batches=max(1, int(cfg.trainer.get("limit_val_batches") or 1)),
                            **cfg.optim)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    provenance = {"finetuned_from": str(cfg.init_from), "reward": OmegaConf.to_container(cfg.reward, resolve=True),
                  "num_steps": loss.num_steps, "truncate_steps": loss.truncate_steps, "gumbel_temp": loss.gumbel_temp,
                  "alpha": loss.alpha, "kl_estimator": loss.kl_estimator}
    extra = {k: v for k, v in loaded.meta.items() if k not in RESERVED and k != "drakes"} | {"drakes": provenance}
    export = ExportFinetuned(path=run_dir / "model", base=loaded, extra=extra, config_yaml=config_yaml)
    trainer = fit(cfg, module, callbacks=[export], run_dir=run_dir, accumulate=accumulate, resume=resume,
                  config_yaml=config_yaml)
    curve = module.curve
    first, last = (curve[0], curve[-1]) if curve else ({}, {})
    summary = {"run_dir": str(run_dir), "model_dir": str(run_dir / "model"), "checkpoint": str(ckpt_dir / "last.ckpt"),
               "step": trainer.global_step, "kind": "drakes", **provenance,
               **{f"{k}_before": first.get(k) for k in CURVE_KEYS}, **{f"{k}_after": last.get(k) for k in CURVE_KEYS},
               "curve": curve}
    if trainer.is_global_zero:
        summary = write_summary(run_dir, summary, seed=cfg.seed, config_yaml=config_yaml, model_dir=run_dir / "model")
    return summary
