"""Block diffusion loss (BD3-LM, SDAR; CtrlDiff's variable blocks): masked diffusion inside each block,
conditioned on the clean earlier blocks, trained in one pass over [x_t ; x_0].

    -log p(x) <= sum_b E_t [ w(t) sum_{i in b, x_t^i = MASK} -log p_theta(x^i | x_t^b, x^{<b}) ]

(BD3-LM Eq. 6 / research note §1), w(t) = -alpha'(t) / (1 - alpha(t)) (= 1/t for the linear
mask schedule alpha = 1 - t). The loss is this sum normalised by the number of target tokens (not
by the number of masked ones). t is drawn per block (BD3-LM) or per sequence (SDAR) from the
clipped interval [t_min, t_max] (BD3-LM §3.3: the weight stays w(t), so a clipped interval is a
variance-reduced training loss, not a bound). ``shift_logits`` reads token i's prediction from
the output at i - 1 (Dream / Fast-dLLM v2): from the noisy stream when i - 1 is in i's block, else
from the clean stream, so block size 1 with t = 1 is exactly the AR next-token loss.
Shapes: input_ids, attention_mask, positions, prompt_mask (B, L); logits (B, K, V).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from dlm.diffusion.forward import TimeSampling, mask_tokens, sample_unit
from dlm.diffusion.posterior import subs_log_probs
from dlm.diffusion.schedule import LogLinearSchedule, nelbo_weight
from dlm.errors import ConfigError
from dlm.io.record import Family
from dlm.nn.attention import padding_mask_to_attn_mask
from dlm.nn.block_mask import (
    block_diffusion_mask,
    block_ids_fixed,
    block_ids_from_sizes,
    document_ids_from_positions,
    random_block_partition,
    segment_ids,
)
from dlm.objectives.masked import target_positions
from dlm.types import Denoiser, LossOutput, NoiseSchedule

TimeGranularity = Literal["sequence", "block"]
Reduction = Literal["token", "row"]


def block_layout(
    batch: dict[str, Tensor],
    *,
    block_size: int,
    block_sizes: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(positions, block_ids, doc_ids), each (B, L) long, for a batch.

    Documents start where ``positions`` resets to 0 (one document per row without ``positions``);
    block ids restart at every document. Fixed blocks: id = position // block_size (a document's
    last block may be short), and block_size must divide L. Variable blocks (``block_sizes``): a
    fresh random partition of every document (CtrlDiff).
    """
    x0 = batch["input_ids"]
    b, n = x0.shape
    positions = batch.get("positions")
    if positions is None:
        positions = torch.arange(n, device=x0.device).expand(b, n)
    doc_ids = document_ids_from_positions(positions)
    if block_sizes is None:
        block_ids_fixed(n, block_size)  # validates that block_size divides the row length
        return positions, positions // block_size, doc_ids
    block_ids = torch.empty_like(x0)
    for row in range(b):
        _, lengths = torch.unique_consecutive(doc_ids[row], return_counts=True)
        parts = [block_ids_from_sizes(random_block_partition(int(m), block_sizes, generator)) for m in lengths]
        block_ids[row] = torch.cat(parts).to(x0.device)
    return positions, block_ids, doc_ids


def document_starts(doc_ids: Tensor) -> Tensor:
    """(B, L) bool: first token of each document (it has no left neighbour to be predicted from)."""
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return starts


def block_targets(batch: dict[str, Tensor], doc_ids: Tensor, *, keep_first_token: bool = False,
                  shift_logits: bool = False, sft: bool = False) -> Tensor:
    """(B, L) bool: the tokens block diffusion scores, in training (the loss) and evaluation (the bound).

    Real tokens (``attention_mask``), minus each document's first token when it is kept clean
    (``keep_first_token``) or has no left neighbour to be read from (``shift_logits``), minus the
    prompt (``sft``: ``batch["prompt_mask"]`` (B, L) bool). doc_ids: (B, L) from ``block_layout``.
    """
    eligible = target_positions(batch, keep_first_token=False)
    if keep_first_token or shift_logits:
        eligible = eligible & ~document_starts(doc_ids)
    if sft:
        if "prompt_mask" not in batch:
            raise ConfigError("objective.sft=true needs batch['prompt_mask'] (B, L) bool; use an SFT data "
                              "collator or set objective.sft=false")
        eligible = eligible & ~batch["prompt_mask"].bool()
    return eligible


