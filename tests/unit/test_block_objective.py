"""Block diffusion (BD3-LM / SDAR): the [x_t ; x_0] mask, the loss identities and the block NELBO.

Each test fails when the maths is wrong: the vectorised pass is compared with per-block passes,
the limits block_size = 1 / n with causal / bidirectional passes, the loss with oracle, uniform
and AR references, and the k-form bound with a token-by-token NLL and an exact enumeration.
"""

import itertools
import math

import pytest
import torch
from mocks import BlockOracle, Uniform
from torch import nn

from dlm.diffusion.posterior import subs_log_probs
from dlm.errors import ConfigError
from dlm.eval.block_perplexity import block_nelbo_per_sequence, mask_exactly_k_per_segment
from dlm.io.record import Family
from dlm.models.transformer import Transformer
from dlm.nn.block_mask import (
    block_diffusion_mask,
    block_diffusion_mask_mod,
    block_ids_fixed,
    block_ids_from_sizes,
    document_ids_from_positions,
    flex_available,
    flex_block_diffusion_mask,
    random_block_partition,
    segment_ids,
)
from dlm.objectives.ar import AutoregressiveLoss
from dlm.objectives.block import BlockDiffusionLoss, block_denoise_nll, block_layout

V, MASK = 12, 11


def tiny(attention="block_causal", block_size=4, seed=0, init_std=0.02):
    torch.manual_seed(seed)
    kw = {"block_size": block_size} if attention == "block_causal" else {}
    return Transformer(vocab_size=V, mask_id=MASK, dim=32, n_layers=2, n_heads=4, max_seq_len=64,
                       attention=attention, attn_backend="sdpa", init_std=init_std, **kw).eval()


def same_weights(model, attention, block_size=None):
    other = tiny(attention, block_size or 1)
    other.load_state_dict(model.state_dict())
    return other


def tokens(b=2, n=12, seed=0):
    return torch.randint(0, MASK, (b, n), generator=torch.Generator().manual_seed(seed))


def noisy(x0, p=0.5, seed=1):
    u = torch.rand(x0.shape, generator=torch.Generator().manual_seed(seed))
    return torch.where(u < p, torch.full_like(x0, MASK), x0)


def vectorised(model, xt, x0, block_ids, doc_ids=None, positions=None):
    n = x0.shape[1]
    positions = torch.arange(n).expand_as(x0) if positions is None else positions
    return model(torch.cat([xt, x0], 1), positions=torch.cat([positions, positions], 1),
                 attn_mask=block_diffusion_mask(block_ids, doc_ids))


# ---------------------------------------------------------------- mask structure
def reference_mask(blk, doc):
    n = len(blk)
    m = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    for q, k in itertools.product(range(2 * n), repeat=2):
        qc, kc, bq, bk = q >= n, k >= n, blk[q % n], blk[k % n]
        if doc[q % n] != doc[k % n]:
            continue
        m[q, k] = (qc == kc and bq == bk) or (not qc and kc and bk < bq) or (qc and kc and bk <= bq)
    return m


def test_mask_matches_the_three_part_definition_and_never_leaks():
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]])
    doc = document_ids_from_positions(positions)
    blk = block_ids_fixed(positions, 2)
    assert doc.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 1]] and blk.tolist() == [[0, 0, 1, 1, 2, 0, 0, 1, 1]]
    m = block_diffusion_mask(blk, doc)[0, 0]
    assert torch.equal(m, reference_mask(blk[0].tolist(), doc[0].tolist()))
    n = 9
    assert not m[n:, :n].any()  # x_0 never attends x_t
    for q in range(n):  # x_t never attends its own clean block, nor the other document
        for k in range(n):
            if blk[0, k] == blk[0, q] or doc[0, k] != doc[0, q]:
                assert not m[q, n + k]
    mod = block_diffusion_mask_mod(blk, doc)  # the flex predicate equals the dense mask
    idx = torch.arange(2 * n)
    assert torch.equal(mod(torch.zeros((), dtype=torch.long), None, idx[:, None], idx[None, :]), m)


