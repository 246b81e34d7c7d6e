"""run(cfg): build every component from the Hydra config, check them together, train, export.

Derived values live here (no custom resolvers): gradient accumulation from the global batch
size and the device count, the resume checkpoint, the run directory layout:
    <run_dir>/config.yaml  checkpoints/{last,best}.ckpt  logs/  model/ (exported, EMA weights)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from dlm.errors import CheckpointError, ConfigError
from dlm.io.atomic import write_text_atomic
from dlm.io.model_dir import load_model_dir, read_record
from dlm.io.provenance import provenance
from dlm.io.record import Family
from dlm.io.spec import build
from dlm.io.tokenizer_files import tokenizer_of
from dlm.objectives.drakes import DrakesLoss
from dlm.objectives.lsd import LSDLoss
from dlm.train.callbacks import ExportModelDir, KeepLogHistory, StepRowBeforeCheckpoint, TokenThroughput
from dlm.train.config_checks import check_block_sizes, check_train_config
from dlm.train.console import quiet_lightning
from dlm.train.datamodule import TextDataModule
from dlm.train.energy_init import energy_from_denoiser
from dlm.train.module import DlmModule
from dlm.train.resume import resolve_ckpt


def check_compatible(model, objective, *, seq_len: int) -> None:
    """Cross-component checks on declared attributes, before any compute is spent.

    The objective's ``family`` fixes the attention its model must have (AR: causal, masked
    diffusion: bidirectional, block diffusion: block_causal) and how its outputs are read
    (``objective.shift_logits`` must equal ``model.shift_logits``, which ``build_model`` sets);
    data rows must fit the model's context.
    """
    family = objective.family
    if family.is_denoiser:
        if model.attention != family.attention:
            raise ConfigError(f"objective {type(objective).__name__} trains a {family.kind} model and needs "
                              f"model.attention={family.attention}, got model.attention={model.attention}")
        if model.shift_logits != objective.shift_logits:
            raise ConfigError(f"model.shift_logits={model.shift_logits} but objective.shift_logits="
                              f"{objective.shift_logits}: the model is read the way it is trained; leave "
                              "model.shift_logits unset (it follows the objective) or make them agree")
    if model.max_seq_len is not None and seq_len > model.max_seq_len:
        raise ConfigError(f"data.seq_len={seq_len} exceeds model.max_seq_len={model.max_seq_len}; lower "
                          "data.seq_len or raise model.max_seq_len (or extend RoPE with model.rope_scaling)")


def world_size(trainer_cfg: DictConfig) -> int:
    devices = trainer_cfg.get("devices", 1)
    if devices in (-1, "auto", "-1"):
        accel = trainer_cfg.get("accelerator", "auto")
        devices = torch.cuda.device_count() if accel in ("gpu", "cuda", "auto") and torch.cuda.is_available() else 1
    elif isinstance(devices, list | tuple) or hasattr(devices, "__len__") and not isinstance(devices, str):
        devices = len(devices)
    return int(devices) * int(trainer_cfg.get("num_nodes", 1))


def accumulation(global_batch_size: int | None, batch_size: int, world: int) -> int:
    """Gradient accumulation so that batch_size * world * accumulation == global_batch_size."""
    if global_batch_size is None:
        return 1
    per_step = batch_size * world
    if global_batch_size % per_step:
        raise ConfigError(f"global_batch_size={global_batch_size} is not a multiple of batch_size={batch_size} x "
                          f"{world} devices; change global_batch_size or batch_size")
    return global_batch_size // per_step


INIT_OVERRIDES = frozenset({"attention", "block_size", "dropout", "attn_backend", "max_seq_len", "rope_scaling",
                            "shift_logits"})  # change how the weights are used, never their shapes


def init_from_model_dir(path: str, overrides: DictConfig | dict) -> tuple:
    """(tokenizer, model spec, state dict) of an exported or converted model directory.

    The architecture is the directory's, updated with ``init_overrides`` (e.g. ``attention:
    block_causal, block_size: 4`` to adapt a converted AR checkpoint as block diffusion); every
    weight is loaded, so an override may only change how the weights are used, not their shapes.
    """
    loaded = load_model_dir(path)
    overrides = OmegaConf.to_container(overrides, resolve=True) if isinstance(overrides, DictConfig) else overrides
    unknown = set(overrides) - set(loaded.record.model_spec)
    if unknown - INIT_OVERRIDES:
        raise ConfigError(f"init_overrides {sorted(unknown)} are not arguments of {path}'s model; valid: "
                          f"{sorted(k for k in loaded.record.model_spec if k != '_target_')}")
    return loaded.tokenizer, {**loaded.record.model_spec, **overrides}, loaded.model.state_dict()


def with_objective_reading(spec: dict, objective, *, key: str = "model") -> dict:
    """The model spec with ``shift_logits`` following the objective.

    How a model's outputs are read (token i from output i - 1, Dream / Fast-dLLM v2) is decided by the
    objective that trains it and saved with the model spec (a ``Transformer`` argument), so sampling and
    evaluation read it back from the directory. A spec that says otherwise is refused naming ``key``.
    """
    if not objective.shift_logits:
        return spec  # False is every model's default: the spec stays as written
    if spec.get("shift_logits") is False:
        raise ConfigError(f"{key}.shift_logits=false but objective.shift_logits=true; the model is read the way "
                          f"it is trained: drop {key}.shift_logits (it follows the objective)")
    return {**spec, "shift_logits": True}


def load_tokenizer_from(path: str):
    """The tokenizer of a model directory (or a saved tokenizer directory): a classifier for guidance
    must read exactly its denoiser's token ids, mask id included."""
    try:
        return tokenizer_of(path, key="tokenizer_from")
    except CheckpointError as e:
        raise ConfigError(str(e)) from e


