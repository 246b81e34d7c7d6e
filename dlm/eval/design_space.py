"""The metrics of an enumerable design space (GB1: 20^4 cells) for one ``dlm-design`` job: what is exact, what
is estimated, and from what.

Given the designs' cells, the designing sampler and model, the pretrained model, the fine-tuning reward r
and the evaluation oracle, ``space_metrics`` returns (``dlm.eval.design_exact`` has the maths):

  kl_to_pretrained     KL(q ‖ p_pre), p_pre = the exact law of the pretrained model's ancestral sampler on the
                       same grid (E3). q = the design law: **exact** (E3) when the design sampler is the plain
                       ancestral one on a time-free model (method=base, method=drakes), else **estimated** from
                       the designs (``plugin_kl``: Miller–Madow corrected, ``_se`` the sampling error only;
                       ``kl_exact`` says which). ``kl_to_pretrained_upper``: the uncorrected cell-level plug-in
                       from the designs, for every method; its expectation is >= the KL (Jensen: E H(q̂) <= H(q)),
                       by up to log(m / n) when q spreads over m >> n cells (the base model's 0-nat KL reads ~6).
  kl_to_tilted         KL(q ‖ π_α), π_α = p_pre exp(r/α)/Z over all cells (exact; α = ``target_alpha``): the
                       optimum of E[r] − α KL(· ‖ p_pre), which DRAKES, SVDD and SMC all target.
  kl_to_*_reward_bins  the same two KLs between the laws of a coarse statistic, the bin of r(x) among
                       ``REWARD_BINS`` bins of equal mass under π_α: lower bounds on the KLs above (data
                       processing), exact for exact laws and accurately estimated from samples otherwise (n ≫
                       bins), so every method compares on one footing: for a sampled law the KL lies between
                       ``kl_to_*_reward_bins`` (a lower bound) and ``kl_to_*_upper`` (upper in expectation).
  top1_share           share of designs in the measured top ``top_fraction`` (GB1: top 1 % of measured fitness);
                       ``top1_share_exact`` = q(top cells) when q is exact.
  optimum              the target's own numbers (exact): E_π[eval reward], π(top cells), for π_α and for the
                       tilted *natural prior* p_data exp(r/α)/Z (p_data = the empirical law of the measured
                       library the base model was trained on; zero off the library, so a KL to it is infinite
                       for any design law with mass there: reported as ``unmeasured_share`` instead).
  special_token_share  mass of sequences holding a special token (outside the letter space); the KLs above are
                       between laws renormalised over letter sequences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.eval.design import share_in, top_fraction_cells
from dlm.eval.design_exact import (
    all_sequences,
    ancestral_law,
    binned_kl,
    check_exact_law,
    equal_mass_bins,
    histogram,
    kl,
    normalised,
    plugin_kl,
    tilted,
)
from dlm.rewards.protocol import RewardModel
from dlm.samplers.ancestral import AncestralSampler
from dlm.samplers.best_of_n import BestOfNSampler
from dlm.types import Denoiser, Sampler

REWARD_BINS = 32  # the coarse KLs: the fine-tuning reward cut into 32 bins of equal mass under the tilted optimum


def reference_sampler(sampler: Sampler) -> AncestralSampler:
    """The plain ancestral sampler (temperature 1) on the grid of ``sampler`` (its base's, for best-of-N): the
    sampler whose law on the pretrained model is "the pretrained distribution" the KLs are taken to."""
    if isinstance(sampler, BestOfNSampler):
        return reference_sampler(sampler.base)
    if not isinstance(sampler, AncestralSampler):
        raise TypeError(f"{type(sampler).__name__} has no ancestral grid")
    return AncestralSampler(timesteps=sampler.timesteps, schedule=sampler.schedule, rate_scales=sampler.rate_scales)


@torch.no_grad()
def reward_table(reward: RewardModel, *, alphabet_size: int, length: int, vocab_size: int,
                 batch_size: int = 8192) -> Tensor:
    """r of every cell (C,) float64 (one-hots over the model vocabulary, as samplers feed rewards)."""
    x = all_sequences(alphabet_size, length)
    return torch.cat([reward(F.one_hot(c, vocab_size).float()).double().cpu() for c in x.split(batch_size)])


def optimum_stats(target: Tensor, eval_table: Tensor, top: Tensor | None) -> dict[str, float | None]:
    target = normalised(target)
    return {"mean_reward": float((target * eval_table).sum()),
            "top1_share": None if top is None else float(target[top].sum())}


def space_metrics(*, cells: Tensor, model: Denoiser, sampler: Sampler, pretrained: Denoiser,
                  alphabet_size: int, length: int, reward: RewardModel | None, eval_reward: RewardModel,
                  measured_cells: Tensor | None, measured_values: Tensor | None, top_fraction: float,
                  target_alpha: float | None) -> dict:
    """The module docstring's numbers for designs ``cells`` (B,) (−1: holds a special token)."""
    n_cells = alphabet_size ** length
    base = reference_sampler(sampler)
    p_pre = ancestral_law(pretrained, base, alphabet_size=alphabet_size, length=length)
    reason = check_exact_law(model, sampler)
    q_exact = ancestral_law(model, sampler, alphabet_size=alphabet_size, length=length) if reason is None else None
    out: dict = {"kl_exact": q_exact is not None, "kl_estimated_because": reason,
                 "special_token_share": float((cells < 0).double().mean()),
                 "special_token_mass_pretrained": float(1 - p_pre.sum())}
    if q_exact is not None:
        out["special_token_mass_exact"] = float(1 - q_exact.sum())
    est = plugin_kl(cells, p_pre)
    out["kl_to_pretrained_upper"], out["occupied_cells"] = est["plugin"], est["occupied"]
    if q_exact is not None:
        out["kl_to_pretrained"], out["kl_to_pretrained_se"] = kl(q_exact, p_pre), 0.0
    else:
        out["kl_to_pretrained"], out["kl_to_pretrained_se"] = est["estimate"], est["se"]
    top = None
    if measured_cells is not None and measured_values is not None:
        top = top_fraction_cells(measured_cells, measured_values, num_cells=n_cells, fraction=top_fraction)
        measured = torch.zeros(n_cells, dtype=torch.bool)
        measured[measured_cells] = True
        out["top1_share"] = share_in(cells, top)
        out["top1_share_exact"] = None if q_exact is None else float(normalised(q_exact)[top].sum())
        out["unmeasured_share"] = share_in(cells, ~measured)
    out["target_alpha"] = target_alpha
    if reward is None or target_alpha is None:
        return out
    r = reward_table(reward, alphabet_size=alphabet_size, length=length, vocab_size=model.vocab_size)
    target = tilted(p_pre, r, target_alpha)
    if q_exact is not None:
        out["kl_to_tilted"], out["kl_to_tilted_se"] = kl(q_exact, target), 0.0
    else:
        t = plugin_kl(cells, target)
        out["kl_to_tilted"], out["kl_to_tilted_se"] = t["estimate"], t["se"]
    out["kl_to_tilted_upper"] = plugin_kl(cells, target)["plugin"]
    bins = equal_mass_bins(r, target, REWARD_BINS)
    for name, law in (("tilted", target), ("pretrained", p_pre)):
        b = binned_kl(law, bins, REWARD_BINS, law=q_exact, cells=cells)
        out[f"kl_to_{name}_reward_bins"], out[f"kl_to_{name}_reward_bins_se"] = b["estimate"], b["se"]
    eval_table = reward_table(eval_reward, alphabet_size=alphabet_size, length=length, vocab_size=model.vocab_size)
    optimum = {"pretrained_tilted": optimum_stats(target, eval_table, top)}
    if measured_cells is not None:
        optimum["data_tilted"] = optimum_stats(tilted(histogram(measured_cells, n_cells), r, target_alpha),
                                               eval_table, top)
    out["optimum"] = optimum
    return out
