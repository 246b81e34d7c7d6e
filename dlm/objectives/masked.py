"""Masked (absorbing) diffusion losses: MDLM's continuous-time NELBO and RADD's loss forms.

All forms are per-sequence sums normalised by the number of target tokens. With a normalised
SUBS denoiser p_theta over the real vocabulary (notation of ``dlm.diffusion.schedule``):

* ``nelbo`` (MDLM Eq. 10, = RADD t-DSE per sample): w(t) * sum_masked -log p_theta(x0^i | xt),
  w(t) = -alpha'(t) / (1 - alpha(t)); t in [t_min, 1).
* ``t_dce`` (RADD Eq. 3.5): nelbo - w(t) * log(a) * #masked, a = alpha / (1 - alpha); the extra
  term is parameter-free and integrates to ~0 over t.
* ``lambda_dce`` (RADD Eq. 3.7): the mask ratio lambda ~ U(0, 1) is the time variable, weight 1/lambda.
* ``k_dce`` (RADD Eq. 3.8, any-order AR): exactly k ~ U{1..n} tokens masked, weight n / k.

All four have the same expectation (RADD Thm 2) for a time-free denoiser. A time-conditioned
denoiser gets t = alpha^{-1}(1 - lambda) for the lambda and k forms.

``sft`` (LLaDA's supervised fine-tuning, Nie et al. 2025 Sec. 2.3): the batch carries ``prompt_mask``
(B, L) bool; prompt tokens are clean context, never masked and never scored, so every form above
becomes the conditional NELBO of -log p_theta(answer | prompt). A row whose ``prompt_mask`` is all
False is an ordinary (unconditional) row, so one batch may mix both.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from dlm.diffusion.forward import TimeSampling, mask_exactly_k, mask_tokens, sample_k, sample_t, sample_unit
from dlm.diffusion.posterior import masked_token_nll
from dlm.diffusion.schedule import nelbo_weight
from dlm.errors import ConfigError
from dlm.io.record import Family
from dlm.nn.attention import padding_mask_to_attn_mask
from dlm.types import Denoiser, LossOutput, NoiseSchedule

LossForm = Literal["nelbo", "t_dce", "lambda_dce", "k_dce"]


def target_positions(batch: dict[str, Tensor], keep_first_token: bool, sft: bool = False) -> Tensor:
    """(B, L) bool: tokens scored by the loss (real tokens; the first one optionally kept clean;
    with ``sft``, none of ``batch["prompt_mask"]``).

    ``keep_first_token`` conditions on position 0 (a BOS, or the first token of a packed chunk),
    which makes the diffusion NELBO and the AR NLL score exactly the same tokens.
    """
    x0 = batch["input_ids"]
    eligible = batch.get("attention_mask")
    eligible = torch.ones_like(x0, dtype=torch.bool) if eligible is None else eligible.bool()
    if keep_first_token:
        eligible = eligible.clone()
        eligible[:, 0] = False
    if sft:
        if "prompt_mask" not in batch:
            raise ConfigError("objective.sft=true needs batch['prompt_mask'] (B, L) bool (e.g. data=needle with "
                              "data.answer_only_fraction > 0); set objective.sft=false otherwise")
        eligible = eligible & ~batch["prompt_mask"].bool()
    return eligible


def t_dce_correction(schedule: NoiseSchedule, t: Tensor, num_masked: Tensor) -> Tensor:
    """t-DCE minus t-DSE per sequence: -w(t) * log(alpha / (1 - alpha)) * #masked; (B,)."""
    alpha = schedule.alpha(t)
    log_a = torch.log(alpha) - torch.log1p(-alpha)
    return -nelbo_weight(schedule, t) * log_a * num_masked


class MaskedDiffusionLoss:
    """Objective(model, batch) -> LossOutput for absorbing diffusion (MDLM / RADD).

    Args:
        schedule: noise schedule (only the t-based forms and time-conditioned models use it).
        form: which estimator of the NELBO; see the module docstring.
        t_sampling: ``antithetic`` (stratified over the batch) or ``uniform``.
        t_min: lower clip of t for the t-based forms (bounds the 1/t weight's variance).
        keep_first_token: never mask position 0 and leave it out of the loss.
        sft: the batch carries ``prompt_mask`` (B, L) bool; prompt tokens are never masked nor scored
            (the conditional NELBO; module docstring). False: ``prompt_mask`` is ignored.
    """

    family = Family.MASKED  # what it trains: read by the runner, written to the exported model.json
    shift_logits = False

    def __init__(
        self,
        *,
        schedule: NoiseSchedule,
        form: LossForm = "nelbo",
        t_sampling: TimeSampling = "antithetic",
        t_min: float = 1e-3,
        keep_first_token: bool = False,
        sft: bool = False,
    ) -> None:
        if form not in ("nelbo", "t_dce", "lambda_dce", "k_dce"):
            raise ValueError(f"objective.form={form!r}; valid: nelbo, t_dce, lambda_dce, k_dce")
        if not 0.0 <= t_min < 1.0:
            raise ValueError(f"objective.t_min={t_min} must lie in [0, 1)")
        self.schedule = schedule
        self.form = form
        self.t_sampling = t_sampling
        self.t_min = t_min
        self.keep_first_token = keep_first_token
        self.sft = sft

    def corrupt(
        self, x0: Tensor, eligible: Tensor, mask_id: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Draw (xt, masked, t, weight) for this form; weight (B,) multiplies sum_masked nll."""
        b, device = x0.shape[0], x0.device
        n = eligible.sum(-1)
        if self.form in ("nelbo", "t_dce"):
            t = sample_t(b, t_min=self.t_min, sampling=self.t_sampling, device=device, generator=generator)
            xt, masked = mask_tokens(x0, 1.0 - self.schedule.alpha(t), mask_id, eligible=eligible,
                                     generator=generator)
            return xt, masked, t, nelbo_weight(self.schedule, t)
        if self.form == "lambda_dce":
            # (u + eps) keeps lambda > 0; the 1/lambda weight is then finite for every draw
            lam = sample_unit(b, sampling=self.t_sampling, device=device, generator=generator).clamp(min=1e-6)
            xt, masked = mask_tokens(x0, lam, mask_id, eligible=eligible, generator=generator)
        else:
            k = sample_k(n, sampling=self.t_sampling, generator=generator)
            xt, masked = mask_exactly_k(x0, k, mask_id, eligible=eligible, generator=generator)
            lam = k.float() / n.clamp(min=1).float()
        t = self.schedule.t_of_alpha(1.0 - lam)
        return xt, masked, t, 1.0 / lam

    def __call__(
        self, model: Denoiser, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> LossOutput:
        x0 = batch["input_ids"]
        eligible = target_positions(batch, self.keep_first_token, self.sft)
        xt, masked, t, weight = self.corrupt(x0, eligible, model.mask_id, generator)
        pad = batch.get("attention_mask")
        attn_mask = None if pad is None else padding_mask_to_attn_mask(pad)
        logits = model(xt, t if model.time_conditioned else None, attn_mask=attn_mask)
        nll = masked_token_nll(logits, x0, masked, model.mask_id)
        per_seq = weight * nll.sum(-1)
        if self.form == "t_dce":
            per_seq = per_seq + t_dce_correction(self.schedule, t, masked.sum(-1).float())
        num_tokens = eligible.sum()
        loss = per_seq.sum() / num_tokens.clamp(min=1)
        return LossOutput(
            loss=loss,
            nll_sum=per_seq.detach().sum(),
            num_tokens=num_tokens.detach(),
            metrics={"mask_rate": masked.sum().detach() / eligible.sum().clamp(min=1)},
        )
