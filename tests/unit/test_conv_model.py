"""The dilated residual CNN denoiser (DRAKES' DNA backbone): the Denoiser contract, soft one-hot input and its
gradient, locality (receptive field), padding, time conditioning, refusals, training with the masked
objective and the model-directory round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from hydra_helpers import compose_config

from dlm.data.tokenizers.bio import DNATokenizer
from dlm.diffusion.schedule import LogLinearSchedule
from dlm.errors import ConfigError
from dlm.io.model_dir import load_model_dir, save_model_dir
from dlm.io.record import Family
from dlm.models.conv import ConvDenoiser
from dlm.nn.attention import padding_mask_to_attn_mask
from dlm.objectives.masked import MaskedDiffusionLoss
from dlm.types import DENOISER_ATTRIBUTES, Denoiser

V, MASK = 8, 7


def conv(**kw) -> ConvDenoiser:
    torch.manual_seed(0)
    args = dict(vocab_size=V, mask_id=MASK, dim=16, kernel_size=3, dilations=[1, 2], num_stacks=2) | kw
    return ConvDenoiser(**args).eval()


def tokens(b: int = 3, n: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))


def test_contract_shapes_and_logits_at():
    model = conv()
    assert isinstance(model, Denoiser) and all(hasattr(model, a) for a in DENOISER_ATTRIBUTES)
    assert (model.attention, model.block_size, model.shift_logits, model.time_conditioned) == \
        ("bidirectional", None, False, False)
    x = tokens()
    full = model(x)
    assert full.shape == (3, 20, V)
    at = torch.tensor([[0, 5], [19, 19], [3, 1]])
    torch.testing.assert_close(model(x, logits_at=at), full.gather(1, at[..., None].expand(-1, -1, V)))
    assert model(x, return_hidden=True).shape == (3, 20, 16)
    assert model(tokens(n=7)).shape == (3, 7, V), "any length (no position table)"


def test_soft_one_hot_input_equals_tokens_and_has_a_gradient():
    model, x = conv(), tokens()
    onehot = F.one_hot(x, V).float()
    torch.testing.assert_close(model(onehot), model(x))
    probs = torch.softmax(torch.randn(3, 20, V, generator=torch.Generator().manual_seed(1)), -1).requires_grad_(True)
    (g,) = torch.autograd.grad(model(probs)[..., 2].sum(), probs)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    with pytest.raises(ConfigError, match="expected model.vocab_size=8"):
        model(torch.rand(1, 5, V + 1))


def test_outputs_read_only_the_receptive_field():
    """Changing token 0 changes outputs within (receptive_field - 1) / 2 positions and none beyond."""
    model = conv()
    half = (model.receptive_field() - 1) // 2  # kernel 3: 1 + 2 * (1 + 1 + 1 + 2 + 2) = 15 -> 7
    assert half == 7
    x = tokens(1, 24)
    y = x.clone()
    y[0, 0] = (x[0, 0] + 1) % V
    diff = (model(x) - model(y)).abs().amax(-1)[0]
    assert (diff[: half + 1] > 0).all() and (diff[half + 1:] == 0).all(), diff


def test_padding_is_never_read_by_real_positions():
    model = conv()
    x = tokens(2, 12)
    pad = torch.ones(2, 12, dtype=torch.long)
    pad[:, 9:] = 0
    y = x.clone()
    y[:, 9:] = (x[:, 9:] + 3) % V  # other tokens in the padding
    mask = padding_mask_to_attn_mask(pad)
    torch.testing.assert_close(model(x, attn_mask=mask)[:, :9], model(y, attn_mask=mask)[:, :9])
    assert not torch.allclose(model(x)[:, :9], model(y)[:, :9]), "control: without the mask the padding is read"


def test_time_conditioning_starts_equal_to_the_time_free_model():
    free, timed = conv(), conv(time_conditioned=True)
    timed.load_state_dict(free.state_dict(), strict=False)  # shared weights; the adaLN maps are zero
    x = tokens()
    torch.testing.assert_close(timed(x, torch.full((3,), 0.3)), free(x))
    with pytest.raises(ConfigError, match="needs the diffusion time"):
        timed(x)
    for p in timed.final_modulation.parameters():
        torch.nn.init.normal_(p, std=0.5)
    assert not torch.allclose(timed(x, torch.full((3,), 0.1)), timed(x, torch.full((3,), 0.9)))
    at = torch.tensor([[1, 4]] * 3)
    per_token_t = torch.rand(3, 20, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(timed(x, per_token_t, logits_at=at),
                               timed(x, per_token_t).gather(1, at[..., None].expand(-1, -1, V)))


def test_what_a_convolution_cannot_honour_is_refused():
    model, x = conv(max_seq_len=16), tokens(1, 12)
    with pytest.raises(ConfigError, match="no positions and no key/value cache"):
        model(x, positions=torch.arange(12))
    with pytest.raises(ConfigError, match="no positions and no key/value cache"):
        model(x, cache=object())
    with pytest.raises(ConfigError, match=r"only a padding attn_mask \(B, 1, 1, L=12\)"):
        model(x, attn_mask=torch.ones(12, 12, dtype=torch.bool).tril()[None, None])
    with pytest.raises(ConfigError, match="sequence length 20 exceeds model.max_seq_len=16"):
        model(tokens(1, 20))
    with pytest.raises(ConfigError, match="model.kernel_size=4 must be odd"):
        conv(kernel_size=4)
    with pytest.raises(ConfigError, match="mask_id=9"):
        conv(mask_id=9)


def test_conv_dna_config_is_drakes_architecture():
    cfg = compose_config("train", ["model=conv_dna", "tokenizer=dna"])
    tok = instantiate(cfg.tokenizer)
    model = instantiate(cfg.model, vocab_size=tok.vocab_size, mask_id=tok.mask_id)
    dilations = [layer.conv.dilation[0] for layer in model.layers]
    assert dilations == [1] * 8 + [4] * 4 + [16] * 4 + [64] * 4, "8 x d1, 4 x d4, 4 x d16, 4 x d64 (DRAKES)"
    assert {layer.conv.kernel_size[0] for layer in model.layers} == {9} and model.dim == 128
    assert not model.time_conditioned and model.vocab_size == 8
    assert model(torch.zeros(1, 200, dtype=torch.long)).shape == (1, 200, 8)


def test_trains_with_the_masked_objective_and_round_trips_a_model_directory(tmp_path):
    model = conv(dim=32).train()
    loss_fn = MaskedDiffusionLoss(schedule=LogLinearSchedule(), keep_first_token=False)
    # a learnable law: every row repeats one letter
    x0 = torch.arange(4).repeat_interleave(8)[:, None].expand(32, 24).contiguous()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(40):
        out = loss_fn(model, {"input_ids": x0}, g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.loss.item()
    assert out.loss.item() < 0.5 * first, (first, out.loss.item())
    spec = {"_target_": "dlm.models.conv.ConvDenoiser", "vocab_size": V, "mask_id": MASK, "dim": 32, "kernel_size": 3,
            "dilations": [1, 2], "num_stacks": 2}
    path = save_model_dir(tmp_path / "conv", model=model, model_spec=spec, tokenizer=DNATokenizer(),
                          family=Family.MASKED, seq_len=24,
                          schedule_spec={"_target_": "dlm.diffusion.schedule.LogLinearSchedule"})
    loaded = load_model_dir(path)
    assert isinstance(loaded.model, ConvDenoiser) and not loaded.model.training
    x = tokens(2, 24)
    torch.testing.assert_close(loaded.model(x), model.eval()(x))


def test_dlm_train_model_conv_exports_a_directory_that_samples(tmp_path):
    """dlm-train model=conv_tiny (the conv_dna architecture, small) on DNA windows, then load + sample."""
    from dlm.samplers.first_hitting import FirstHittingSampler
    from dlm.train.run import run

    cfg = compose_config("train", ["model=conv_tiny", "tokenizer=dna", "data=dna_genome", "data.seq_len=32",
                                   "data.max_train_tokens=4000", "data.max_eval_tokens=1000", "objective=mdlm",
                                   "objective.keep_first_token=false", "trainer.max_steps=3",
                                   "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
                                   "trainer.enable_progress_bar=false", "batch_size=4",
                                   f"run_dir={tmp_path}"])
    summary = run(cfg)
    loaded = load_model_dir(summary["model_dir"])
    assert isinstance(loaded.model, ConvDenoiser) and loaded.family is Family.MASKED
    out = FirstHittingSampler()(loaded.model, batch_size=2, length=32, generator=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (2, 32) and not (out.tokens == loaded.model.mask_id).any()


def test_both_backbones_declare_their_sharding_units():
    """trainer=fsdp shards what the model declares (dlm.types.Shardable), one unit per block."""
    from dlm.models.conv import ConvDenoiser
    from dlm.models.transformer import Transformer
    from dlm.types import Shardable

    conv = ConvDenoiser(vocab_size=8, mask_id=7, dim=16, kernel_size=3, dilations=[1, 2], num_stacks=1)
    tr = Transformer(vocab_size=8, mask_id=7, dim=16, n_layers=3, n_heads=2, max_seq_len=8)
    for model in (conv, tr):
        assert isinstance(model, Shardable)
        assert model.shard_units() == list(model.layers) and len(model.shard_units()) >= 2