def load_frozen_masked(cfg: DictConfig, objective: object, *, null_fix: str, exported: str, family_fix: str):
    """The ``init_from`` model directory of a recipe that trains *around* a frozen masked-diffusion model (LSD,
    DRAKES): present, used exactly as exported (no ``init_overrides``), a masked-diffusion model, and
    compatible with ``objective``; each refusal names the key and, in the recipe's words, why."""
    if not cfg.get("init_from"):
        raise ConfigError(f"init_from=null: {null_fix}")
    if cfg.get("init_overrides"):
        raise ConfigError(f"init_overrides={OmegaConf.to_container(cfg.init_overrides)}: {exported.format(cfg.init_from)}; "
                          "drop init_overrides")
    loaded = load_model_dir(cfg.init_from)
    if loaded.family is not Family.MASKED:
        raise ConfigError(f"init_from={cfg.init_from} is a {loaded.family.kind!r} model; {family_fix}")
    check_compatible(loaded.model, objective, seq_len=cfg.data.seq_len)
    return loaded


def fit(cfg: DictConfig, module: L.LightningModule, *, callbacks: list[L.Callback], run_dir: Path, accumulate: int,
        resume: str | None, config_yaml: str, datamodule: L.LightningDataModule | None = None) -> L.Trainer:
    """The end every recipe shares (dlm-train, LSD, DRAKES): the config's callbacks, the recipe's own, then
    KeepLogHistory and StepRowBeforeCheckpoint (after every callback that logs train metrics; Lightning
    moves ModelCheckpoint last), the logger, the Trainer, ``config.yaml`` on rank 0, fit, and a wandb run
    closed (its exit-time messages would otherwise follow the JSON summary line)."""
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None] + callbacks
    callbacks += [KeepLogHistory(), StepRowBeforeCheckpoint()]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, accumulate_grad_batches=accumulate, callbacks=callbacks, logger=logger,
                          default_root_dir=str(run_dir), use_distributed_sampler=False)
    if trainer.is_global_zero:
        write_text_atomic(run_dir / "config.yaml", config_yaml)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
    return trainer


