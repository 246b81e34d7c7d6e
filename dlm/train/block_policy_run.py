"""train_block_policy: REINFORCE training of a block-size policy for a frozen block denoiser (``dlm-train-policy``).

Plain torch (the denoiser is frozen and every step is a sampler rollout, so Lightning adds nothing).
The reward is the per-token log-likelihood of each finished sample under an autoregressive model of
the same tokenizer, minus ``step_cost`` per denoiser call per generated token ((P1) of
``dlm.objectives.block_policy``). After training, the greedy policy and every fixed block size in
``sizes`` are scored on the same ``eval_rollouts`` seeded rollouts (common random numbers), so the
summary says whether the learned policy beats the best constant choice.

Writes ``<out>/log.jsonl`` (one line per step), ``<out>/policy/`` (a model directory of family
``BLOCK_POLICY``, loaded by ``sampler=block_dynamic``) and ``<out>/summary.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from dlm.errors import ConfigError
from dlm.eval.model_dir import pick_device
from dlm.eval.sample_job import prompt_ids
from dlm.io.atomic import write_text_atomic
from dlm.io.block_policy_dir import save_block_policy
from dlm.io.model_dir import load_model_dir
from dlm.io.record import Family
from dlm.models.block_policy import BlockSizePolicy, FixedBlockSize
from dlm.objectives.block_policy import ARLogLikelihood, BlockPolicyTrainer, rollout_metrics
from dlm.samplers.canvas import check_length

SamplerFactory = Callable[[object], Callable]  # block-size policy -> block sampler that asks it


def evaluate_policy(sampler, model: nn.Module, reward_fn, *, rollouts: int, batch_size: int, length: int,
                    prompt: torch.Tensor | None, step_cost: float, seed: int, device: str) -> dict[str, float]:
    """Mean rollout metrics over ``rollouts`` sampler calls seeded ``seed, seed + 1, ...``."""
    rows = []
    for i in range(rollouts):
        gen = torch.Generator(device=device).manual_seed(seed + i)
        out = sampler(model, batch_size=batch_size, length=length, prompt=prompt, generator=gen)
        rows.append(rollout_metrics(out, reward_fn, step_cost=step_cost, length=length, prompt=prompt))
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def train_block_policy(
    *,
    model: str,
    reward_model: str,
    make_sampler: SamplerFactory,
    sizes: Sequence[int],
    hidden_dim: int = 64,
    step_cost: float = 0.05,
    steps: int = 200,
    batch_size: int = 8,
    length: int = 64,
    prompt: str | None = None,
    num_rollouts: int = 1,
    lr: float = 1e-2,
    baseline_momentum: float = 0.9,
    eval_rollouts: int = 4,
    seed: int = 0,
    device: str = "auto",
    out: str | Path,
) -> dict:
    if steps < 1:
        raise ConfigError(f"steps={steps} must be >= 1")
    device = pick_device(device)
    denoiser = load_model_dir(model, device=device)
    if denoiser.family is not Family.BLOCK:
        raise ConfigError(f"model={model} is a {denoiser.family.kind!r} model; the block-size policy drives a block "
                          "diffusion model (dlm-train objective=block, or dlm-convert attention=block_causal)")
    judge = load_model_dir(reward_model, device=device)
    if judge.family is not Family.AR:
        raise ConfigError(f"reward_model={reward_model} is a {judge.family.kind!r} model; the reward is a "
                          "log-likelihood under an autoregressive model (dlm-train objective=ar)")
    if judge.tokenizer.fingerprint() != denoiser.tokenizer.fingerprint():
        raise ConfigError(f"reward_model={reward_model} uses tokenizer {judge.tokenizer.name}, model={model} uses "
                          f"{denoiser.tokenizer.name}: the reward must read the denoiser's token ids")
    ids = prompt_ids(denoiser.tokenizer, prompt, family=denoiser.family)
    check_length(length, prompt_len=len(ids), max_seq_len=denoiser.model.max_seq_len)
    prompt_t = torch.tensor(ids, dtype=torch.long, device=device) if ids else None

    torch.manual_seed(seed)
    policy = BlockSizePolicy(sizes=sizes, dim=denoiser.model.dim, hidden_dim=hidden_dim).to(device)
    reward_fn = ARLogLikelihood(judge.model, ar_softmax=judge.record.ar_softmax)
    trainer = BlockPolicyTrainer(policy=policy, sampler=make_sampler(policy), model=denoiser.model,
                                 batch_size=batch_size, length=length, prompt=prompt_t, reward_fn=reward_fn,
                                 step_cost=step_cost, baseline_momentum=baseline_momentum,
                                 num_rollouts=num_rollouts, lr=lr)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    with open(out / "log.jsonl", "w") as log:
        for step in range(steps):
            metrics = trainer.step(generator=generator)
            log.write(json.dumps({"step": step + 1, **metrics}) + "\n")
            log.flush()

    policy.eval()  # greedy decisions from here on
    common = dict(rollouts=eval_rollouts, batch_size=batch_size, length=length, prompt=prompt_t,
                  step_cost=step_cost, seed=seed + 10_000, device=device)
    learned = evaluate_policy(make_sampler(policy), denoiser.model, reward_fn, **common)
    fixed = {int(s): evaluate_policy(make_sampler(FixedBlockSize(s)), denoiser.model, reward_fn, **common)
             for s in policy.sizes}
    best = max(fixed, key=lambda s: fixed[s]["return"])
    summary = {"policy_dir": str(out / "policy"), "steps": steps, "step_cost": step_cost, "sizes": list(policy.sizes),
               "policy": learned, "fixed": {str(s): m for s, m in fixed.items()}, "best_fixed_size": best,
               "return_gain_over_best_fixed": learned["return"] - fixed[best]["return"]}
    save_block_policy(out / "policy", policy=policy, tokenizer=denoiser.tokenizer,
                      extra={"trained_for": str(model), "reward_model": str(reward_model), "step_cost": step_cost})
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
