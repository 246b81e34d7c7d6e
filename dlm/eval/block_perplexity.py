"""Perplexity bound of a block diffusion model: the block NELBO, estimated exactly in "number of masks" form.

    -log p(x) <= sum_b NELBO_b,
    NELBO_b = sum_{k=1}^{n_b} (1/k) E_{|M|=k, M in b} [ sum_{i in M} -log p(x^i | x_{b \\ M}, x^{<b}) ]

(BD3-LM Eq. 6 per block, in RADD Thm 2's k form, as ``dlm.eval.perplexity``). Every block draws its
own k_b ~ U{1..n_b} (stratified over the samples) and masks exactly k_b of its n_b target tokens;
the vectorised [x_t ; x_0] pass scores all blocks at once because a noisy block sees only itself
and clean earlier blocks. The estimate n_b / k_b * sum_masked is unbiased for the full integral;
with block size 1 it has no variance and equals the exact left-to-right NLL. Time-conditioned
models use the t form (t stratified over [t_min, 1) per block). The scored tokens are the block
objective's (``dlm.objectives.block.block_targets``), so training loss and bound agree token for token,
unless ``targets`` names them: the other tokens are then held clean, a conditional bound (the lm-eval
adapter's, ``dlm.eval.block_conditional``, which reuses ``block_nelbo_draws`` and ``block_draw_nll``).
Shapes: input_ids (B, L); per-sequence results (B,).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from dlm.diffusion.forward import mask_tokens
from dlm.diffusion.schedule import LogLinearSchedule, nelbo_weight
from dlm.eval.perplexity import PerSequence
from dlm.eval.strata import Method, stratified_uniforms
from dlm.nn.block_mask import segment_ids
from dlm.objectives.block import block_denoise_nll, block_layout, block_targets
from dlm.types import ArSoftmax, Denoiser, NoiseSchedule


def mask_exactly_k_per_segment(x0: Tensor, seg: Tensor, k: Tensor, mask_id: int, *, eligible: Tensor,
                               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Mask exactly k[b, s] uniformly chosen eligible tokens of segment s of row b (segments contiguous).

    seg: (B, L) segment index from 0; k: (B, S) long, at most the segment's eligible count.
    Returns (xt, masked) (B, L).
    """
    b, n = x0.shape
    scores = torch.rand(x0.shape, device=x0.device, generator=generator, dtype=torch.float64)
    scores = scores.masked_fill(~eligible, 2.0)  # ineligible tokens sort last in their segment
    rank_in_row = (seg.double() * 4.0 + scores).argsort(-1).argsort(-1)
    idx = torch.arange(n, device=x0.device).expand(b, n)
    seg_start = torch.full_like(k, n).scatter_reduce(1, seg, idx, reduce="amin")
    masked = (rank_in_row - seg_start.gather(1, seg) < k.gather(1, seg)) & eligible
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


class BlockDraw(NamedTuple):
    """One stratified corruption of rows x0 (B, L): xt, masked (B, L); t (B, L) per-token time (its block's) or
    None for a time-free model; weight (B, L) the NELBO weight of each token's block (n_b / k_b, or w(t))."""

    xt: Tensor
    masked: Tensor
    t: Tensor | None
    weight: Tensor


def block_nelbo_draws(x0: Tensor, seg: Tensor, eligible: Tensor, *, mask_id: int, time_conditioned: bool,
                      num_samples: int, method: Method, schedule: NoiseSchedule, t_min: float,
                      generator: torch.Generator | None = None) -> Iterator[BlockDraw]:
    """The ``num_samples`` draws of the block NELBO (module docstring) over rows x0 (B, L) with block segments
    ``seg`` (B, L) (``segment_ids``) and scored tokens ``eligible`` (B, L) bool, lazily: per sample, one
    stratified u per (row, segment) then the masks, all from ``generator``. A segment without eligible tokens
    masks nothing and weighs 0 (a clean context block)."""
    b, num_seg = x0.shape[0], int(seg.max().item()) + 1
    n_seg = torch.zeros(b, num_seg, dtype=torch.long, device=x0.device).scatter_add(1, seg, eligible.long())
    for s in range(num_samples):
        u = stratified_uniforms(b * num_seg, s, num_samples, method, x0.device, generator).view(b, num_seg)
        if time_conditioned:
            t = (t_min + (1.0 - t_min) * u).float().gather(1, seg)
            xt, masked = mask_tokens(x0, 1.0 - schedule.alpha(t), mask_id, eligible=eligible, generator=generator)
            yield BlockDraw(xt, masked, t, nelbo_weight(schedule, t))
        else:
            k = torch.minimum((u * n_seg.double()).floor().long() + 1, n_seg.clamp(min=1))
            xt, masked = mask_exactly_k_per_segment(x0, seg, k, mask_id, eligible=eligible, generator=generator)
            yield BlockDraw(xt, masked, None, (n_seg.float() / k.float()).gather(1, seg))


