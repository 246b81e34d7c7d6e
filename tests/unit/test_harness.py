"""The lm-evaluation-harness adapter (``dlm.eval.harness``, issue 15 item 1): tiny models, local task YAMLs.

Each test names what would make it fail: AR log-likelihoods equal lm-eval's own HF backend on the same
weights; rolling NLL equals dlm-eval-ppl's scorer on the same rows (AR exactly, diffusion within 3 s.e.)
and scores every token once; the conditional bound is >= the exact conditional NLL (and tight for exact
conditionals) on an enumerable toy; batch size 1 and 8 give identical outputs for every request type;
simple_evaluate and dlm-lm-eval run local tasks end to end; bad input is refused naming the fix.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from mocks import ExactDenoiser, RandomDenoiser

pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from dlm.data.tokenizers.bio import DNATokenizer  # noqa: E402
from dlm.data.tokenizers.char import CharTokenizer  # noqa: E402
from dlm.diffusion.posterior import subs_log_probs  # noqa: E402
from dlm.errors import ConfigError  # noqa: E402
from dlm.eval.conditional import Span, masked_span_scores  # noqa: E402
from dlm.eval.harness import DlmLM, check_tasks  # noqa: E402
from dlm.eval.perplexity import evaluate_perplexity, nelbo_per_sequence  # noqa: E402
from dlm.eval.scorers import scorer_for  # noqa: E402
from dlm.io.hf_dir import convert, hf_to_dlm  # noqa: E402
from dlm.io.model_dir import LoadedModel, load_model_dir, save_model_dir  # noqa: E402
from dlm.io.record import Family  # noqa: E402
from dlm.io.spec import build  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "lm_eval"
SCHEDULE = {"_target_": "dlm.diffusion.schedule.LogLinearSchedule"}
TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. "


def export(path: Path, family: Family, tok=None, **spec_kw) -> Path:
    tok = tok or CharTokenizer()
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": 32, "attention": family.attention, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id,
            **spec_kw}
    torch.manual_seed(0)
    return save_model_dir(path, model=build(spec), model_spec=spec, tokenizer=tok, family=family, seq_len=32,
                          schedule_spec=None if family is Family.AR else SCHEDULE)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    return {"ar": export(root / "ar", Family.AR), "diffusion": export(root / "diffusion", Family.MASKED)}


def req(kind: str, *args, doc_id: int = 0) -> Instance:
    return Instance(kind, {}, args, 0, metadata=("t", doc_id, 1))


# ---------------------------------------------------------------- AR: equal to lm-eval's HF backend
WORDS = ["<s>", "</s>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "<unk>"]


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """A random Llama with a word-level tokenizer that adds BOS as HF tokenizers do -> dlm (AR, mask on a spare
    row) -> back to HF with dlm-convert direction=to_hf: the model lm-eval's HF backend loads."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    root = tmp_path_factory.mktemp("hf")
    rust = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    rust.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=rust, bos_token="<s>", eos_token="</s>",
                                               unk_token="<unk>")
    cfg = transformers.LlamaConfig(vocab_size=len(WORDS) + 6, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=16, rms_norm_eps=1e-6, rope_theta=1e4, bos_token_id=0,
                                   eos_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(root / "src")
    tok.save_pretrained(root / "src")
    hf_to_dlm(root / "src", root / "dlm")
    convert(str(root / "dlm"), str(root / "hf"), direction="to_hf")
    return root / "dlm", root / "hf"


def greedy_word(hf_model, tok, context: str, add_bos: bool) -> str | None:
    """The word the HF model puts most mass on after ``context`` (None: a special token or a spare row)."""
    ids = tok(context, add_special_tokens=add_bos)["input_ids"]
    with torch.no_grad():
        best = int(hf_model(torch.tensor([ids])).logits[0, -1].argmax())
    return WORDS[best] if 2 <= best < len(WORDS) - 1 else None


@pytest.mark.parametrize("add_bos", [False, True])
def test_ar_loglikelihood_equals_lm_eval_hf_backend(hf_pair, add_bos):
    from lm_eval.models.huggingface import HFLM

    dlm_dir, hf_dir = hf_pair
    hf = HFLM(pretrained=str(hf_dir), device="cpu", batch_size=3, add_bos_token=add_bos, dtype="float32",
              max_length=15)  # HF's max_length counts model inputs: one less than dlm's row of 16 tokens
    ours = DlmLM(str(dlm_dir), add_bos_token=add_bos, batch_size=3, device="cpu")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    contexts = ["the cat", "a dog", "the mat", "a cat sat", "dog"]
    greedy = next((c, w) for c in contexts if (w := greedy_word(hf_model, tok, c, add_bos)))
    pairs = [("the cat", " sat on the mat"), ("", "the dog ran"), ("the", " cat"), (greedy[0], " " + greedy[1]),
             ("a dog ran on the mat the cat sat on a mat the dog ran on the mat a cat sat", " ran on"),  # truncated
             ("a", " dog dog dog")]
    requests = [req("loglikelihood", c, x) for c, x in pairs]
    theirs, mine = hf.loglikelihood(requests), ours.loglikelihood(requests)
    for (lp_hf, g_hf), (lp, g), pair in zip(theirs, mine, pairs, strict=True):
        assert lp == pytest.approx(lp_hf, abs=1e-4), pair
        assert g == g_hf, pair
    assert mine[3][1], "a greedy continuation must be recognised as greedy"
    assert ours.stats["loglikelihood"]["truncated"][0]["request"] == 4
    if not add_bos:  # rolling windows: the same layout as HF's max_length=15 (its BOS-adding tokenizer aside)
        texts = [req("loglikelihood_rolling", "the cat sat on the mat a dog ran " * 4), req("loglikelihood_rolling", "a")]
        assert ours.loglikelihood_rolling(texts) == pytest.approx(hf.loglikelihood_rolling(texts), abs=1e-4)
    # negative control: the other softmax normalisation (mask column removed) is measurably off
    loaded = load_model_dir(dlm_dir)
    other = LoadedModel(model=loaded.model, tokenizer=loaded.tokenizer, schedule=None, meta=loaded.meta,
                        path=loaded.path, record=dataclasses.replace(loaded.record, ar_softmax="without_mask"))
    wrong = DlmLM(other, add_bos_token=add_bos, device="cpu").loglikelihood(requests)
    assert max(abs(a[0] - b[0]) for a, b in zip(wrong, theirs, strict=True)) > 1e-3


# ---------------------------------------------------------------- rolling = dlm-eval-ppl's scorer
def eval_ppl_rows(lm: DlmLM, text: str) -> torch.Tensor:
    """[BOS] + each run of L - 1 tokens: the rows dlm-eval-ppl's scorers score with the first token kept clean
    (built here by slicing, not by the adapter)."""
    ids = lm.tok.encode(text)
    step = lm.max_length - 1
    assert len(ids) % step == 0, "the test text must fill whole rows"
    return torch.tensor([[lm.prefix_token_id, *ids[r:r + step]] for r in range(0, len(ids), step)])


def test_rolling_nll_equals_eval_ppl_exactly_for_ar_and_counts_every_token_once(dirs):
    lm = DlmLM(str(dirs["ar"]), device="cpu", batch_size=4)
    text = (TEXT * 2)[: 3 * (lm.max_length - 1)]
    rows = eval_ppl_rows(lm, text)
    scorer = scorer_for(Family.AR, lm.net, ar_softmax=lm.loaded.record.ar_softmax)
    ref = evaluate_perplexity(lm.net, [{"input_ids": rows}], scorer)
    [score] = lm.rolling_scores([text])
    assert score.tokens == ref["tokens"] == len(text) and score.windows == len(rows) == 3
    assert score.nll == pytest.approx(ref["nll"] * ref["tokens"], rel=1e-6)
    assert lm.loglikelihood_rolling([req("loglikelihood_rolling", text)]) == [pytest.approx(-score.nll)]
    # every token exactly once, for any length (the last window then conditions on more than one token)
    for n in (1, 30, 31, 32, 95, 170):
        windows = lm.rolling_windows((TEXT * 3)[:n])
        assert [t for _, cont in windows for t in cont] == lm.tok.encode((TEXT * 3)[:n])
        assert all(1 <= len(ctx) and len(ctx) + len(cont) <= lm.max_length for ctx, cont in windows)
        assert all(ctx[0] == lm.prefix_token_id for ctx, _ in windows)  # every row starts with BOS, as in training
    # add_bos_token=False: lm-eval's own windows (a later one conditions on the previous token, not on BOS)
    plain = DlmLM(str(dirs["ar"]), device="cpu", batch_size=4, add_bos_token=False).rolling_windows(TEXT * 2)
    ids = lm.tok.encode(TEXT * 2)
    assert plain[1][0] == [ids[len(plain[0][1]) - 1]] and [t for _, c in plain for t in c] == ids
    assert lm.rolling_scores(["", "a"])[0].tokens == 0 and lm.rolling_scores(["a"])[0].tokens == 1


def test_rolling_bound_agrees_with_eval_ppl_within_three_standard_errors(dirs):
    lm = DlmLM(str(dirs["diffusion"]), device="cpu", batch_size=16, mc_samples=48, seed=1)
    text = (TEXT * 2)[: 3 * (lm.max_length - 1)]
    rows = eval_ppl_rows(lm, text)
    [score] = lm.rolling_scores([text])
    ref = evaluate_perplexity(lm.net, [{"input_ids": rows}],
                              scorer_for(Family.MASKED, lm.net, num_samples=48, keep_first_token=True), seed=7)
    ref_nll, ref_se = ref["nll"] * ref["tokens"], ref["nll_stderr"] * ref["tokens"]
    se = math.sqrt(score.variance + ref_se ** 2)
    assert score.tokens == ref["tokens"] == len(text) and score.variance > 0
    assert abs(score.nll - ref_nll) < 3 * se, (score.nll, ref_nll, se)
    # negative control: eval-ppl also scoring each row's first token is > 3 s.e. away (the test has power)
    off = evaluate_perplexity(lm.net, [{"input_ids": rows}],
                              scorer_for(Family.MASKED, lm.net, num_samples=48, keep_first_token=False), seed=7)
    assert abs(score.nll - off["nll"] * off["tokens"]) > 3 * se


def test_conditional_draws_are_eval_ppls_for_a_one_token_context(dirs):
    """With the same seed the adapter draws exactly what nelbo_per_sequence draws for a keep_first_token row:
    the estimator is the eval-ppl one restricted to the continuation, not a second copy of it."""
    net = load_model_dir(dirs["diffusion"]).model
    ids = [1, *CharTokenizer().encode(TEXT[:20])]
    [mine] = masked_span_scores(net, [Span(tuple(ids[:1]), tuple(ids[1:]), seed=5)], num_samples=8, batch_size=3,
                                greedy=False)
    nll, var, n = nelbo_per_sequence(net, {"input_ids": torch.tensor([ids])}, num_samples=8, keep_first_token=True,
                                     generator=torch.Generator().manual_seed(5))
    assert mine.tokens == int(n) == 20
    assert mine.nll == pytest.approx(float(nll), rel=1e-6) and mine.variance == pytest.approx(float(var), rel=1e-5)


# ---------------------------------------------------------------- bound >= exact NLL on an enumerable toy
V_REAL, MASK = 3, 3
CTX, N = (2, 0), 3  # two clean context tokens, three scored ones


def any_order_log_prob(model, ctx, cont) -> float:
    """log p(cont | ctx) of the model's any-order (uniform random order, one token per step) decoder: the
    mean over all n! orders of the product of its conditionals."""
    probs = []
    for order in itertools.permutations(range(len(cont))):
        x = torch.tensor([[*ctx, *[MASK] * len(cont)]])
        logp = 0.0
        for j in order:
            logp += subs_log_probs(model(x).double(), MASK)[0, len(ctx) + j, cont[j]].item()
            x[0, len(ctx) + j] = cont[j]
        probs.append(math.exp(logp))
    return math.log(sum(probs) / len(probs))


def exact_conditional_nelbo(model, ctx, cont) -> float:
    """sum_k (1/k) mean_{|M|=k} sum_{i in M} -log p(c_i | ctx, c_-M), by enumerating every mask set M."""
    total = 0.0
    for k in range(1, len(cont) + 1):
        sets = list(itertools.combinations(range(len(cont)), k))
        acc = 0.0
        for m in sets:
            x = torch.tensor([[*ctx, *[MASK if j in m else c for j, c in enumerate(cont)]]])
            logp = subs_log_probs(model(x).double(), MASK)[0]
            acc += sum(-logp[len(ctx) + j, cont[j]].item() for j in m)
        total += acc / len(sets) / k
    return total


def test_conditional_bound_is_above_the_exact_conditional_nll_and_tight_for_exact_conditionals():
    g = torch.Generator().manual_seed(0)
    joint = torch.rand((V_REAL,) * (len(CTX) + N), generator=g) ** 3
    exact_model = ExactDenoiser(joint / joint.sum())
    random_model = RandomDenoiser(len(CTX) + N, V_REAL + 1, MASK, seed=3)
    conts = [tuple(c) for c in itertools.product(range(V_REAL), repeat=N)]
    # the enumeration is a distribution over continuations (so "exact NLL" below is a real NLL)
    assert sum(math.exp(any_order_log_prob(random_model, CTX, c)) for c in conts) == pytest.approx(1.0, abs=1e-6)
    q = joint[CTX] / joint[CTX].sum()
    gaps = []
    for cont in [(0, 1, 2), (2, 2, 0), (1, 0, 0)]:
        exact_nll = -math.log(float(q[cont]))
        # exact conditionals of a joint: the bound is the exact NLL (every order decomposes it exactly)
        assert exact_conditional_nelbo(exact_model, CTX, cont) == pytest.approx(exact_nll, rel=1e-5)
        nll = -any_order_log_prob(random_model, CTX, cont)
        bound = exact_conditional_nelbo(random_model, CTX, cont)
        assert bound >= nll - 1e-9
        gaps.append(bound - nll)
        # the adapter's estimator is unbiased for that bound (mc) and close to it (quadrature)
        for method in ("mc", "quadrature"):
            [est] = masked_span_scores(random_model, [Span(CTX, cont, seed=11)], num_samples=96, method=method,
                                       batch_size=32, greedy=False)
            assert abs(est.nll - bound) < 3 * math.sqrt(est.variance) + 1e-3, (method, est.nll, bound)
    assert max(gaps) > 1e-3  # arbitrary conditionals: a strict Jensen gap, so the >= above is not an equality


def test_is_greedy_is_a_greedy_any_order_decode():
    joint = torch.zeros((V_REAL,) * 4)
    joint[0, 1, 2, 2] = 0.9  # the mode after context (0, 1) is (2, 2)
    joint[0, 1, 0, 1] = 0.1
    model = ExactDenoiser(joint + 1e-6)
    scores = masked_span_scores(model, [Span((0, 1), (2, 2)), Span((0, 1), (0, 1)), Span((0, 1), ())],
                                num_samples=4)
    assert [s.is_greedy for s in scores] == [True, False, True]
    assert scores[2].nll == 0.0 and scores[2].tokens == 0  # an empty continuation has probability 1


# ---------------------------------------------------------------- batch size 1 vs 8, per-request seeds
def all_requests(lm: DlmLM):
    lls = [req("loglikelihood", c, x, doc_id=i) for i, (c, x) in enumerate(
        [("the quick", " brown fox"), ("", "lazy"), ("pack my box", ""), (TEXT * 2, " jugs"), ("a", " b"),
         ("five dozen", " liquor jugs"), ("the", " the"), ("x" * 5, " over the lazy dog")])]
    rolls = [req("loglikelihood_rolling", t) for t in (TEXT * 2, "short", TEXT[:31], "")]
    gens = [req("generate_until", c, {"until": ["."], "max_gen_toks": 6}) for c in ("the quick", "pack my", "", TEXT * 2)]
    return (lm.loglikelihood(lls), lm.loglikelihood_rolling(rolls), lm.generate_until(gens))


@pytest.mark.parametrize("family", ["ar", "diffusion"])
def test_batch_size_1_and_8_give_identical_outputs_for_every_request_type(dirs, family):
    sampler = ({"_target_": "dlm.samplers.autoregressive.AutoregressiveSampler"} if family == "ar" else
               {"_target_": "dlm.samplers.ancestral.AncestralSampler", "num_steps": 8, "schedule": None})
    settings = dict(device="cpu", mc_samples=6, sampler=sampler, max_gen_toks=6)  # stochastic samplers
    one = all_requests(DlmLM(str(dirs[family]), batch_size=1, **settings))
    eight = DlmLM(str(dirs[family]), batch_size=8, **settings)
    assert all_requests(eight) == one  # exact: same bits, same text
    assert eight.stats["loglikelihood"]["empty_continuations"] == 1
    # negative control: the outputs do depend on the per-request draws (another seed changes them)
    other = all_requests(DlmLM(str(dirs[family]), batch_size=8, seed=1, **settings))
    assert other[2] != one[2]
    if family == "diffusion":
        assert other[0] != one[0] and other[1] != one[1]


def test_over_long_context_is_left_truncated_and_recorded_and_empty_continuation_is_zero(dirs, caplog):
    lm = DlmLM(str(dirs["ar"]), device="cpu")
    context = TEXT.strip()
    # an in-process Hydra app of another test (job_logging: disabled) disables existing loggers: undo it here
    harness_log, threshold = logging.getLogger("dlm.eval.harness"), logging.root.manager.disable
    was_disabled, harness_log.disabled = harness_log.disabled, False
    logging.disable(logging.NOTSET)
    try:
        with caplog.at_level("WARNING", logger="dlm.eval.harness"):
            [(lp, greedy), (lp0, greedy0)] = lm.loglikelihood(
                [req("loglikelihood", context, " end", doc_id=3), req("loglikelihood", "abc", "", doc_id=4)])
            lm.loglikelihood([req("loglikelihood", context, " a", doc_id=k) for k in range(5)])
    finally:
        harness_log.disabled = was_disabled
        logging.disable(threshold)
    # one warning per call, however many contexts it cut (each is listed in the record)
    warned = [r.getMessage() for r in caplog.records if "left-truncated" in r.getMessage()]
    assert len(warned) == 2 and warned[0].startswith("dlm: 1 of 2 ") and warned[1].startswith("dlm: 5 of 5 ")
    ids = lm.tok.encode(context + " end")
    [direct] = lm.score_spans([Span(tuple(ids[-32:-4]), tuple(ids[-4:]))])  # the last 28 context tokens kept
    assert lp == pytest.approx(-direct.nll, abs=1e-6)
    assert (lp0, greedy0) == (0.0, True)
    record = lm.get_model_info()["dlm"]
    assert record["requests"]["loglikelihood"]["truncated"][0] == {
        "task": "t", "doc_id": 3, "request": 0, "tokens_dropped": 1 + len(context) - 28}  # BOS + text - kept
    assert len(record["requests"]["loglikelihood"]["truncated"]) == 6
    assert record["requests"]["loglikelihood"]["empty_continuations"] == 1
    assert record["family"] == "ar" and record["model_fingerprint"] and record["dlm_version"]


def test_generate_until_cuts_at_stop_strings_and_respects_max_gen_toks(dirs):
    lm = DlmLM(str(dirs["ar"]), device="cpu")  # greedy (top_k=1)
    [free] = lm.generate_until([req("generate_until", "the quick", {"until": [], "max_gen_toks": 12})])
    assert 0 < len(free) <= 12  # char tokenizer: one token per character
    stop = free[len(free) // 2]
    [cut] = lm.generate_until([req("generate_until", "the quick", {"until": [stop], "max_gen_toks": 12})])
    assert cut == free[: free.index(stop)] and cut != free


# ---------------------------------------------------------------- end to end through lm-eval
def local_tasks(tmp_path: Path) -> Path:
    """The fixture task YAMLs with their data files as absolute paths (any working directory)."""
    out = tmp_path / "tasks"
    out.mkdir()
    for src in FIXTURES.iterdir():
        text = src.read_text()
        if src.suffix == ".yaml":
            text = text.replace("tests/fixtures/lm_eval/", f"{FIXTURES}/")
        (out / src.name).write_text(text)
    return out


def test_simple_evaluate_runs_local_tasks_end_to_end(dirs, tmp_path):
    tasks = local_tasks(tmp_path)
    lm = DlmLM(str(dirs["ar"]), device="cpu", max_gen_toks=6)
    out = simple_evaluate(model=lm, tasks=["dlm_tiny_lambada", "dlm_tiny_wikitext", "dlm_tiny_generate"],
                          task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
                          bootstrap_iters=0)
    res, info = out["results"], out["config"]["dlm"]
    docs = [json.loads(line)["page"] for line in (FIXTURES / "wikitext.jsonl").read_text().splitlines()]
    nll = sum(s.nll for s in lm.rolling_scores(docs))
    words = sum(len(d.split()) for d in docs)
    assert res["dlm_tiny_wikitext"]["word_perplexity,none"] == pytest.approx(math.exp(nll / words), rel=1e-6)
    assert 0.0 <= res["dlm_tiny_lambada"]["acc,none"] <= 1.0 and "exact_match,none" in res["dlm_tiny_generate"]
    assert info["requests"]["loglikelihood"]["requests"] == 8 and info["requests"]["generate_until"]["requests"] == 3
    assert info["requests"]["loglikelihood_rolling"]["tokens"] == sum(len(d) for d in docs)


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from dlm.cli import lm_eval_main

    monkeypatch.chdir(ROOT)  # the fixture YAMLs name their data relative to the repository root
    monkeypatch.setattr(sys, "argv", ["dlm-lm-eval", *args])
    try:
        lm_eval_main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_dlm_lm_eval_command_line_writes_results_with_the_dlm_record(dirs, tmp_path, monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, "--model_args", f"model={dirs['diffusion']},mc_samples=4,sampler=confidence,"
                        "sampler.num_steps=4", "--tasks", "dlm_tiny_lambada,dlm_tiny_generate", "--include_path",
                        str(FIXTURES), "--output_path", str(tmp_path / "out"), "--batch_size", "8", "--device", "cpu")
    assert code == 0, err
    [path] = (tmp_path / "out").rglob("results_*.json")
    info = json.loads(path.read_text())["config"]["dlm"]
    assert info["sampler"]["num_steps"] == 4 and info["estimator"]["mc_samples"] == 4 and info["batch_size"] == 8


@pytest.mark.slow
def test_dlm_lm_eval_refuses_an_unknown_task_naming_the_fix(dirs, monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, "--model_args", f"model={dirs['ar']}", "--tasks", "no_such_task",
                        "--include_path", str(FIXTURES), "--device", "cpu")
    assert code == 2 and "--tasks no_such_task: no such lm-eval task" in err and "--include_path" in err


# ---------------------------------------------------------------- bad input
def test_unknown_task_is_refused_naming_the_fix(tmp_path):
    tasks = local_tasks(tmp_path)
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    check_tasks(["dlm_tiny_lambada"], str(tasks), task_manager=manager)  # control: a known task passes
    with pytest.raises(ConfigError, match=r"--tasks lambada_tiny: no such lm-eval task .*--include_path"):
        check_tasks(["lambada_tiny"], str(tasks), task_manager=manager)


def test_a_tokenizer_lm_eval_cannot_use_is_refused(tmp_path, dirs):
    dna = export(tmp_path / "dna", Family.MASKED, tok=DNATokenizer())
    with pytest.raises(ConfigError, match=r"tokenizer dna cannot encode text .*natural language"):
        DlmLM(str(dna), device="cpu")
    DlmLM(str(dirs["diffusion"]), device="cpu")  # control: a text tokenizer is accepted


def test_bad_settings_are_refused_naming_the_key(tmp_path, dirs):
    with pytest.raises(ConfigError, match="pretrained: unknown to --model dlm; valid: model, mc_samples"):
        DlmLM(str(dirs["ar"]), pretrained="gpt2")
    with pytest.raises(ConfigError, match="batch_size='auto'"):
        DlmLM(str(dirs["ar"]), batch_size="auto")
    with pytest.raises(ConfigError, match=r"max_length=64 exceeds the model's context max_seq_len=32.*rope_scaling"):
        DlmLM(str(dirs["ar"]), max_length=64)
    with pytest.raises(ConfigError, match="method='exact'"):
        DlmLM(str(dirs["diffusion"]), method="exact")
    with pytest.raises(ConfigError, match="sampler='confidence': a conf/sampler name is resolved by dlm-lm-eval"):
        DlmLM(str(dirs["diffusion"]), sampler="confidence")
    with pytest.raises(ConfigError, match="sampler: .*nokey"):
        DlmLM(str(dirs["diffusion"]), **{"sampler.nokey": 1})
    with pytest.raises(ConfigError, match="a 'classifier' model directory, which does not model text; --model dlm "
                                          "scores 'ar', 'diffusion', 'block' models"):
        DlmLM(str(export(tmp_path / "classifier", Family.CLASSIFIER, attention="bidirectional")))
    DlmLM(str(export(tmp_path / "block", Family.BLOCK, block_size=4)), device="cpu")  # control: block is scored
    with pytest.raises(ConfigError, match="a continuation of 40 tokens does not fit max_length=32"):
        DlmLM(str(dirs["ar"])).loglikelihood([req("loglikelihood", "a", " " + "b" * 39)])


def test_a_sampler_by_name_is_composed_from_conf(dirs):
    from dlm.cli import sampler_from_conf
    from dlm.diffusion.schedule import CosineSchedule

    sampler = sampler_from_conf("ancestral", {"num_steps": 4, "top_k": None}, CosineSchedule())
    assert type(sampler).__name__ == "AncestralSampler" and sampler.num_steps == 4 and sampler.step.tokens.top_k is None
    assert isinstance(sampler.schedule, CosineSchedule)  # schedule: null -> the model's own (here: cosine)


def test_fixture_task_yamls_name_their_data_relative_to_the_repository_root():
    """The README's dlm-lm-eval command runs from the repository root on these files."""
    for yaml in FIXTURES.glob("*.yaml"):
        data = [line.split(":", 1)[1].split("#")[0].strip() for line in yaml.read_text().splitlines()
                if line.strip().startswith("test: ")]
        assert data and all((ROOT / d).is_file() for d in data), yaml
    assert shutil.which("dlm-lm-eval") or (Path(sys.executable).parent / "dlm-lm-eval").exists()


def test_default_row_length_is_the_training_rows_not_the_rope_context(tmp_path):
    """A model trained on rows of 16 tokens with a 32-token RoPE table is scored on rows of 16 by default (as
    dlm-eval-ppl does): positions 16..31 were never trained. max_length=32 still asks for the whole context.
    Rows that end in [EOS] (wrap) leave that slot out."""
    tok = CharTokenizer()
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": 32, "attention": "causal", "vocab_size": tok.vocab_size, "mask_id": tok.mask_id}
    path = save_model_dir(tmp_path / "m", model=build(spec), model_spec=spec, tokenizer=tok, family=Family.AR,
                          seq_len=16)
    assert DlmLM(str(path), device="cpu").max_length == 16
    assert DlmLM(str(path), device="cpu", max_length=32).max_length == 32
    # wrap rows ([BOS] piece [EOS]) always held [EOS] in their last position: text is scored in the 15 before it
    wrap = save_model_dir(tmp_path / "w", model=build(spec), model_spec=spec, tokenizer=tok, family=Family.AR,
                          seq_len=16, extra={"data": {"mode": "wrap"}})
    assert DlmLM(str(wrap), device="cpu").max_length == 15
