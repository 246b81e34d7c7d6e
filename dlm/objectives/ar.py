"""Autoregressive next-token loss: the baseline trained in the same framework as diffusion.

``sft`` (supervised fine-tuning, the AR counterpart of the masked objectives' ``sft``): the batch
carries ``prompt_mask`` (B, L) bool and only the tokens outside it are scored, each still read from
its whole clean prefix; a row whose ``prompt_mask`` is all False is an ordinary row.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dlm.errors import ConfigError
from dlm.io.record import Family
from dlm.nn.attention import padding_mask_to_attn_mask
from dlm.nn.next_token import next_token_nll
from dlm.objectives.masked import target_positions
from dlm.types import ArSoftmax, Denoiser, LossOutput


class AutoregressiveLoss:
    """Objective(model, batch) -> LossOutput: mean next-token NLL over real target tokens.

    Targets are positions 1..L-1 (position 0 is given), the same set the diffusion loss scores
    with ``keep_first_token=true``, so the two perplexities are comparable token for token; with
    ``sft``, minus ``batch["prompt_mask"]`` (the same tokens the diffusion ``sft`` losses score).
    """

    family = Family.AR  # what it trains: read by the runner, written to the exported model.json
    shift_logits = False
    ar_softmax: ArSoftmax = "without_mask"  # how it normalises: exported as model.json ar_softmax

    def __init__(self, *, sft: bool = False) -> None:
        self.sft = sft

    def __call__(
        self, model: Denoiser, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> LossOutput:
        if model.attention != "causal":
            raise ConfigError(
                f"the autoregressive objective needs model.attention=causal, got {model.attention!r}"
            )
        x0 = batch["input_ids"]
        attention_mask = batch.get("attention_mask")
        attn_mask = None if attention_mask is None else padding_mask_to_attn_mask(attention_mask)
        logits = model(x0, None, attn_mask=attn_mask)
        nll = next_token_nll(logits, x0, model.mask_id, self.ar_softmax)
        targets = target_positions(batch, keep_first_token=True, sft=self.sft)[:, 1:]  # (B, L - 1): token i + 1
        nll = nll * targets
        num_tokens = targets.sum()
        nll_sum = nll.sum()
        return LossOutput(loss=nll_sum / num_tokens.clamp(min=1), nll_sum=nll_sum.detach(), num_tokens=num_tokens)