@pytest.mark.gpu
@pytest.mark.skipif(not flex_available("cuda"), reason="FlexAttention block masks need CUDA")
def test_flex_attention_equals_dense_mask():
    from torch.nn.attention.flex_attention import flex_attention

    positions = torch.cat([torch.arange(96), torch.arange(160)]).expand(2, 256).cuda()
    doc, blk = document_ids_from_positions(positions), block_ids_fixed(positions, 16)
    q, k, v = (torch.randn(2, 4, 512, 32, device="cuda") for _ in range(3))
    out = flex_attention(q, k, v, block_mask=flex_block_diffusion_mask(blk, doc))
    ref = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=block_diffusion_mask(blk, doc))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- vectorised pass (research C1, C3)
@torch.no_grad()
def test_vectorised_pass_equals_per_block_passes():
    bs, n = 4, 12
    model, x0 = tiny(block_size=bs), tokens(n=n)
    xt = noisy(x0)
    got = vectorised(model, xt, x0, block_ids_fixed(n, bs).expand_as(x0))[:, :n]
    for b in range(n // bs):
        s, e = b * bs, (b + 1) * bs
        ref = model(torch.cat([x0[:, :s], xt[:, s:e]], 1))  # default block-causal mask
        torch.testing.assert_close(got[:, s:e], ref[:, s:e], atol=1e-5, rtol=0)


@torch.no_grad()
def test_packed_documents_equal_each_document_alone():
    bs = 4
    model, x0 = tiny(block_size=bs), tokens(n=16)
    xt = noisy(x0)
    positions = torch.cat([torch.arange(8), torch.arange(8)]).expand_as(x0)
    _, blk, doc = block_layout({"input_ids": x0, "positions": positions}, block_size=bs)
    packed = vectorised(model, xt, x0, blk, doc, positions)
    for s in (0, 8):
        alone = vectorised(model, xt[:, s:s + 8], x0[:, s:s + 8], block_ids_fixed(8, bs).expand(2, 8))
        torch.testing.assert_close(packed[:, s:s + 8], alone[:, :8], atol=1e-5, rtol=0)  # x_t half
        torch.testing.assert_close(packed[:, 16 + s:24 + s], alone[:, 8:], atol=1e-5, rtol=0)  # x_0 half


@torch.no_grad()
def test_block_size_one_clean_stream_is_causal_and_block_size_n_noisy_stream_is_bidirectional():
    n = 8
    x0 = tokens(n=n)
    xt = noisy(x0)
    model = tiny(block_size=1)
    clean = vectorised(model, xt, x0, block_ids_fixed(n, 1).expand_as(x0))[:, n:]
    torch.testing.assert_close(clean, same_weights(model, "causal")(x0), atol=1e-5, rtol=0)
    model = tiny(block_size=n)
    noisy_half = vectorised(model, xt, x0, block_ids_fixed(n, n).expand_as(x0))[:, :n]
    torch.testing.assert_close(noisy_half, same_weights(model, "bidirectional")(xt), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- loss identities (research C6, C7)
@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("sizes", [None, [1, 3, 5]])
def test_oracle_denoiser_gives_exactly_zero_loss(shift, sizes):
    x0 = tokens(b=4, n=16)
    positions = torch.cat([torch.arange(7), torch.arange(9)]).expand_as(x0)
    loss = BlockDiffusionLoss(block_size=4, block_sizes=sizes, shift_logits=shift)
    oracle = BlockOracle(x0, shift, vocab_size=V, mask_id=MASK)
    for seed in range(3):
        out = loss(oracle, {"input_ids": x0, "positions": positions}, torch.Generator().manual_seed(seed))
        assert out.loss.item() == 0.0 and out.metrics["mask_rate"] > 0
        assert out.num_tokens.item() == (4 * 14 if shift else 64)  # shift: document starts are not targets


def test_uniform_denoiser_costs_log_k_per_target():
    x0 = tokens(b=8, n=16) % 3
    model = Uniform(3, V, MASK)
    # t forced to ~1: everything masked, weight 1 -> exactly log K per target token
    out = BlockDiffusionLoss(t_min=1 - 1e-7, t_max=1.0)(model, {"input_ids": x0}, torch.Generator().manual_seed(0))
    assert out.metrics["mask_rate"].item() == 1.0 and out.loss.item() == pytest.approx(math.log(3), rel=1e-5)
    # linear schedule: w(t) E[#masked | t] = n for every t, so even a clipped interval is unbiased here
    loss = BlockDiffusionLoss(t_min=0.05, t_max=1.0)
    vals = torch.tensor([loss(model, {"input_ids": x0}, torch.Generator().manual_seed(s)).loss.item()
                         for s in range(200)])
    assert abs(vals.mean() - math.log(3)) < 4 * vals.std() / math.sqrt(len(vals))


def test_shift_with_block_size_one_and_t_one_is_the_ar_loss():
    x0 = tokens(b=3, n=12)
    model = tiny(block_size=1)
    causal = same_weights(model, "causal")
    block = BlockDiffusionLoss(block_size=1, shift_logits=True, t_min=1 - 1e-7)
    out = block(model, {"input_ids": x0}, torch.Generator().manual_seed(0))
    ar = AutoregressiveLoss()(causal, {"input_ids": x0})
    assert out.num_tokens.item() == ar.num_tokens.item() == 3 * 11
    assert out.loss.item() == pytest.approx(ar.loss.item(), rel=1e-5)
    out.loss.backward()  # the head is only evaluated at the targets, and gradients flow
    assert model.lm_head.weight.grad is not None


def test_sft_prompt_is_never_masked_nor_counted():
    x0 = tokens(b=4, n=16)
    prompt = torch.zeros_like(x0, dtype=torch.bool)
    prompt[:, :6] = True
    model = Uniform(V - 1, V, MASK)
    loss = BlockDiffusionLoss(sft=True, t_min=0.5, t_granularity="sequence")
    for seed in range(5):
        out = loss(model, {"input_ids": x0, "prompt_mask": prompt}, torch.Generator().manual_seed(seed))
        xt = model.calls[-1][:, :16]
        assert torch.equal(xt[prompt], x0[prompt]) and (xt[~prompt] == MASK).any()
        assert out.num_tokens.item() == 4 * 10
    hi = BlockDiffusionLoss(sft=True, t_min=1 - 1e-7)
    out = hi(model, {"input_ids": x0, "prompt_mask": prompt}, torch.Generator().manual_seed(0))
    assert out.loss.item() == pytest.approx(math.log(V - 1), rel=1e-5)  # normalised by answer tokens
    with pytest.raises(ConfigError, match="prompt_mask"):
        hi(model, {"input_ids": x0})


def test_answer_t_min_masks_every_answer_token_of_answer_rows_and_leaves_ordinary_rows_alone():
    """answer_t_min=1: rows with a prompt have every answer token masked (t = 1, weight 1) at every draw;
    rows without one keep their [t_min, t_max] draws, bit for bit those of the objective without it."""
    x0 = tokens(b=8, n=16)
    prompt = torch.zeros_like(x0, dtype=torch.bool)
    prompt[:4, :10] = True  # rows 0-3 answer positions 10-15; rows 4-7 are ordinary rows
    batch = {"input_ids": x0, "prompt_mask": prompt}
    model = Uniform(V - 1, V, MASK)
    full = BlockDiffusionLoss(sft=True, t_granularity="sequence", answer_t_min=1.0)
    plain = BlockDiffusionLoss(sft=True, t_granularity="sequence")
    partial = 0
    for seed in range(8):
        full(model, batch, torch.Generator().manual_seed(seed))
        xt = model.calls[-1][:, :16]
        assert (xt[:4, 10:] == MASK).all() and torch.equal(xt[:4, :10], x0[:4, :10])
        plain(model, batch, torch.Generator().manual_seed(seed))
        ref = model.calls[-1][:, :16]
        assert torch.equal(xt[4:], ref[4:])
        partial += int(((ref[:4, 10:] == MASK).sum(-1) < 6).sum())  # the control: plain sft leaves some visible
    assert partial > 0
    out = full(model, {"input_ids": x0[:4], "prompt_mask": prompt[:4]}, torch.Generator().manual_seed(0))
    assert out.loss.item() == pytest.approx(math.log(V - 1), rel=1e-5)  # t = 1: weight 1, every answer token
    with pytest.raises(ConfigError, match="answer_t_min=1.0 needs objective.sft=true"):
        BlockDiffusionLoss(answer_t_min=1.0)
    with pytest.raises(ConfigError, match="answer_t_min=0.2 needs"):
        BlockDiffusionLoss(sft=True, t_min=0.5, answer_t_min=0.2)


def test_row_reduction_weighs_every_row_the_same_and_token_reduction_every_target_token():
    """reduction=row is the mean over rows of each row's loss per target token; token (the default) the
    batch's loss over its target tokens. With 6-token answer rows next to 16-token ordinary rows they differ."""
    model = tiny()
    x0 = tokens(b=4, n=16)
    prompt = torch.zeros_like(x0, dtype=torch.bool)
    prompt[:2, :10] = True  # rows 0-1: 6 answer tokens; rows 2-3: ordinary rows, 16 targets each
    batch = {"input_ids": x0, "prompt_mask": prompt}
    by_row = BlockDiffusionLoss(sft=True, answer_t_min=1.0, reduction="row")
    by_token = BlockDiffusionLoss(sft=True, answer_t_min=1.0)
    _, token_loss, _, eligible, _ = by_row.token_losses(model, batch, torch.Generator().manual_seed(3))
    assert eligible.sum(-1).tolist() == [6, 6, 16, 16]
    per_row = token_loss.sum(-1) / eligible.sum(-1)
    row_out = by_row(model, batch, torch.Generator().manual_seed(3))
    token_out = by_token(model, batch, torch.Generator().manual_seed(3))
    assert row_out.loss.item() == pytest.approx(per_row.mean().item(), rel=1e-6)
    assert token_out.loss.item() == pytest.approx((token_loss.sum() / eligible.sum()).item(), rel=1e-6)
    assert abs(row_out.loss.item() - token_out.loss.item()) > 1e-3  # the two weightings are not the same number
    assert row_out.nll_sum.item() == pytest.approx(token_out.nll_sum.item()) and row_out.num_tokens == token_out.num_tokens
    with pytest.raises(ConfigError, match="objective.reduction='rows'"):
        BlockDiffusionLoss(reduction="rows")


def test_per_block_t_gives_each_block_its_own_mask_rate():
    seg = segment_ids(block_ids_fixed(64, 8).expand(256, 64), torch.zeros(256, 64, dtype=torch.long))
    g = torch.Generator().manual_seed(0)
    t_block = BlockDiffusionLoss(block_size=8).sample_times(seg, g)
    t_seq = BlockDiffusionLoss(block_size=8, t_granularity="sequence").sample_times(seg, g)
    per_block = t_block.view(256, 8, 8)
    assert (per_block == per_block[..., :1]).all() and (t_seq == t_seq[:, :1]).all()
    assert per_block[..., 0].std(-1).mean() > 0.2  # U[0, 1] across blocks: std 0.29
    # realised mask rates: between-block spread within a row is far above the binomial spread
    x0 = tokens(b=256, n=64)
    rates = {}
    for gran in ("block", "sequence"):
        model = Uniform(3, V, MASK)
        BlockDiffusionLoss(block_size=8, t_granularity=gran)(model, {"input_ids": x0}, torch.Generator().manual_seed(1))
        masked = (model.calls[-1][:, :64] == MASK).float().view(256, 8, 8).mean(-1)
        rates[gran] = masked.var(-1).mean().item()
    assert rates["block"] > 3 * rates["sequence"]


def test_clipped_interval_is_respected_and_uniform():
    seg = segment_ids(block_ids_fixed(16, 4).expand(2500, 16), torch.zeros(2500, 16, dtype=torch.long))
    for sampling in ("antithetic", "uniform"):
        loss = BlockDiffusionLoss(t_min=0.3, t_max=0.8, t_sampling=sampling)
        t = loss.sample_times(seg, torch.Generator().manual_seed(0))[:, ::4].flatten()
        assert t.min() >= 0.3 and t.max() <= 0.8
        ks = ((t.sort().values - 0.3) / 0.5 - (torch.arange(len(t)) + 0.5) / len(t)).abs().max()
        assert ks < 1.63 / math.sqrt(len(t))  # Kolmogorov-Smirnov at 1%


# ---------------------------------------------------------------- bound (research C7 a, C8)
@torch.no_grad()
def test_block_size_one_k_form_bound_is_the_exact_left_to_right_nll():
    n = 8
    x0 = tokens(b=2, n=n)
    model = tiny(block_size=1)
    exact = torch.zeros(2, dtype=torch.float64)
    for i in range(n):  # one [MASK] query per position over the clean prefix
        logits = model(torch.cat([x0[:, :i], torch.full((2, 1), MASK)], 1))[:, -1]
        exact -= subs_log_probs(logits, MASK).gather(-1, x0[:, i:i + 1]).squeeze(-1).double()
    mean, var, count = block_nelbo_per_sequence(model, {"input_ids": x0}, block_size=1, num_samples=3,
                                                generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mean, exact, atol=1e-4, rtol=0)
    assert var.max() < 1e-10 and count.tolist() == [n, n]
    # with the shift, the same bound is the AR NLL of the causal model with shared weights
    ar = -AutoregressiveLoss()(same_weights(model, "causal"), {"input_ids": x0}).nll_sum
    shifted, _, _ = block_nelbo_per_sequence(model, {"input_ids": x0}, block_size=1, num_samples=1, shift_logits=True)
    assert shifted.sum().item() == pytest.approx(-ar.item(), rel=1e-5)


@torch.no_grad()
def test_k_form_estimator_is_unbiased_against_enumeration():
    bs, n = 2, 4
    x0 = tokens(b=1, n=n) % 4
    model = tiny(block_size=bs, init_std=0.5)  # peaked, context-dependent conditionals
    batch = {"input_ids": x0}
    positions, blk, doc = block_layout(batch, block_size=bs)
    exact = 0.0
    for b in range(n // bs):
        for k in (1, 2):
            terms = []
            for subset in itertools.combinations(range(b * bs, (b + 1) * bs), k):
                masked = torch.zeros_like(x0, dtype=torch.bool)
                masked[0, list(subset)] = True
                xt = torch.where(masked, torch.full_like(x0, MASK), x0)
                terms.append(block_denoise_nll(model, xt, x0, masked, positions=positions, block_ids=blk,
                                               doc_ids=doc).sum().item())
            exact += sum(terms) / len(terms) / k
    rows = {"input_ids": x0.expand(128, n)}  # 128 independent estimates of one sequence's bound
    mean, var, _ = block_nelbo_per_sequence(model, rows, block_size=bs, num_samples=8,
                                            generator=torch.Generator().manual_seed(0))
    assert abs(mean.mean().item() - exact) < 4 * math.sqrt(var.sum().item()) / 128 + 1e-6
    assert var.max() > 0 and mean.min() > 0


def test_mask_exactly_k_per_segment_masks_k_eligible_tokens_per_block():
    x0 = tokens(b=3, n=12)
    seg = segment_ids(block_ids_fixed(12, 4).expand(3, 12), torch.zeros(3, 12, dtype=torch.long))
    eligible = torch.ones_like(x0, dtype=torch.bool)
    eligible[:, 0] = False
    k = torch.tensor([[1, 2, 4], [3, 1, 1], [2, 3, 4]])
    _, masked = mask_exactly_k_per_segment(x0, seg, k, MASK, eligible=eligible,
                                           generator=torch.Generator().manual_seed(0))
    assert torch.equal(masked.view(3, 3, 4).sum(-1), k) and not masked[:, 0].any()


# ---------------------------------------------------------------- helpers and bad input
def test_variable_partitions_and_document_restarts():
    parts = random_block_partition(23, [2, 5], torch.Generator().manual_seed(0))
    assert sum(parts) == 23 and all(p in (2, 5) for p in parts[:-1])
    assert block_ids_from_sizes([2, 3]).tolist() == [0, 0, 1, 1, 1]
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])
    _, blk, doc = block_layout({"input_ids": positions, "positions": positions}, block_size=2, block_sizes=[2, 3],
                               generator=torch.Generator().manual_seed(0))
    assert blk[0, 0] == 0 and blk[0, 3] == 0  # each document's first block starts at its position 0


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="objective.block_size"):
        BlockDiffusionLoss(block_size=5)(Uniform(3, V, MASK), {"input_ids": tokens(n=12)})
    with pytest.raises(ConfigError, match="objective.block_sizes"):
        BlockDiffusionLoss(block_sizes=[4, 0])
    with pytest.raises(ConfigError, match="objective.t_min"):
        BlockDiffusionLoss(t_min=0.5, t_max=0.5)
    with pytest.raises(ConfigError, match="objective.t_granularity"):
        BlockDiffusionLoss(t_granularity="token")
    assert BlockDiffusionLoss.family is Family.BLOCK and BlockDiffusionLoss.family.attention == "block_causal"


