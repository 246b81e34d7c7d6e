"""Checks across the keys of a train config that no single constructor can make; run once, before any compute.

Constructors are the schema of every config group (a misspelled ``model.dimm`` fails at instantiate),
and Hydra refuses an override of a key that does not exist. What is left:
  - a top-level key *added* with ``+`` (``dlm-train +batchsize=8``): nothing reads it, so training
    would silently run with the default; refused, naming the key and the close valid ones;
  - counts that must be positive (``batch_size=0`` would fail deep inside a data loader);
  - the diffusion block: a block-diffusion objective trains on blocks of ``objective.block_size``
    tokens while the exported model is evaluated and sampled with ``model.block_size``; they must agree;
  - a data curriculum that would outlast the run (``data.curriculum_steps`` >= ``trainer.max_steps``).
Every refusal is a ``ConfigError`` naming the key(s) and the fix.
"""

from __future__ import annotations

import difflib
from typing import Any

from omegaconf import DictConfig

from dlm.errors import ConfigError

# The top level of the train config (conf/train.yaml and its config groups): what run(cfg) reads. A test
# keeps it equal to the composed conf/train.yaml, so a key added there must be added here too.
TRAIN_KEYS = frozenset({
    "name", "run_dir", "seed", "batch_size", "eval_batch_size", "global_batch_size", "ema_decay", "compile",
    "init_from", "init_overrides", "tokenizer_from", "ckpt_path", "reward",
    "model", "tokenizer", "data", "schedule", "objective", "optim", "trainer", "logger", "callbacks",
})


def check_train_keys(cfg: DictConfig) -> None:
    """Refuse a top-level key that nothing reads, listing the close valid keys (difflib)."""
    unknown = sorted(str(k) for k in cfg.keys() if k not in TRAIN_KEYS)
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(key, sorted(TRAIN_KEYS), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    more = f" (and {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
    raise ConfigError(f"unknown top-level key {key!r}{more} in the train config (added with +{key}=...?): nothing "
                      f"reads it, so the run would ignore it; {hint}valid keys: {', '.join(sorted(TRAIN_KEYS))}")


def check_positive(key: str, value: Any, *, optional: bool = False) -> None:
    """``key=value`` must be a positive integer (or null when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer" + (" (or null)" if optional else ""))


def check_train_config(cfg: DictConfig) -> None:
    """The checks that need only the config: unknown top-level keys, positive counts."""
    check_train_keys(cfg)
    check_positive("batch_size", cfg.batch_size)
    check_positive("eval_batch_size", cfg.get("eval_batch_size"), optional=True)
    check_positive("global_batch_size", cfg.get("global_batch_size"), optional=True)
    check_positive("data.seq_len", cfg.data.get("seq_len"))
    check_answer_only_rows(cfg)
    check_curriculum(cfg)


def check_curriculum(cfg: DictConfig) -> None:
    """A data curriculum (``data.curriculum_steps``: the first steps train on an easier task) must end before
    the run does, else the run never trains on the task it is validated and exported for."""
    steps, max_steps = cfg.data.get("curriculum_steps") or 0, cfg.trainer.get("max_steps")
    if steps and max_steps and steps >= max_steps:
        raise ConfigError(f"data.curriculum_steps={steps} >= trainer.max_steps={max_steps}: the run would never "
                          "train on the task itself; lower data.curriculum_steps or raise trainer.max_steps")


def check_answer_only_rows(cfg: DictConfig) -> None:
    """Answer-only rows (``data.answer_only_fraction`` > 0) are conditioned on their ``prompt_mask`` only by an
    objective with ``sft=true``; any other objective would mask and score their prompts like every row, and
    the key would do nothing. Conversely ``sft=true`` needs rows that carry ``prompt_mask`` (only data=needle
    with answer-only rows makes them), else the first step fails after the run has started."""
    fraction = cfg.data.get("answer_only_fraction") or 0
    if fraction > 0 and not cfg.objective.get("sft", False):
        raise ConfigError(f"data.answer_only_fraction={fraction} needs objective.sft=true (the loss that keeps the "
                          "prompt clean); set objective.sft=true or data.answer_only_fraction=0")
    if cfg.objective.get("sft", False) and fraction <= 0:
        raise ConfigError("objective.sft=true needs rows that carry prompt_mask (data=needle with "
                          "data.answer_only_fraction > 0); set objective.sft=false or give answer-only rows")


def model_block_key(cfg: DictConfig) -> str:
    """Where the model's block size was set: model.block_size, or init_overrides / the init_from directory."""
    if not cfg.get("init_from"):
        return "model.block_size"
    if "block_size" in (cfg.get("init_overrides") or {}):
        return "init_overrides.block_size"
    return f"the block size of init_from={cfg.init_from} (init_overrides.block_size)"


def check_block_sizes(cfg: DictConfig, model: Any) -> None:
    """A block-diffusion objective must train the block size the model declares (``model.block_size``,
    None unless ``attention=block_causal``): the model directory records the model's, and evaluation and
    sampling use it. With variable blocks (``objective.block_sizes``) it must be one of the trained sizes.
    Objectives without a block (and models that are no denoiser, e.g. a classifier) are not concerned."""
    sizes, size = cfg.objective.get("block_sizes"), cfg.objective.get("block_size")
    if (sizes is None and size is None) or model.block_size is None:
        return
    key = model_block_key(cfg)
    if sizes is not None:
        if model.block_size not in list(sizes):
            raise ConfigError(f"{key}={model.block_size} is not one of objective.block_sizes={list(sizes)}: the model "
                              "is evaluated and sampled with a block size it was never trained on; make it one of them")
        return
    if size is not None and int(size) != model.block_size:
        raise ConfigError(f"objective.block_size={size} but {key}={model.block_size}: the model would be trained on "
                          f"blocks of {size} tokens and exported, evaluated and sampled with blocks of "
                          f"{model.block_size}; set both to the same value")
