"""Exact distributions on an enumerable design space (GB1: 20^4 = 160,000 sequences) and KLs to them.

**The law of the ancestral sampler, exactly.** A masked-diffusion model defines no closed-form likelihood
of a sequence (any-order: log p(x) is only bounded by the ELBO), but the *sampler's* law on a short canvas
is a finite sum. ``dlm.samplers.ancestral.AncestralSampler`` reveals every masked position at step i with
probability ψ_i, independently of the other positions and of the network (ψ_{N−1} = 1), and draws each
revealed value from p_θ(x^ℓ | x_t) (the step's filtered, tempered law; the positions revealed together are
drawn independently given the canvas). So a position's reveal step k has law q_k = ψ_k Π_{i<k} (1 − ψ_i),
positions i.i.d., and the history is an ordered partition π = (B_1, ..., B_m) of the L positions (those
revealed together, in order) with

    P(π)     = Σ_{k_1 < ... < k_m} Π_j q_{k_j}^{|B_j|}                                          (E1)
    P(x | π) = Π_j Π_{ℓ ∈ B_j} p_θ(x^ℓ | x on B_1 ∪ ... ∪ B_{j−1}, the rest masked)              (E2)
    P(x)     = Σ_π P(π) P(x | π)                                                                 (E3)

For a **time-free** denoiser (the network reads no t) (E2) needs p_θ at one canvas per (revealed set S,
letters on S): Σ_S K^|S| = (K + 1)^L − K^L canvases (34,481 for GB1), one batched forward; (E3) sums the
Fubini number of ordered partitions (75 for L = 4). The result is the exact law of that sampler with that
grid, not an estimate (``ancestral_law``; tested against the sampler's histogram). A time-conditioned
denoiser, or any sampler that is not the plain ancestral one (SVDD, SMC, guidance, best-of-N), has no such
sum here: its law is estimated from its samples (``plugin_kl``).

Draws of special tokens (PAD/BOS/EOS have tiny but non-zero probability) leave the space of letter
sequences: ``ancestral_law`` returns the law over the K^L letter sequences, summing to 1 − (that mass).
KLs below are between laws renormalised over letter sequences; the leftover mass is reported beside them.
Shapes: C = K^L cells, cell index Σ_i id_i K^(L−1−i) (``dlm.rewards.gb1_lookup.variant_index``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from dlm.errors import ConfigError
from dlm.rewards.gb1_lookup import variant_index
from dlm.samplers.ancestral import AncestralSampler
from dlm.types import Denoiser

MAX_CELLS = 250_000  # K^L above this is not enumerated (the canvases of (E2) grow as (K + 1)^L)


def enumerable(alphabet_size: int, length: int) -> bool:
    return alphabet_size ** length <= MAX_CELLS


def all_sequences(alphabet_size: int, length: int) -> Tensor:
    """Every letter sequence (K^L, L) long, row c = the sequence of cell c."""
    c = torch.arange(alphabet_size ** length)
    powers = alphabet_size ** torch.arange(length - 1, -1, -1)
    return (c[:, None] // powers) % alphabet_size


def cells_of(tokens: Tensor, alphabet_size: int) -> Tensor:
    """Cell index (B,) of designs (B, L); −1 for a row holding a non-letter id (outside the space)."""
    inside = (tokens < alphabet_size).all(-1)
    return torch.where(inside, variant_index(tokens.clamp(max=alphabet_size - 1), alphabet_size), -1)


def ordered_partitions(items: tuple[int, ...]) -> Iterator[tuple[tuple[int, ...], ...]]:
    """Every ordered partition (B_1, ..., B_m) of ``items`` into non-empty blocks."""
    if not items:
        yield ()
        return
    for size in range(1, len(items) + 1):
        for first in itertools.combinations(items, size):
            rest = tuple(i for i in items if i not in first)
            for tail in ordered_partitions(rest):
                yield (first, *tail)


def reveal_step_law(sampler: AncestralSampler) -> Tensor:
    """q_k (N,) float64: the step at which a masked position is revealed (module docstring), from the
    sampler's own grid and ψ (rate scales and the forced last step included)."""
    grid = sampler.grid(torch.device("cpu"))
    psi = torch.stack([sampler.step_psi(i, grid[i], grid[i + 1]).double().reshape(()) for i in range(sampler.num_steps)])
    survive = torch.cat([torch.ones(1, dtype=torch.float64), (1 - psi).cumprod(0)[:-1]])
    return psi * survive