def test_eval_ppl_model_dir_scores_a_block_model_with_its_block_nelbo(tmp_path):
    from dlm.data.tokenizers.char import CharTokenizer
    from dlm.eval.model_dir import eval_ppl_model_dir
    from dlm.io.model_dir import save_model_dir
    from dlm.io.spec import build

    tok = CharTokenizer()
    # max_seq_len 2 x 16: Transformer.forward checks the token count of [x_t ; x_0], not the positions
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": 32, "attention": "block_causal", "block_size": 1, "vocab_size": tok.vocab_size,
            "mask_id": tok.mask_id}
    torch.manual_seed(0)
    path = save_model_dir(tmp_path / "model", model=build(spec), model_spec=spec, tokenizer=tok, family=Family.BLOCK,
                          schedule_spec={"_target_": "dlm.diffusion.schedule.LogLinearSchedule"},
                          seq_len=16, keep_first_token=True)
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 8)
    res = eval_ppl_model_dir(path, dataset="t", source=str(text), split="test", batch_size=4, num_samples=2,
                             device="cpu", cache_dir=tmp_path / "cache")
    assert res["method"] == "nelbo_bound" and res["diffusion_block_size"] == 1
    assert res["nll_stderr"] == pytest.approx(0.0, abs=1e-9)  # block size 1: the bound is exact, no variance
    assert res["tokens"] == res["sequences"] * 15 and res["ppl"] == pytest.approx(math.exp(res["nll"]))


