"""MaskedDiffusionLoss(sft=...): prompt tokens (``batch["prompt_mask"]``) are clean context, never masked nor
scored, and the loss is the NELBO of the answer tokens alone; sft=False ignores prompt_mask bit for bit."""

from __future__ import annotations

import math

import pytest
import torch
from mocks import MockDenoiser, RandomDenoiser
from torch import Tensor, nn

from dlm.diffusion.schedule import LogLinearSchedule
from dlm.errors import ConfigError
from dlm.objectives.masked import MaskedDiffusionLoss

V, MASK = 7, 6


class FixedTable(MockDenoiser):
    """Logits that depend on the position only (L, V), whatever the input; records every input it sees."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.vocab_size, self.mask_id = V, MASK
        self.table = nn.Parameter(table.clone())
        self.seen: list[Tensor] = []

    def forward(self, xt: Tensor, t: Tensor | None = None, **_) -> Tensor:
        self.seen.append(xt.clone())
        return self.table[: xt.shape[1]].expand(xt.shape[0], -1, -1)


def _batch(prompt_rows: list[bool], length: int = 10, answer: slice = slice(6, 9)) -> dict[str, Tensor]:
    x0 = torch.randint(0, MASK, (len(prompt_rows), length), generator=torch.Generator().manual_seed(0))
    prompt = torch.zeros_like(x0, dtype=torch.bool)
    for i, is_sft in enumerate(prompt_rows):
        if is_sft:
            prompt[i] = True
            prompt[i, answer] = False
    return {"input_ids": x0, "prompt_mask": prompt}


@pytest.mark.parametrize("form", ["nelbo", "t_dce", "lambda_dce", "k_dce"])
def test_sft_false_ignores_prompt_mask_bit_for_bit(form):
    batch = _batch([True, False, True, True])
    plain = {"input_ids": batch["input_ids"]}
    model = RandomDenoiser(10, V, MASK)
    loss = MaskedDiffusionLoss(schedule=LogLinearSchedule(), form=form, keep_first_token=True)
    a = loss(model, batch, generator=torch.Generator().manual_seed(3))
    b = loss(model, plain, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.num_tokens, b.num_tokens)


@pytest.mark.parametrize("form", ["nelbo", "t_dce", "lambda_dce", "k_dce"])
def test_sft_never_masks_nor_counts_prompt_tokens(form):
    batch = _batch([True, False, True, True])
    model = FixedTable(torch.randn(10, V))
    loss = MaskedDiffusionLoss(schedule=LogLinearSchedule(), form=form, keep_first_token=True, sft=True)
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        out = loss(model, batch, generator=gen)
    masked = torch.stack(model.seen) == MASK  # (draws, B, L)
    assert not (masked & batch["prompt_mask"]).any()  # prompt tokens stay clean in every draw
    assert masked[:, 1, 1:].any() and masked[:, 0, 6:9].any()  # the plain row and the answers are masked
    assert not masked[:, :, 0].any()  # keep_first_token still holds
    # scored: the answer tokens of the three SFT rows and positions 1.. of the plain row
    assert int(out.num_tokens) == 3 * 3 + 9


def test_sft_loss_is_the_answer_tokens_nll_alone():
    """t -> 1 masks every eligible token and the NELBO weight 1/t -> 1: the loss is the mean NLL of the answer
    tokens under the table, whatever the prompt tokens are."""
    batch = _batch([True, True], answer=slice(6, 9))
    table = torch.randn(10, V)
    table[:, MASK] = -1e9  # a SUBS denoiser never predicts the mask
    loss = MaskedDiffusionLoss(schedule=LogLinearSchedule(), form="nelbo", t_min=1 - 1e-7, keep_first_token=True,
                               sft=True)
    out = loss(FixedTable(table), batch, generator=torch.Generator().manual_seed(0))
    log_p = table[:, :MASK].log_softmax(-1)
    x0 = batch["input_ids"]
    expected = -sum(float(log_p[i, x0[b, i]]) for b in range(2) for i in range(6, 9)) / 6
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)
    changed = {**batch, "input_ids": torch.where(batch["prompt_mask"], (x0 + 1) % MASK, x0)}
    again = loss(FixedTable(table), changed, generator=torch.Generator().manual_seed(0))
    assert float(again.loss.detach()) == pytest.approx(expected, rel=1e-5)  # prompt tokens are never scored
    assert math.isfinite(float(out.loss.detach()))


def test_sft_without_prompt_mask_is_refused_naming_the_key():
    loss = MaskedDiffusionLoss(schedule=LogLinearSchedule(), sft=True)
    with pytest.raises(ConfigError, match=r"objective\.sft=true needs batch\['prompt_mask'\]"):
        loss(RandomDenoiser(8, V, MASK), {"input_ids": torch.zeros(2, 8, dtype=torch.long)})