def partition_probability(sizes: tuple[int, ...], q: Tensor) -> float:
    """(E1): Σ over strictly increasing steps k_1 < ... < k_m of Π_j q_{k_j}^{|B_j|}, by a running sum."""
    f = q ** sizes[0]  # f[k]: sum over histories whose j-th block lands at step k
    for size in sizes[1:]:
        before = torch.cat([torch.zeros(1, dtype=torch.float64), f.cumsum(0)[:-1]])
        f = before * q ** size
    return float(f.sum())


def check_exact_law(model: Denoiser, sampler: object) -> str | None:
    """None when (E3) gives ``sampler``'s law for ``model``; else the reason it must be estimated."""
    if type(sampler) is not AncestralSampler:
        return f"{type(sampler).__name__} is not the plain ancestral sampler"
    if model.time_conditioned:
        return "the denoiser is time-conditioned (enumeration needs a time-free one)"
    if sampler.logit_scales is not None:
        return "the sampler has per-step logit scales"
    return None


@torch.no_grad()
def ancestral_law(model: Denoiser, sampler: AncestralSampler, *, alphabet_size: int, length: int,
                  batch_size: int = 8192) -> Tensor:
    """P(x) (K^L,) float64 of ``sampler`` run on ``model`` over all letter sequences, by (E1)–(E3).

    Refuses (ConfigError) what ``check_exact_law`` rules out and spaces above ``MAX_CELLS``."""
    reason = check_exact_law(model, sampler)
    if reason is not None:
        raise ConfigError(f"the exact design law needs the ancestral sampler on a time-free model: {reason}")
    k, n_cells = alphabet_size, alphabet_size ** length
    if n_cells > MAX_CELLS:
        raise ConfigError(f"{k}^{length} sequences are too many to enumerate (limit {MAX_CELLS})")
    device = next(model.parameters()).device
    x = all_sequences(k, length).to(device)
    t = sampler.grid(device)[0].float()
    # A[S][ℓ] (C,): log p_θ(x^ℓ | x on S, the rest masked) for every revealed set S and position ℓ ∉ S
    table: dict[tuple[int, ...], dict[int, Tensor]] = {}
    for size in range(length):
        for s in itertools.combinations(range(length), size):
            ctx = all_sequences(k, size).to(device)  # letters on S, cell index over S
            canvas = torch.full((ctx.shape[0], length), model.mask_id, dtype=torch.long, device=device)
            if size:
                canvas[:, list(s)] = ctx
            log_p = torch.cat([sampler.step.x0_log_probs(model, c, t.expand(c.shape[0]))
                               for c in canvas.split(batch_size)]).double()  # (K^|S|, L, V)
            row = variant_index(x[:, list(s)], k) if size else torch.zeros(n_cells, dtype=torch.long, device=device)
            table[s] = {pos: log_p[row, pos, x[:, pos]] for pos in range(length) if pos not in s}
    q = reveal_step_law(sampler)
    terms = []
    for blocks in ordered_partitions(tuple(range(length))):
        weight = partition_probability(tuple(len(b) for b in blocks), q)
        if weight == 0.0:
            continue
        log_px, seen = torch.full((n_cells,), math.log(weight), dtype=torch.float64, device=device), ()
        for block in blocks:
            for pos in block:
                log_px = log_px + table[tuple(sorted(seen))][pos]
            seen = seen + block
        terms.append(log_px)
    return torch.stack(terms).logsumexp(0).exp().cpu()


def normalised(p: Tensor) -> Tensor:
    """p / Σ p in float64 (a law over letter sequences once special-token mass is set aside)."""
    p = p.double()
    return p / p.sum()


def kl(p: Tensor, q: Tensor) -> float:
    """KL(p ‖ q) = Σ_c p_c log(p_c / q_c) of two explicit laws (C,) (renormalised), in nats; 0 log 0 = 0,
    +inf when p puts mass where q has none."""
    p, q = normalised(p), normalised(q)
    on = p > 0
    if bool((q[on] == 0).any()):
        return math.inf
    return float((p[on] * (p[on].log() - q[on].log())).sum())