def prediction_source(block_ids: Tensor, doc_ids: Tensor, shift_logits: bool) -> Tensor:
    """(B, L) long index into the 2L outputs of [x_t ; x_0] whose logits predict token i.

    No shift: i (noisy stream). Shift: i - 1 in the noisy stream if it lies in i's block, else
    L + i - 1 (the clean stream of the previous block: what the KV cache holds at inference).
    Document starts get 0 and must not be targets.
    """
    b, n = block_ids.shape
    idx = torch.arange(n, device=block_ids.device).expand(b, n)
    if not shift_logits:
        return idx
    same_block = torch.zeros_like(block_ids, dtype=torch.bool)
    same_block[:, 1:] = (block_ids[:, 1:] == block_ids[:, :-1]) & (doc_ids[:, 1:] == doc_ids[:, :-1])
    src = torch.where(same_block, idx - 1, n + idx - 1)
    return torch.where(document_starts(doc_ids), torch.zeros_like(src), src)


def block_denoise_nll(
    model: Denoiser,
    xt: Tensor,
    x0: Tensor,
    targets: Tensor,
    *,
    positions: Tensor,
    block_ids: Tensor,
    doc_ids: Tensor,
    attention_mask: Tensor | None = None,
    t: Tensor | None = None,
    shift_logits: bool = False,
) -> Tensor:
    """-log p_theta(x0^i | x_t^b, x^{<b}) at ``targets`` (B, L) bool, 0 elsewhere; (B, L) float32.

    One forward over [x_t ; x_0] (B, 2L) with the BD3-LM mask and the same RoPE positions for both
    halves; the output head runs only at the K = max targets-per-row source positions (SUBS:
    the mask logit is excluded). t: (B, L) per-token time, used iff ``model.time_conditioned``
    (the clean half gets t = 0). ``attention_mask``: the batch's HF padding mask (B, L), 1 = token,
    0 = pad (None: no padding).
    """
    b, n = x0.shape
    src = prediction_source(block_ids, doc_ids, shift_logits)
    k = max(int(targets.sum(-1).max().item()), 1)
    order = torch.argsort((~targets).to(torch.int8), dim=1, stable=True)[:, :k]  # targets first
    valid = torch.arange(k, device=x0.device)[None] < targets.sum(-1, keepdim=True)
    at = src.gather(1, order)  # (B, K)
    attn_mask = block_diffusion_mask(block_ids, doc_ids)  # (B, 1, 2L, 2L)
    if attention_mask is not None:  # padding: no query attends to a pad key, in either stream
        attn_mask = attn_mask & padding_mask_to_attn_mask(torch.cat([attention_mask, attention_mask], 1))
    kwargs: dict = dict(positions=torch.cat([positions, positions], 1), attn_mask=attn_mask)
    inputs = torch.cat([xt, x0], 1)
    if not model.time_conditioned:
        logits = model(inputs, None, logits_at=at, **kwargs)
    else:  # per-token adaLN: evaluated in full, as its modulation is per position (the clean half gets t = 0)
        full = model(inputs, torch.cat([t, torch.zeros_like(t)], 1), **kwargs)
        logits = full.gather(1, at[..., None].expand(-1, -1, full.shape[-1]))
    log_p = subs_log_probs(logits[valid], model.mask_id)  # (N, V) float32, only real targets
    nll = torch.zeros(x0.shape, device=x0.device, dtype=torch.float32)
    rows = torch.arange(b, device=x0.device)[:, None].expand(b, k)[valid]
    cols = order[valid]
    nll[rows, cols] = -log_p.gather(-1, x0[rows, cols][:, None]).squeeze(-1)
    return nll