def write_summary(run_dir: Path, summary: dict, *, seed: int, config_yaml: str, model_dir: Path | None) -> dict:
    """Write ``<run_dir>/summary.json`` with its ``provenance`` (dlm version, git revision, seed, the digest of
    the resolved config.yaml beside it, and the fingerprint of the exported model: the weights a user loads
    from ``model_dir``, so a number computed from them can be traced to this run). Returns the summary."""
    fingerprint_of = load_model_dir(model_dir, device="cpu").model if model_dir and (model_dir / "model.json").is_file() else None
    settings = {"config": "config.yaml", "config_sha256": hashlib.sha256(config_yaml.encode()).hexdigest()}
    summary = {**summary, "provenance": provenance(seed=seed, settings=settings, model=fingerprint_of)}
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def run(cfg: DictConfig) -> dict | None:
    check_train_config(cfg)  # unknown top-level keys, non-positive counts: before anything is built
    # --- LSD (issue 12): an objective that trains a sampler schedule of a frozen model has its own recipe
    if issubclass(get_class(cfg.objective._target_), LSDLoss):
        from dlm.train.lsd_run import run_lsd  # imports this module's helpers

        return run_lsd(cfg)
    # ---
    # --- DRAKES (issue 13): reward fine-tuning against a frozen copy of init_from has its own recipe
    if issubclass(get_class(cfg.objective._target_), DrakesLoss):
        from dlm.train.drakes_run import run_drakes  # imports this module's helpers

        return run_drakes(cfg)
    if cfg.get("reward") is not None:
        raise ConfigError(f"reward={cfg.reward.get('_target_')} is read only by reward fine-tuning "
                          "(objective=drakes, e.g. experiment=drakes_dna_demo); drop reward= for this objective")
    # ---
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    quiet_lightning()
    resume = resolve_ckpt(cfg.get("ckpt_path"), ckpt_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    objective = instantiate(cfg.objective)
    if "block_size" in cfg.data:
        raise ConfigError(f"data.block_size={cfg.data.block_size}: the data row length is data.seq_len "
                          "(block_size is only the diffusion block: objective.block_size / model.block_size)")
    if cfg.get("init_from"):
        tokenizer, model_spec, state = init_from_model_dir(cfg.init_from, cfg.get("init_overrides") or {})
        model_spec = with_objective_reading(model_spec, objective, key="init_overrides")
        if objective.family is Family.ENERGY:  # EDLM-NCE: an energy initialised from the denoiser, trained against it
            model_spec, model, proposal = energy_from_denoiser(model_spec, state)
            objective = instantiate(cfg.objective, proposal=proposal)
        else:
            model = build(model_spec)
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                raise ConfigError(f"init_overrides {cfg.init_overrides} change weight shapes of {cfg.init_from}: {e}") from e
    elif objective.family is Family.ENERGY:
        raise ConfigError("an energy (objective=nce) is initialised from, and trained against, a masked diffusion "
                          "model: pass init_from=<diffusion model dir>")
    else:
        tokenizer = load_tokenizer_from(cfg.tokenizer_from) if cfg.get("tokenizer_from") else instantiate(cfg.tokenizer)
        model_spec = {**OmegaConf.to_container(cfg.model, resolve=True),
                      "vocab_size": tokenizer.vocab_size, "mask_id": tokenizer.mask_id}
        model_spec = with_objective_reading(model_spec, objective)
        model = instantiate(model_spec)
    check_compatible(model, objective, seq_len=cfg.data.seq_len)
    check_block_sizes(cfg, model)

    world = world_size(cfg.trainer)
    accumulate = accumulation(cfg.get("global_batch_size"), cfg.batch_size, world)
    data_kwargs = OmegaConf.to_container(cfg.data, resolve=True)
    # a data config with a _target_ names its own DataModule (labelled rows); corpora use TextDataModule
    datamodule_cls = get_class(data_kwargs.pop("_target_")) if "_target_" in data_kwargs else TextDataModule
    datamodule = datamodule_cls(tokenizer=tokenizer, batch_size=cfg.batch_size,
                                eval_batch_size=cfg.get("eval_batch_size"), seed=cfg.seed, **data_kwargs)
    module = DlmModule(model=model, objective=objective, max_steps=cfg.trainer.max_steps,
                       ema_decay=cfg.ema_decay, compile=cfg.compile, **cfg.optim)

    schedule_cfg = cfg.objective.get("schedule")
    schedule_spec = OmegaConf.to_container(schedule_cfg, resolve=True) if schedule_cfg is not None else None
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    export = ExportModelDir(
        path=run_dir / "model", model_spec=model_spec, tokenizer=tokenizer, family=objective.family,
        schedule_spec=schedule_spec, seq_len=int(cfg.data.seq_len),
        keep_first_token=bool(getattr(objective, "keep_first_token", False)),
        # an AR model declares how its softmax is normalised, so it is scored as trained
        extra={"data": data_kwargs, **({"ar_softmax": objective.ar_softmax} if objective.family is Family.AR else {})},
        config_yaml=config_yaml,
    )
    trainer = fit(cfg, module, callbacks=[TokenThroughput(), export], run_dir=run_dir, accumulate=accumulate,
                  resume=resume, config_yaml=config_yaml, datamodule=datamodule)
    if not trainer.is_global_zero:
        return None  # one summary per run (rank 0's): other ranks of a script-launched run print nothing
    summary = {
        "run_dir": str(run_dir),
        "model_dir": str(run_dir / "model"),
        "checkpoint": str(ckpt_dir / "last.ckpt"),
        # the exported weights' step: under ddp_spawn the launching process's trainer never advances
        "step": read_record(run_dir / "model")[0].step if (run_dir / "model").exists() else trainer.global_step,
        "kind": objective.family.kind,
        **{k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))},
    }
    return write_summary(run_dir, summary, seed=cfg.seed, config_yaml=config_yaml, model_dir=run_dir / "model")