def block_draw_nll(model: Denoiser, draw: BlockDraw, x0: Tensor, *, positions: Tensor, block_ids: Tensor,
                   doc_ids: Tensor, attention_mask: Tensor | None = None, shift_logits: bool = False,
                   head_at: Tensor | None = None) -> Tensor:
    """sum_i weight_i * -log p(x0^i | x_t^b, x^{<b}) over the masked tokens of one draw: (B,) float32, the
    draw's estimate of the rows' block NELBO (one [x_t ; x_0] pass, ``block_denoise_nll``).

    ``head_at`` (B, L) bool, a superset of ``draw.masked``: where the output head runs (None: the masked
    tokens). The most per row sets the head's matmul shape, so a fixed set (every token) keeps a row's bits
    independent of the mask counts of the rows batched with it."""
    nll = block_denoise_nll(model, draw.xt, x0, draw.masked if head_at is None else head_at, positions=positions,
                            block_ids=block_ids, doc_ids=doc_ids, attention_mask=attention_mask, t=draw.t,
                            shift_logits=shift_logits)
    return torch.where(draw.masked, draw.weight * nll, torch.zeros_like(nll)).sum(-1)


@torch.no_grad()
def block_nelbo_per_sequence(
    model: Denoiser,
    batch: dict[str, Tensor],
    *,
    block_size: int,
    num_samples: int = 32,
    method: Method = "mc",
    schedule: NoiseSchedule | None = None,
    t_min: float = 1e-3,
    keep_first_token: bool = False,
    shift_logits: bool = False,
    targets: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sequence block NELBO estimates (B,), their variance of the mean (B,), target counts (B,).

    ``targets`` (B, L) bool: the scored tokens, every other token held clean (a conditional bound: a context
    never masked nor scored); None: the block objective's (``block_targets`` with ``keep_first_token``,
    ``shift_logits``). With ``shift_logits`` a document's first token must not be a target."""
    schedule = schedule or LogLinearSchedule()
    x0 = batch["input_ids"]
    positions, block_ids, doc_ids = block_layout(batch, block_size=block_size)
    eligible = block_targets(batch, doc_ids, keep_first_token=keep_first_token, shift_logits=shift_logits) \
        if targets is None else targets
    seg = segment_ids(block_ids, doc_ids)
    draws = [block_draw_nll(model, draw, x0, positions=positions, block_ids=block_ids, doc_ids=doc_ids,
                            attention_mask=batch.get("attention_mask"), shift_logits=shift_logits)
             for draw in block_nelbo_draws(x0, seg, eligible, mask_id=model.mask_id,
                                           time_conditioned=model.time_conditioned, num_samples=num_samples,
                                           method=method, schedule=schedule, t_min=t_min, generator=generator)]
    d = torch.stack(draws).double()  # (S, B)
    var_of_mean = d.var(0, unbiased=True) / num_samples if num_samples > 1 else torch.zeros_like(d[0])
    return d.mean(0), var_of_mean, eligible.sum(-1)


class BlockNELBO:
    """Block-diffusion models: the per-block NELBO bound (module docstring) with the model's own diffusion
    block ``block_size`` and logit reading ``shift_logits``; ``num_samples`` stratified draws per block."""

    stochastic = True

    def __init__(self, *, block_size: int, shift_logits: bool = False, num_samples: int = 32, method: Method = "mc",
                 schedule: NoiseSchedule | None = None, t_min: float = 1e-3, keep_first_token: bool = True) -> None:
        self.block_size, self.shift_logits = block_size, shift_logits
        self.num_samples, self.method, self.schedule = num_samples, method, schedule
        self.t_min, self.keep_first_token = t_min, keep_first_token
        self.desc = f"eval ppl (block {block_size})"

    @classmethod
    def for_model(cls, model: Denoiser, *, ar_softmax: ArSoftmax | None = None, **settings) -> BlockNELBO:
        """Scores ``model`` as trained: its declared ``block_size`` and ``shift_logits`` (``ar_softmax``
        describes AR models only)."""
        return cls(block_size=model.block_size, shift_logits=model.shift_logits, **settings)

    def per_sequence(self, model: Denoiser, batch: dict[str, Tensor],
                     generator: torch.Generator | None = None) -> PerSequence:
        return block_nelbo_per_sequence(
            model, batch, block_size=self.block_size, num_samples=self.num_samples, method=self.method,
            schedule=self.schedule, t_min=self.t_min, keep_first_token=self.keep_first_token,
            shift_logits=self.shift_logits, generator=generator,
        )

    def summary(self) -> dict:
        return {"method": "nelbo_bound", "t_samples": self.num_samples, "estimator": self.method,
                "diffusion_block_size": self.block_size}
