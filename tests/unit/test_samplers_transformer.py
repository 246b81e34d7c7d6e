"""Samplers on the real backbone: computing logits only where tokens are drawn changes nothing."""

import pytest
import torch
from mocks import MockDenoiser

from dlm.models.transformer import Transformer
from dlm.samplers.ancestral import AncestralSampler
from dlm.samplers.first_hitting import FirstHittingSampler
from dlm.types import DENOISER_ATTRIBUTES


def tiny(**kw):
    torch.manual_seed(0)
    return Transformer(vocab_size=11, mask_id=10, dim=32, n_layers=2, n_heads=2, max_seq_len=16, **kw).eval()


class FullLogitsOnly(MockDenoiser):
    """The same model computing every position's logits (the mock contract gathers ``logits_at`` after)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        for name in DENOISER_ATTRIBUTES:
            setattr(self, name, getattr(inner, name))

    def forward(self, x, t=None):
        return self.inner(x, t)


def test_logits_at_equals_gathered_full_logits():
    model = tiny()
    x = torch.randint(0, 11, (3, 16), generator=torch.Generator().manual_seed(0))
    at = torch.tensor([[0, 5], [15, 15], [3, 1]])
    full = model(x)
    torch.testing.assert_close(model(x, logits_at=at), full.gather(1, at[..., None].expand(-1, -1, 11)))


@pytest.mark.parametrize("make", [lambda: FirstHittingSampler(), lambda: FirstHittingSampler(tokens_per_step=3),
                                  lambda: AncestralSampler(num_steps=20, row_cache="row"),
                                  lambda: AncestralSampler(num_steps=20, row_cache="none")],
                         ids=["fhs", "fhs_parallel", "ancestral_row", "ancestral_none"])
@pytest.mark.parametrize("time_conditioned", [False, True])
def test_fast_path_gives_identical_samples(make, time_conditioned):
    model = tiny(time_conditioned=time_conditioned)
    kw = dict(batch_size=4, length=16, prompt=torch.tensor([1, 2]))
    a = make()(model, **kw, generator=torch.Generator().manual_seed(0))
    b = make()(FullLogitsOnly(model), **kw, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe
