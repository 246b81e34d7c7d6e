"""DRAKES does what the paper says on a tiny trained model (issue 13, notes §8.2.5), seeded, ~15 s on one core.

A 2-layer transformer is pre-trained (MDLM NELBO, 200 steps) on 8-mers of a DNA Markov chain with GC ~ 0.40,
then fine-tuned toward GC content for 30 steps (16 ancestral steps, the last 8 relaxed, tau = 1):
* alpha = 0.1: the reward of the fine-tuned model's own samples rises while the exact path KL stays bounded and
  the samples stay as diverse as the base model's;
* alpha = 0 ("DRAKES w/o KL"): the reward saturates at 1, the KL is several times larger, and diversity
  collapses onto the all-GC 8-mers: at most 2^8 = 256 of them exist (128 uniform draws of them are 0.79 unique,
  mean pairwise Hamming 0.5), against 0.98 unique and Hamming 0.73 for the base model. Measured: 0.71 and 0.49.
  (Once every sample scores 1 the straight-through reward has no gradient left, so it collapses no further.)
Measured with K = 0 rollouts (``DrakesLoss.evaluate``): real samples, the unbiased path-KL estimate.
"""

from __future__ import annotations

import copy

import torch

from dlm.diffusion.schedule import LogLinearSchedule
from dlm.models.transformer import Transformer
from dlm.objectives.drakes import DrakesLoss
from dlm.objectives.masked import MaskedDiffusionLoss
from dlm.rewards.toy import GCContent

L, V, MASK = 8, 8, 7
# a stay-biased chain over A C G T whose stationary GC fraction is ~0.40
TRANSITIONS = torch.tensor([[.5, .15, .15, .2], [.25, .35, .2, .2], [.2, .2, .35, .25], [.2, .15, .15, .5]])


def markov(n: int, g: torch.Generator) -> torch.Tensor:
    x = torch.empty(n, L, dtype=torch.long)
    x[:, 0] = torch.multinomial(torch.tensor([.3, .2, .2, .3]), n, replacement=True, generator=g)
    for i in range(1, L):
        x[:, i] = torch.multinomial(TRANSITIONS[x[:, i - 1]], 1, generator=g)[:, 0]
    return x


def pretrained() -> Transformer:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = Transformer(vocab_size=V, mask_id=MASK, dim=32, n_layers=2, n_heads=2, max_seq_len=L, init_std=0.02)
    loss, opt = MaskedDiffusionLoss(schedule=LogLinearSchedule()), torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        out = loss(model, {"input_ids": markov(64, g)})
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return model.requires_grad_(False).eval()


def finetune(base: Transformer, alpha: float, steps: int = 30) -> tuple[dict, dict]:
    model = copy.deepcopy(base).requires_grad_(True).train()
    loss, reward = DrakesLoss(num_steps=16, truncate_steps=8, gumbel_temp=1.0, alpha=alpha), GCContent()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def measure() -> dict:
        out = loss.evaluate(model, base, reward, batch_size=128, length=L, generator=torch.Generator().manual_seed(123))
        return {k: float(v) for k, v in out.metrics.items()}

    before = measure()
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        out = loss(model, base, reward, batch_size=16, length=L, generator=g, step=step)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return before, measure()


def test_reward_rises_with_bounded_kl_and_alpha_zero_collapses_diversity():
    base = pretrained()
    before, kl_on = finetune(base, alpha=0.1)
    _, kl_off = finetune(base, alpha=0.0)
    assert 0.3 < before["reward"] < 0.5 and before["kl_exact"] == 0.0 and before["unique_fraction"] > 0.95
    # alpha > 0: the reward rises, the KL stays bounded, diversity is kept
    assert kl_on["reward"] > before["reward"] + 0.08, (before, kl_on)
    assert 0 < kl_on["kl_exact"] < 2.0 and kl_on["unique_fraction"] > 0.95 and kl_on["hamming"] > 0.7
    # alpha = 0: reward hacking: saturated reward, a KL several times larger, diversity collapsed
    assert kl_off["reward"] > 0.97 and kl_off["kl_exact"] > 3 * kl_on["kl_exact"], (kl_on, kl_off)
    assert kl_off["unique_fraction"] < 0.8 and kl_off["hamming"] < 0.55, kl_off
    assert kl_on["kl_public"] == kl_off["kl_public"] == 0.0  # the public estimator sees none of it (hard samples)