def test_padding_is_excluded_from_attention_in_both_streams():
    """A right-padded row scores exactly as the row alone: the batch's padding mask reaches the model as a
    may-attend mask over [x_t ; x_0] ANDed with the block-diffusion mask."""
    from dlm.objectives.block import block_targets

    model, x0 = tiny(block_size=4), tokens(b=1, n=8)
    xt = noisy(x0)
    padded = torch.cat([x0, torch.zeros(1, 4, dtype=torch.long)], 1)
    padded_xt = torch.cat([xt, torch.full((1, 4), MASK)], 1)
    pad = torch.cat([torch.ones(1, 8), torch.zeros(1, 4)], 1).long()
    outs = []
    for ids, noisy_ids, mask in ((x0, xt, None), (padded, padded_xt, pad)):
        batch = {"input_ids": ids} if mask is None else {"input_ids": ids, "attention_mask": mask}
        positions, blk, doc = block_layout(batch, block_size=4)
        targets = block_targets(batch, doc) & (noisy_ids == MASK)
        with torch.no_grad():
            outs.append(block_denoise_nll(model, noisy_ids, ids, targets, positions=positions, block_ids=blk,
                                          doc_ids=doc, attention_mask=mask))
    torch.testing.assert_close(outs[1][:, :8], outs[0], atol=1e-5, rtol=0)
    assert outs[1][:, 8:].abs().sum() == 0