class BlockDiffusionLoss:
    """Objective(model, batch) -> LossOutput for block diffusion (BD3-LM / SDAR / CtrlDiff).

    Args:
        block_size: tokens per block (must divide the sequence length).
        block_sizes: if given, each document gets a random partition into sizes from this set.
        schedule: noise schedule; default ``LogLinearSchedule`` (mask probability = t, w = 1/t).
        t_granularity: one t per ``block`` (BD3-LM) or per ``sequence`` row (SDAR).
        t_sampling: ``antithetic`` (stratified over all drawn times) or ``uniform``.
        t_min, t_max: clipped interval of t (BD3-LM §3.3); the weight stays w(t).
        resample: re-draw the masks of a block whose realised masked fraction falls outside
            [t_min, t_max] (BD3-LM ``training.resample``; up to ``resample_tries`` times; only when
            the interval is clipped, and blocks with no fraction inside the interval are left alone).
        shift_logits: predict token i from output i - 1 (Dream / Fast-dLLM v2).
        keep_first_token: never mask a document's first token, leave it out of the loss.
        sft: the batch carries ``prompt_mask``; prompt tokens are never masked nor counted.
        answer_t_min: with ``sft``, the lower end of t for rows that hold a prompt (answer rows; rows
            without one keep [t_min, t_max]). 1.0 masks every answer token together (t = 1, w = 1):
            the answer is learnt as one-pass infilling from the clean prompt, the form a retrieval
            query is decoded in, and a shortcut through a visible sibling answer token never arises.
            None: t_min. Like any clipped interval it makes the loss a training loss, not a bound.
        reduction: ``token`` (default): the batch's summed loss over its number of target tokens, so a
            row weighs by its target tokens; ``row``: the mean over rows of each row's loss per target
            token, so every row weighs the same. With ``sft`` and answer-only rows mixed with ordinary
            ones, ``token`` lets a few ordinary rows (every token a target) outweigh many short answers;
            ``row`` gives each kind the share of rows it has in the data. ``nll_sum`` / ``num_tokens``
            (the logged bound) do not change.
    """

    family = Family.BLOCK  # what it trains (a block_causal model): read by the runner, written to model.json

    def __init__(
        self,
        *,
        block_size: int = 4,
        block_sizes: list[int] | None = None,
        schedule: NoiseSchedule | None = None,
        t_granularity: TimeGranularity = "block",
        t_sampling: TimeSampling = "antithetic",
        t_min: float = 1e-3,
        t_max: float = 1.0,
        shift_logits: bool = False,
        keep_first_token: bool = False,
        sft: bool = False,
        resample: bool = False,
        resample_tries: int = 16,
        answer_t_min: float | None = None,
        reduction: Reduction = "token",
    ) -> None:
        if int(block_size) < 1:
            raise ConfigError(f"objective.block_size={block_size} must be >= 1")
        if block_sizes is not None and (len(block_sizes) == 0 or any(int(s) < 1 for s in block_sizes)):
            raise ConfigError(f"objective.block_sizes={list(block_sizes)} must be a non-empty list of sizes >= 1")
        if t_granularity not in ("sequence", "block"):
            raise ConfigError(f"objective.t_granularity={t_granularity!r}; valid: 'sequence', 'block'")
        if t_sampling not in ("antithetic", "uniform"):
            raise ConfigError(f"objective.t_sampling={t_sampling!r}; valid: 'antithetic', 'uniform'")
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ConfigError(f"objective.t_min={t_min}, objective.t_max={t_max}: need 0 <= t_min < t_max <= 1")
        if answer_t_min is not None and not (sft and t_min <= answer_t_min <= t_max):
            raise ConfigError(f"objective.answer_t_min={answer_t_min} needs objective.sft=true and t_min={t_min} <= "
                              f"answer_t_min <= t_max={t_max} (the interval of t for answer rows)")
        if reduction not in ("token", "row"):
            raise ConfigError(f"objective.reduction={reduction!r}; valid: 'token' (per target token), 'row' (every "
                              "row weighs the same)")
        self.answer_t_min = None if answer_t_min is None else float(answer_t_min)
        self.reduction = reduction
        self.block_size = int(block_size)
        self.block_sizes = None if block_sizes is None else [int(s) for s in block_sizes]
        self.schedule = schedule or LogLinearSchedule()
        self.t_granularity, self.t_sampling = t_granularity, t_sampling
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.shift_logits, self.keep_first_token, self.sft = shift_logits, keep_first_token, sft
        self.resample, self.resample_tries = resample, int(resample_tries)

    def resample_masks(self, masked: Tensor, mask_prob: Tensor, eligible: Tensor, seg: Tensor,
                       generator: torch.Generator | None = None) -> Tensor:
        """Re-draw ``masked`` (B, L) in blocks whose masked fraction is outside [t_min, t_max] (BD3-LM).

        A block is re-drawn only while some fraction k / n (n its eligible tokens) lies in the
        interval; after ``resample_tries`` rounds the last draw stands.
        """
        b, n = seg.shape
        flat = (seg + torch.arange(b, device=seg.device)[:, None] * n).reshape(-1)

        def per_segment(v: Tensor) -> Tensor:
            return torch.zeros(b * n, device=seg.device).index_add_(0, flat, v.reshape(-1).float())

        count = per_segment(eligible)
        # feasible: some k in [0, count] with t_min <= k / count <= t_max
        feasible = (count > 0) & (torch.floor(self.t_max * count) >= torch.ceil(self.t_min * count))
        for _ in range(self.resample_tries):
            frac = per_segment(masked) / count.clamp(min=1)
            bad = feasible & ((frac < self.t_min) | (frac > self.t_max))
            if not bad.any():
                break
            redraw = bad[flat].view(b, n) & eligible
            u = torch.rand(masked.shape, device=masked.device, generator=generator)
            masked = torch.where(redraw, u < mask_prob, masked)
        return masked

    def targets(self, batch: dict[str, Tensor], doc_ids: Tensor) -> Tensor:
        """(B, L) bool: tokens the loss scores (``block_targets`` with this objective's settings)."""
        return block_targets(batch, doc_ids, keep_first_token=self.keep_first_token, shift_logits=self.shift_logits,
                             sft=self.sft)

    def sample_times(self, seg: Tensor, generator: torch.Generator | None = None,
                     answer_rows: Tensor | None = None) -> Tensor:
        """(B, L) per-token t in [t_min, t_max]: one draw per block segment or per row; rows flagged in
        ``answer_rows`` (B,) bool draw from [answer_t_min, t_max] instead (when it is set)."""
        b, n = seg.shape
        if self.t_granularity == "sequence":
            u = sample_unit(b, sampling=self.t_sampling, device=seg.device, generator=generator)
            u = u[:, None].expand(b, n)
        else:
            s = int(seg.max().item()) + 1  # segments per row (fewer in rows with fewer blocks)
            u = sample_unit(b * s, sampling=self.t_sampling, device=seg.device, generator=generator)
            u = u.view(b, s).gather(1, seg)
        t = self.t_min + (self.t_max - self.t_min) * u
        if self.answer_t_min is None or answer_rows is None:
            return t
        answer_t = self.answer_t_min + (self.t_max - self.answer_t_min) * u
        return torch.where(answer_rows[:, None], answer_t, t)

    def token_losses(
        self, model: Denoiser, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Per token (B, L): t, weighted loss w(t)·nll on masked tokens (0 elsewhere), masked, eligible, segment id."""
        x0 = batch["input_ids"]
        positions, block_ids, doc_ids = block_layout(batch, block_size=self.block_size,
                                                     block_sizes=self.block_sizes, generator=generator)
        eligible = self.targets(batch, doc_ids)
        seg = segment_ids(block_ids, doc_ids)
        answer_rows = batch["prompt_mask"].bool().any(-1) if self.sft else None
        t = self.sample_times(seg, generator, answer_rows)
        mask_prob = 1.0 - self.schedule.alpha(t)
        xt, masked = mask_tokens(x0, mask_prob, model.mask_id, eligible=eligible, generator=generator)
        if self.resample and (self.t_min > 1e-3 or self.t_max < 1.0):
            masked = self.resample_masks(masked, mask_prob, eligible, seg, generator)
            xt = torch.where(masked, torch.full_like(x0, model.mask_id), x0)
        nll = block_denoise_nll(model, xt, x0, masked, positions=positions, block_ids=block_ids, doc_ids=doc_ids,
                                attention_mask=batch.get("attention_mask"), t=t, shift_logits=self.shift_logits)
        weight = nelbo_weight(self.schedule, t).float()
        return t, torch.where(masked, weight * nll, torch.zeros_like(nll)), masked, eligible, seg

    @torch.no_grad()
    def segment_losses(
        self, model: Denoiser, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """(t, loss) per scored segment (N,): a block's t and its summed weighted loss per eligible token.

        The input of BD3-LM's clipped-interval search (``dlm.diffusion.clip_search``).
        """
        t, loss, _, eligible, seg = self.token_losses(model, batch, generator)
        b, n = seg.shape
        flat = (seg + torch.arange(b, device=seg.device)[:, None] * n).reshape(-1)  # unique per (row, segment)
        size = b * n
        sums = torch.zeros(size, device=seg.device).index_add_(0, flat, loss.reshape(-1).float())
        counts = torch.zeros(size, device=seg.device).index_add_(0, flat, eligible.reshape(-1).float())
        # t is constant within a segment, so any writer's value is the segment's t
        t_seg = torch.zeros(size, device=seg.device).scatter_(0, flat, t.reshape(-1).float())
        keep = counts > 0
        return t_seg[keep], sums[keep] / counts[keep]

    def __call__(
        self, model: Denoiser, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> LossOutput:
        _, token_loss, masked, eligible, _ = self.token_losses(model, batch, generator)
        per_seq = token_loss.sum(-1)
        num_tokens = eligible.sum()
        if self.reduction == "row":
            has_targets = eligible.any(-1)  # a row with no target token has no loss to average
            per_row = per_seq / eligible.sum(-1).clamp(min=1)
            loss = per_row[has_targets].sum() / has_targets.sum().clamp(min=1)
        else:
            loss = per_seq.sum() / num_tokens.clamp(min=1)
        return LossOutput(
            loss=loss,
            nll_sum=per_seq.detach().sum(),
            num_tokens=num_tokens.detach(),
            metrics={"mask_rate": masked.sum().detach() / num_tokens.clamp(min=1)},
        )
