"""The lm-eval adapter on block-diffusion models (``dlm.eval.block_conditional``, issue 15 item 1).

Each test names what would make it fail: block size 1 is the exact left-to-right NLL of the same net (no
variance; with shift_logits: the AR scorer's NLL of the net used causally); on an enumerable toy the bound is
>= the exact NLL of the block model's any-order factorisation, the estimator is unbiased for the bound
computed by enumeration, and the gap is strict; context tokens are never masked and their outputs never read;
is_greedy is greedy block decoding; rolling windows score with dlm-eval-ppl's own block bound (the same draws
for the same seed, and within 3 s.e. of dlm-eval-ppl's run); batch size 1 and 8 give identical outputs.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("lm_eval")

from test_harness import TEXT, all_requests, eval_ppl_rows, export  # noqa: E402

from dlm.diffusion.posterior import subs_log_probs  # noqa: E402
from dlm.errors import ConfigError  # noqa: E402
from dlm.eval.block_conditional import block_span_scores  # noqa: E402
from dlm.eval.block_perplexity import block_nelbo_per_sequence  # noqa: E402
from dlm.eval.conditional import Span, ar_span_scores  # noqa: E402
from dlm.eval.harness import DlmLM  # noqa: E402
from dlm.eval.perplexity import evaluate_perplexity  # noqa: E402
from dlm.eval.scorers import scorer_for  # noqa: E402
from dlm.io.record import Family  # noqa: E402
from dlm.models.transformer import Transformer  # noqa: E402

BLOCK_SPANS = [Span((1, 5, 9), (7, 3, 8, 2, 6), seed=1), Span((1,), (4, 4, 10), seed=2),
               Span((1, 2, 3, 4, 5, 6, 7), (8,), seed=3), Span((1, 9), (), seed=4)]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness_block")
    return {"block": export(root / "block", Family.BLOCK, block_size=4),
            "block_t": export(root / "block_t", Family.BLOCK, block_size=4, time_conditioned=True),
            "block_shift": export(root / "block_shift", Family.BLOCK, block_size=4, shift_logits=True),
            "block1": export(root / "block1", Family.BLOCK, block_size=1),
            "block1_shift": export(root / "block1_shift", Family.BLOCK, block_size=1, shift_logits=True)}


# ---------------------------------------------------------------- block size 1: exact, no variance
@torch.no_grad()
def test_block_size_one_is_the_exact_left_to_right_nll_of_the_same_net(dirs):
    lm = DlmLM(str(dirs["block1"]), device="cpu", mc_samples=3, batch_size=5)
    net, mask = lm.net, lm.net.mask_id
    for span, score in zip(BLOCK_SPANS, lm.score_spans(BLOCK_SPANS, greedy=False), strict=True):
        exact = 0.0  # -log p(c_j | ctx, c_<j): one [MASK] query after the clean prefix (block size 1 = causal)
        for j, c in enumerate(span.continuation):
            x = torch.tensor([[*span.context, *span.continuation[:j], mask]])
            exact -= subs_log_probs(net(x), mask)[0, -1, c].item()
        assert score.nll == pytest.approx(exact, abs=1e-4) and score.variance < 1e-10, span
        assert score.tokens == len(span.continuation)
    # shift_logits, block size 1: the AR scorer's exact NLL of the same weights used causally (SUBS = no mask row)
    lm = DlmLM(str(dirs["block1_shift"]), device="cpu", mc_samples=2)
    spec = {k: v for k, v in lm.loaded.record.model_spec.items() if k != "_target_"}
    causal = Transformer(**{**spec, "attention": "causal", "block_size": None}).eval()
    causal.load_state_dict(lm.net.state_dict())
    ar = ar_span_scores(causal, BLOCK_SPANS, ar_softmax="without_mask")
    for mine, ref in zip(lm.score_spans(BLOCK_SPANS, greedy=False), ar, strict=True):
        assert mine.nll == pytest.approx(ref.nll, rel=1e-5, abs=1e-5) and mine.variance < 1e-10
    # negative control: a block size > 1 bound of a continuation of several tokens has Monte Carlo variance
    [multi] = DlmLM(str(dirs["block"]), device="cpu", mc_samples=4).score_spans(BLOCK_SPANS[:1], greedy=False)
    assert multi.variance > 1e-4


# ---------------------------------------------------------------- enumerable toy: bound >= exact NLL
V_REAL, MASK, BS = 3, 3, 2


def toy_model() -> Transformer:
    torch.manual_seed(3)  # peaked, context-dependent conditionals: the Jensen gap is visible
    return Transformer(vocab_size=V_REAL + 1, mask_id=MASK, dim=16, n_layers=1, n_heads=2, max_seq_len=8,
                       attention="block_causal", block_size=BS, init_std=0.6).eval()


def block_log_probs(model, x: list[int], end: int) -> Tensor:
    """log p_theta(. | x^{<b}, x^b) (end, V) of the row prefix x[:end] (block b = the last one; the model's own
    block-causal mask: what the block sees at decoding time)."""
    return subs_log_probs(model(torch.tensor([x[:end]])).double(), MASK)[0]


def continuation_blocks(ctx, cont):
    """(start, end, continuation positions) of every block holding continuation tokens (the last may be short)."""
    n = len(ctx) + len(cont)
    for start in range(0, n, BS):
        own = [i for i in range(start, min(start + BS, n)) if i >= len(ctx)]
        if own:
            yield start, min(start + BS, n), own


@torch.no_grad()
def any_order_block_log_prob(model, ctx, cont) -> float:
    """log p(cont | ctx) of the block model's decoder: blocks left to right, inside a block a uniformly random
    order of its continuation tokens (one per step): prod_b mean_orders prod_i p(c_i | revealed, x^{<b})."""
    row, total = [*ctx, *cont], 0.0
    for _, end, own in continuation_blocks(ctx, cont):
        probs = []
        for order in itertools.permutations(own):
            x = [MASK if i in own else v for i, v in enumerate(row)]
            logp = 0.0
            for i in order:
                logp += block_log_probs(model, x, end)[i, row[i]].item()
                x[i] = row[i]
            probs.append(math.exp(logp))
        total += math.log(sum(probs) / len(probs))
    return total


@torch.no_grad()
def exact_block_nelbo(model, ctx, cont) -> float:
    """sum_b sum_k (1/k) mean_{|M|=k in C_b} sum_{i in M} -log p(c_i | x^b_{-M}, x^{<b}), every mask set M."""
    row, total = [*ctx, *cont], 0.0
    for _, end, own in continuation_blocks(ctx, cont):
        for k in range(1, len(own) + 1):
            sets = list(itertools.combinations(own, k))
            acc = 0.0
            for m in sets:
                logp = block_log_probs(model, [MASK if i in m else v for i, v in enumerate(row)], end)
                acc += sum(-logp[i, row[i]].item() for i in m)
            total += acc / len(sets) / k
    return total


def test_block_bound_is_above_the_exact_nll_of_the_block_factorisation_on_an_enumerable_toy():
    model = toy_model()
    # (1,) + 3: block 0 straddles the boundary; (2, 1) + 3: a context block, then a short last block;
    # (1, 2, 0) + 2: a straddling block and a short last block
    cases = [((1,), (0, 2, 1)), ((2, 1), (0, 0, 1)), ((1, 2, 0), (2, 1))]
    for ctx, _ in cases[:2]:  # the enumerated decoder is a distribution over continuations: its NLL is a real NLL
        conts = itertools.product(range(V_REAL), repeat=3)
        assert sum(math.exp(any_order_block_log_prob(model, ctx, c)) for c in conts) == pytest.approx(1.0, abs=1e-6)
    gaps = []
    for ctx, cont in cases:
        nll, bound = -any_order_block_log_prob(model, ctx, cont), exact_block_nelbo(model, ctx, cont)
        assert bound >= nll - 1e-9, (ctx, cont)
        gaps.append(bound - nll)
        for method in ("mc", "quadrature"):  # the adapter's estimator is unbiased for that bound
            [est] = block_span_scores(model, [Span(ctx, cont, seed=11)], num_samples=384, method=method,
                                      batch_size=64, greedy=False)
            assert abs(est.nll - bound) < 3 * math.sqrt(est.variance) + 1e-3, (ctx, cont, method, est.nll, bound)
    assert max(gaps) > 1e-3  # arbitrary conditionals: a strict Jensen gap, so >= is not an equality


# ---------------------------------------------------------------- context never masked, never read
class Probe(nn.Module):
    """The wrapped block model, its outputs at the ``perturbed`` row positions (both streams of [x_t ; x_0])
    replaced by noise; records every input it is given."""

    def __init__(self, inner: Transformer, perturbed: list[int]) -> None:
        super().__init__()
        self.inner, self.perturbed, self.inputs = inner, perturbed, []
        for key in ("vocab_size", "mask_id", "time_conditioned", "attention", "block_size", "shift_logits",
                    "max_seq_len", "n_layers"):
            setattr(self, key, getattr(inner, key))

    def forward(self, tokens, t=None, *, logits_at=None, **kw):
        self.inputs.append(tokens.clone())
        out = self.inner(tokens, t, **kw).clone()  # (B, 2L, V)
        half = tokens.shape[1] // 2
        for p in self.perturbed:
            out[:, [p, half + p]] = torch.randn(out[:, [p, half + p]].shape, generator=torch.Generator().manual_seed(p))
        return out if logits_at is None else out.gather(1, logits_at[..., None].expand(-1, -1, out.shape[-1]))


def test_context_tokens_are_never_masked_and_their_outputs_never_read(dirs):
    net = DlmLM(str(dirs["block"]), device="cpu").net
    spans = [Span((1, 5, 9, 2, 8, 4), (7, 3, 8, 2, 6), seed=1)]  # context fills block 0 and half of block 1
    settings = dict(num_samples=8, batch_size=4, greedy=False)
    [ref] = block_span_scores(net, spans, **settings)
    probe = Probe(net, perturbed=list(range(6)))
    [same] = block_span_scores(probe, spans, **settings)
    assert same == ref  # bit for bit: nothing at a context position is read
    noisy = torch.cat([x[:, :11] for x in probe.inputs])  # the x_t halves
    assert not (noisy[:, :6] == net.mask_id).any() and (noisy[:, 6:] == net.mask_id).any()
    # negative control: the same perturbation at one continuation position changes the score
    [moved] = block_span_scores(Probe(net, perturbed=[7]), spans, **settings)
    assert abs(moved.nll - ref.nll) > 1e-3


# ---------------------------------------------------------------- is_greedy = greedy block decoding
@torch.no_grad()
def greedy_block_decode(model, ctx: tuple[int, ...], n: int) -> tuple[int, ...]:
    """Block by block (no cache: the prefix recomputed), one token per call: the most probable token at the most
    confident masked position of the block."""
    x, length = [*ctx, *[model.mask_id] * n], len(ctx) + n
    for start in range(0, length, model.block_size):
        end = min(start + model.block_size, length)
        while model.mask_id in x[start:end]:
            logp = subs_log_probs(model(torch.tensor([x[:end]])).double(), model.mask_id)[0]
            best = max((i for i in range(start, end) if x[i] == model.mask_id), key=lambda i: logp[i].max().item())
            x[best] = int(logp[best].argmax())
    return tuple(x[len(ctx):])


def test_is_greedy_is_greedy_block_decoding(dirs):
    net = DlmLM(str(dirs["block"]), device="cpu").net
    spans = []
    for ctx, n in (((1, 5, 9), 6), ((1,), 3), ((1, 2, 3, 4), 4)):
        g = greedy_block_decode(net, ctx, n)
        spans += [Span(ctx, g), Span(ctx, (*g[:-1], (g[-1] + 1) % net.mask_id))]
    hits = [s.is_greedy for s in block_span_scores(net, spans, num_samples=2, batch_size=3)]
    assert hits == [True, False] * 3


# ---------------------------------------------------------------- rolling = dlm-eval-ppl's block bound
def test_rolling_block_bound_is_eval_ppls_and_counts_every_token_once(dirs):
    lm = DlmLM(str(dirs["block"]), device="cpu", batch_size=16, mc_samples=32, seed=1)
    text = (TEXT * 2)[: 3 * (lm.max_length - 1)]
    rows = eval_ppl_rows(lm, text)  # 3 full windows = 3 keep_first_token rows of 32 tokens (8 blocks each)
    [score] = lm.rolling_scores([text])
    scorer = scorer_for(Family.BLOCK, lm.net, num_samples=32, keep_first_token=True)  # what dlm-eval-ppl builds
    ref = evaluate_perplexity(lm.net, [{"input_ids": rows}], scorer, seed=7)
    ref_nll, ref_se = ref["nll"] * ref["tokens"], ref["nll_stderr"] * ref["tokens"]
    se = math.sqrt(score.variance + ref_se ** 2)
    assert score.tokens == ref["tokens"] == len(text) and score.windows == 3 and score.variance > 0
    assert abs(score.nll - ref_nll) < 3 * se, (score.nll, ref_nll, se)
    off = evaluate_perplexity(lm.net, [{"input_ids": rows}], scorer_for(Family.BLOCK, lm.net, num_samples=32,
                                                                        keep_first_token=False), seed=7)
    assert abs(score.nll - off["nll"] * off["tokens"]) > 3 * se  # negative control: the test has power
    # the same estimator, not a copy: a span's draws are block_nelbo_per_sequence's for its seed
    ids = rows[1].tolist()
    for ctx_len in (1, 6):  # keep_first_token (dlm-eval-ppl's own targets), then an explicit scored-token mask
        [mine] = block_span_scores(lm.net, [Span(tuple(ids[:ctx_len]), tuple(ids[ctx_len:]), seed=5)],
                                   num_samples=6, batch_size=4, greedy=False)
        targets = torch.arange(len(ids))[None] >= ctx_len
        nll, var, n = block_nelbo_per_sequence(
            lm.net, {"input_ids": torch.tensor([ids])}, block_size=4, num_samples=6, keep_first_token=True,
            targets=None if ctx_len == 1 else targets, generator=torch.Generator().manual_seed(5))
        assert mine.tokens == int(n) == len(ids) - ctx_len
        assert mine.nll == pytest.approx(float(nll), rel=1e-6) and mine.variance == pytest.approx(float(var), rel=1e-5)


# ---------------------------------------------------------------- batch size 1 vs 8, per-request seeds
@pytest.mark.parametrize("name", ["block", "block_t", "block_shift"])
def test_batch_size_1_and_8_give_identical_outputs_for_every_request_type(dirs, name):
    sampler = {"_target_": "dlm.samplers.block.BlockSampler", "temperature": 1.0}  # stochastic draws
    settings = dict(device="cpu", mc_samples=6, sampler=sampler, max_gen_toks=6)
    one = all_requests(DlmLM(str(dirs[name]), batch_size=1, **settings))
    eight = DlmLM(str(dirs[name]), batch_size=8, **settings)
    got = all_requests(eight)
    assert got[0] == one[0] and got[2] == one[2]  # loglikelihood and generation: exact, same bits, same text
    if name == "block_shift":  # rolling windows of a shift_logits model: multi-threaded GEMM kernels chosen by the
        # batch's row count round the last bit differently (seen with 2 threads); the draws are the same
        assert got[1] == pytest.approx(one[1], rel=1e-7, abs=1e-9)
    else:
        assert got[1] == one[1]
    info = eight.get_model_info()["dlm"]
    assert info["family"] == "block" and info["estimator"]["diffusion_block_size"] == 4
    other = all_requests(DlmLM(str(dirs[name]), batch_size=8, seed=1, **settings))
    assert other[0] != one[0] and other[1] != one[1] and other[2] != one[2]  # the draws matter


def test_default_generation_is_greedy_block_decoding_and_bad_spans_are_refused(dirs):
    lm = DlmLM(str(dirs["block"]), device="cpu")
    ctx = (lm.prefix_token_id, *lm.tok.encode("the quick"))
    text, _ = lm._generate(list(ctx), 6, [], seed=0)
    assert lm.tok.encode(text) == list(greedy_block_decode(lm.net, ctx, 6))
    with pytest.raises(ConfigError, match="shift_logits.*at least one context token"):
        block_span_scores(DlmLM(str(dirs["block1_shift"]), device="cpu").net, [Span((), (3, 4))])
    masked = export(Path(dirs["block"]).parent / "masked", Family.MASKED)
    with pytest.raises(ConfigError, match="needs a block-diffusion model .*masked_span_scores"):
        block_span_scores(DlmLM(str(masked), device="cpu").net, [Span((1,), (3, 4))])