def tilted(p: Tensor, reward: Tensor, alpha: float) -> Tensor:
    """The optimum of E_q[r] − α KL(q ‖ p): p exp(r/α) / Z (C,) float64 (DRAKES' target; notes §2.1).
    Computed in log space: r/α of a fitness of 8 at α = 0.01 is 800 nats."""
    if not alpha > 0:
        raise ConfigError(f"target_alpha={alpha} must be > 0 (the tilted optimum p exp(r / alpha) / Z)")
    log_w = normalised(p).log() + reward.double() / alpha
    return (log_w - log_w.logsumexp(0)).exp()


def histogram(cells: Tensor, num_cells: int) -> Tensor:
    """Empirical law (C,) float64 of designs' cells (B,) (−1, outside the space, dropped before normalising)."""
    inside = cells[cells >= 0]
    return torch.bincount(inside, minlength=num_cells).double() / max(1, inside.numel())


def plugin_kl(cells: Tensor, target: Tensor) -> dict[str, float]:
    """KL(q ‖ target) estimated from n designs (cells (B,)) of an unknown law q, target (C,) explicit.

    Plug-in: KL̂ = Σ_c q̂_c log(q̂_c / target_c) with q̂ the histogram; it overestimates, since
    E[Σ q̂ log q̂] ≥ Σ q log q, by ≈ (m − 1)/(2n) (m occupied cells; Miller–Madow) when n ≫ m and by up to
    log(m / n) when q spreads over m ≫ n cells (the histogram then looks n-times sparser than q). Returned:
    ``estimate`` = max(0, KL̂ − (m̂ − 1)/(2n)) (Miller–Madow corrected), ``plugin`` = KL̂, ``se`` = √(Var_q̂[log q̂/t] / n)
    (delta method; sampling noise only, not the bias), ``occupied`` = m̂, ``n``."""
    n = int((cells >= 0).sum())
    q_hat = histogram(cells, target.numel())
    t = normalised(target)
    on = q_hat > 0
    if n == 0:
        return {"estimate": math.nan, "plugin": math.nan, "se": math.nan, "occupied": 0, "n": 0}
    if bool((t[on] == 0).any()):
        return {"estimate": math.inf, "plugin": math.inf, "se": math.nan, "occupied": int(on.sum()), "n": n}
    log_ratio = q_hat[on].log() - t[on].log()
    plug = float((q_hat[on] * log_ratio).sum())
    var = float((q_hat[on] * (log_ratio - plug) ** 2).sum())
    m = int(on.sum())
    # a KL is >= 0: a correction below 0 is noise, clipped
    return {"estimate": max(0.0, plug - (m - 1) / (2 * n)), "plugin": plug, "se": math.sqrt(var / n), "occupied": m,
            "n": n}


def equal_mass_bins(score: Tensor, law: Tensor, num_bins: int) -> Tensor:
    """Bin id (C,) in [0, num_bins) of every cell: cells sorted by ``score`` (C,) (ties by index) and cut into
    ``num_bins`` runs of equal mass under ``law`` (C,) (each bin holds ≈ 1/num_bins of it)."""
    order = torch.argsort(score.double(), stable=True)
    mass = normalised(law)[order].cumsum(0) - normalised(law)[order] / 2  # midpoint of each cell's mass
    bins = torch.empty_like(order)
    bins[order] = (mass * num_bins).floor().long().clamp(0, num_bins - 1)
    return bins


def pushforward(law: Tensor, bins: Tensor, num_bins: int) -> Tensor:
    """The law (num_bins,) of the bin of a cell drawn from ``law`` (C,)."""
    return torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, normalised(law))


def binned_kl(target: Tensor, bins: Tensor, num_bins: int, *, law: Tensor | None = None,
              cells: Tensor | None = None) -> dict[str, float]:
    """KL(q ∘ bin⁻¹ ‖ target ∘ bin⁻¹): the KL between the laws of a coarse statistic (the bin of a cell), a lower
    bound on KL(q ‖ target) by the data-processing inequality. Exact from ``law`` (C,), else estimated from
    designs' ``cells`` (B,) by ``plugin_kl`` — with n ≫ num_bins that estimate is accurate, unlike the
    cell-level one, so exact and sampled methods compare on one footing."""
    t = pushforward(target, bins, num_bins)
    if law is not None:
        return {"estimate": kl(pushforward(law, bins, num_bins), t), "se": 0.0}
    inside = cells[cells >= 0]
    est = plugin_kl(bins[inside], t)
    return {"estimate": est["estimate"], "se": est["se"]}
