"""lm-evaluation-harness model ``dlm``: a dlm model directory answering lm-eval's three request types.

    lm_eval.simple_evaluate(model=DlmLM("runs/radd/model", mc_samples=32), tasks=[...])
    dlm-lm-eval --model dlm --model_args model=<dir>,mc_samples=32 --tasks <t> --include_path <dir>

* ``loglikelihood(context, continuation)``: tokenised as lm-eval's causal models do (``TemplateLM``:
  trailing spaces of the context move to the continuation; an empty context becomes the prefix token,
  BOS else EOS), optionally after a BOS (``add_bos_token``); then scored by the family
  (``SPAN_SCORERS``): AR exactly (``dlm.eval.conditional``); masked diffusion by the conditional NELBO
  (context never masked; number-of-masks form, ``mc_samples`` stratified draws, ``method`` mc | quadrature)
  with ``is_greedy`` from a greedy any-order decode; block diffusion by the block NELBO of the continuation
  (``dlm.eval.block_conditional``: the model's own block size, blocks counted from the row's first token,
  the context held clean) with ``is_greedy`` from greedy block decoding. The returned log-likelihood of a
  diffusion model is minus an upper bound of the NLL: a lower bound of the true value.
* ``loglikelihood_rolling(text)``: [prefix] + tokens cut into lm-eval's disjoint windows of the row
  length L = ``max_length`` (``get_rolling_token_windows(max_seq_len=L-1, context_len=1)``): each
  window is one row of <= L tokens, its scored tokens preceded by the ones before them; every token is
  scored exactly once. With ``add_bos_token`` (the default) every row starts with BOS, as dlm's training
  rows do (a later window's context gives its oldest token up to BOS): a full window is [BOS] + L - 1
  scored tokens, the ``keep_first_token`` row of dlm-eval-ppl, and the last one conditions on as many
  tokens as fit. Without it the rows are lm-eval's own (a full window conditions on the previous token),
  scored as HF lm-eval scores ``max_length=L-1``. A block model's full window is the row dlm-eval-ppl's
  block bound scores (``block_nelbo_per_sequence``).
* ``generate_until(context, gen_kwargs)``: one call of the dlm sampler per request on a canvas of
  prompt + ``max_gen_toks`` tokens (default greedy: AR top-1, masked confidence max_prob, block
  ``BlockSampler`` max_prob); the text is cut at EOS, then at the first ``until`` string.
* Deterministic: each request's draws come from its own generator, seeded from (``seed``, the request's
  token ids or text); rows are batched only with rows of the same length. So a number depends on the
  request alone: not on the batch size, the other requests, their order, or the device for the draws.
* Recorded (``get_model_info``, in lm-eval's results ``config``): the model and its fingerprint, the
  estimator settings, the sampler, and per request type how many requests, scored tokens, empty
  continuations and left-truncated contexts (task, doc id, tokens dropped).

Other model directories (classifier, block policy, energy) do not model text and are refused (``ConfigError``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, get_args

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from dlm.data.token_cache import EOS_SLOT
from dlm.errors import ConfigError
from dlm.eval.block_conditional import block_span_scores
from dlm.eval.conditional import Span, SpanScore, ar_span_scores, masked_span_scores
from dlm.eval.model_dir import check_count, pick_device
from dlm.eval.strata import Method
from dlm.io.model_dir import LoadedModel, load_model_dir, read_record
from dlm.io.provenance import provenance
from dlm.io.record import Family
from dlm.io.spec import build
from dlm.samplers.autoregressive import AutoregressiveSampler
from dlm.samplers.block import BlockSampler
from dlm.samplers.confidence import ConfidenceSampler
from dlm.types import Sampler

log = logging.getLogger(__name__)
PROBE = "The quick brown fox, 42 jumps.\n"  # any text task holds such characters
SamplerBuilder = Callable[[str, dict, Any], Sampler]  # (name, keys, the model's schedule) -> sampler
# the greedy sampler of each family ``generate_until`` uses unless told otherwise; sampler.<key> settings win
DEFAULT_SAMPLERS: dict[Family, Callable[..., Sampler]] = {
    Family.AR: lambda **keys: AutoregressiveSampler(**{"top_k": 1, **keys}),
    Family.MASKED: lambda **keys: ConfidenceSampler(**{"order": "max_prob", "temperature": 0.0, **keys}),
    Family.BLOCK: lambda **keys: BlockSampler(**{"order": "max_prob", "temperature": 0.0, **keys}),
}


@dataclass(frozen=True)
class RollingScore:
    """One document's rolling score: nll (sum over its tokens), the Monte Carlo variance of that sum
    (0 when exact), tokens scored (= its token count) and windows used."""

    nll: float
    variance: float
    tokens: int
    windows: int


def request_seed(seed: int, kind: str, *parts: Any) -> int:
    """A 63-bit seed of (seed, request type, the request's content): the same request draws the same
    numbers wherever it appears."""
    digest = hashlib.sha256(json.dumps([seed, kind, *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def check_tasks(tasks: list[str], include_path: str | None = None, task_manager: Any = None) -> None:
    """Refuse task names lm-eval does not know (built in, or under ``include_path``), naming the fix.
    ``task_manager``: an ``lm_eval.tasks.TaskManager`` already built (indexing the built-in tasks takes
    seconds)."""
    if task_manager is None:
        from lm_eval.tasks import TaskManager

        task_manager = TaskManager(include_path=include_path)
    missing = [t for t in tasks if not t.endswith(".yaml") and not task_manager.match_tasks([t])]
    if missing:
        raise unknown_tasks(missing, include_path)


def unknown_tasks(missing: list[str], include_path: str | None) -> ConfigError:
    """The refusal of task names lm-eval does not know."""
    where = f"built in or under --include_path {include_path}" if include_path else "built in"
    return ConfigError(f"--tasks {','.join(missing)}: no such lm-eval task ({where}); list them with "
                       "`lm-eval ls tasks`, or pass --include_path <dir of your task YAMLs>")


@register_model("dlm")
class DlmLM(TemplateLM):
    """lm-eval ``LM`` over a dlm model directory (module docstring).

    Args:
        model: model directory (or a ``LoadedModel``).
        mc_samples, method, t_min: the diffusion bound's Monte Carlo settings (unused by AR models).
        sampler: for ``generate_until``: a built sampler, a ``{"_target_": "dlm.samplers...."}`` spec, or a
            conf/sampler name (needs ``sampler_builder``, which dlm-lm-eval installs); ``sampler.<key>=v``
            keyword arguments set its keys. Default: greedy (AR: top_k=1; diffusion: confidence, max_prob;
            block: block decoding with the model's block size, max_prob, one token per call).
        batch_size: model rows per forward pass (a diffusion request gives ``mc_samples`` rows).
        seed: the root of every request's seed. device: "auto" | "cpu" | "cuda" | ...
        max_length: row length L in tokens (default: the training rows' length, model.json seq_len, less their
            [EOS] slot for wrap / pad rows; else the model's max_seq_len: a RoPE model is not trained past
            its rows); longer inputs are
            left-truncated (recorded). max_gen_toks: default generation budget (a task's gen_kwargs win).
        add_bos_token: prepend BOS to every context, and start every rolling window with it (dlm models are
            trained on rows that start with BOS); False: lm-eval's layout, as for an HF model.
        greedy_check: run the greedy decode behind ``is_greedy`` for diffusion models (costs one network
            call per continuation token); False reports is_greedy=False.
        rope_scaling, max_seq_len, dtype: load overrides (``dlm.load``).
    """

    sampler_builder: ClassVar[SamplerBuilder | None] = None

    def __init__(self, model: str | Path | LoadedModel, *, mc_samples: int = 32, method: Method = "mc",
                 t_min: float = 1e-3, sampler: Sampler | dict | str | None = None, batch_size: int | str = 8,
                 seed: int = 0, device: str = "auto", max_length: int | None = None, max_gen_toks: int = 256,
                 add_bos_token: bool = True, greedy_check: bool = True, rope_scaling: Any = None,
                 max_seq_len: int | None = None, dtype: str | None = None, max_batch_size: int | None = None,
                 **sampler_keys: Any) -> None:
        super().__init__()
        bad = sorted(k for k in sampler_keys if not k.startswith("sampler."))
        if bad:
            raise ConfigError(f"model_args {', '.join(bad)}: unknown to --model dlm; valid: model, mc_samples, "
                              "method, t_min, sampler, sampler.<key>, batch_size, seed, device, max_length, "
                              "max_gen_toks, add_bos_token, greedy_check, rope_scaling, max_seq_len, dtype")
        if batch_size == "auto" or (isinstance(batch_size, str) and not batch_size.isdigit()):
            raise ConfigError(f"batch_size={batch_size!r}: dlm needs a number of rows per forward pass, e.g. 8")
        batch_size = int(batch_size)
        for key, value in (("mc_samples", mc_samples), ("batch_size", batch_size), ("max_gen_toks", max_gen_toks)):
            check_count(key, value)
        if method not in get_args(Method):
            raise ConfigError(f"method={method!r}; choose {' or '.join(get_args(Method))}")
        self._device = usable_device(device)
        family = model.family if isinstance(model, LoadedModel) else read_record(model)[0].family
        if family not in SPAN_SCORERS:  # before the weights are read
            raise ConfigError(f"model={model if not isinstance(model, LoadedModel) else model.path}: a {family.kind!r} "
                              "model directory, which does not model text; --model dlm scores "
                              f"{', '.join(repr(f.kind) for f in SPAN_SCORERS)} models: pass one of those")
        loaded = model if isinstance(model, LoadedModel) else load_model_dir(  # a LoadedModel is used as it is
            model, device=self._device, rope_scaling=rope_scaling, max_seq_len=max_seq_len, dtype=dtype)
        self.loaded, self.net, self.tok = loaded, loaded.model, loaded.tokenizer
        self.tokenizer = loaded.tokenizer
        check_text_tokenizer(self.tok, where=str(loaded.path))
        self.mc_samples, self.method, self.t_min = mc_samples, method, t_min
        self._batch_size, self.seed, self.add_bos_token = batch_size, int(seed), bool(add_bos_token)
        self.greedy_check, self.default_max_gen_toks = bool(greedy_check), max_gen_toks
        self._max_length = self._row_length(max_length)
        self.sampler = self._build_sampler(sampler, {k[len("sampler."):]: v for k, v in sampler_keys.items()})
        self.sampler.check_model(self.net)
        self.stats: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------- settings
    def _row_length(self, max_length: int | None) -> int:
        # default: the text slots of the rows the model was trained on (as dlm-eval-ppl's seq_len, less the
        # last position where wrap / pad rows always held [EOS]: text there scored 3 % worse), else its context
        trained = self.loaded.record.seq_len
        context = (trained - EOS_SLOT.get((self.loaded.meta.get("data") or {}).get("mode"), False) if trained
                   else self.net.max_seq_len)
        if max_length is None:
            if context is None:
                raise ConfigError(f"model={self.loaded.path} does not state its context; pass max_length=<tokens>")
            return int(context)
        check_count("max_length", max_length)
        if self.net.max_seq_len is not None and max_length > self.net.max_seq_len:
            raise ConfigError(f"max_length={max_length} exceeds the model's context max_seq_len={self.net.max_seq_len};"
                              f" lower max_length or extend the context (rope_scaling=ntk_auto:{max_length})")
        if max_length < 2:
            raise ConfigError(f"max_length={max_length}: a row needs a context token and a scored token (>= 2)")
        return max_length

    def _build_sampler(self, sampler: Sampler | dict | str | None, keys: dict) -> Sampler:
        try:
            return self._sampler_of(sampler, keys)
        except TypeError as e:  # a key the sampler's constructor does not take
            raise ConfigError(f"sampler: {e}; pass only keys of the sampler's constructor (sampler.<key>=...)") from e

    def _sampler_of(self, sampler: Sampler | dict | str | None, keys: dict) -> Sampler:
        if isinstance(sampler, str):
            if type(self).sampler_builder is None:
                raise ConfigError(f"sampler={sampler!r}: a conf/sampler name is resolved by dlm-lm-eval; from Python "
                                  "pass a sampler object or a {'_target_': 'dlm.samplers....'} spec")
            return type(self).sampler_builder(sampler, keys, self.loaded.schedule)
        if keys and not isinstance(sampler, dict) and sampler is not None:
            raise ConfigError(f"sampler.{next(iter(keys))}: keys apply to a sampler given by name or spec")
        if isinstance(sampler, dict):
            spec = {**sampler, **keys}
            if "schedule" in spec and spec["schedule"] is None:  # null: the schedule the model was trained with
                spec["schedule"] = self.loaded.schedule
            return build(spec)
        if sampler is None:
            return DEFAULT_SAMPLERS[self.loaded.family](**keys)
        return sampler

    # ---------------------------------------------------------------- TemplateLM / LM interface
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id if self.tok.eos_id is not None else self.tok.bos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return self.tok.name

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return list(self.tok.encode(string))

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) per request; an empty continuation is (0.0, True)."""
        new_reqs = []
        for context, continuation in (req.args for req in requests):
            if not continuation:
                ctx, cont = [], []
            elif not context:
                ctx, cont = [self.prefix_token_id], self.tok_encode(continuation)
            else:
                ctx, cont = self._encode_pair(context, continuation)
            new_reqs.append(((context, continuation), ctx, cont))
        return self._loglikelihood_tokens(new_reqs, instances=requests)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, instances=None) -> list[tuple[float, bool]]:
        spans, stats = [], self._stats("loglikelihood", len(requests))
        before = len(stats["truncated"])
        for k, (_, ctx, cont) in enumerate(requests):
            if self.add_bos_token and (not ctx or ctx[0] != self.prefix_token_id):
                ctx = [self.prefix_token_id, *ctx]
            if not cont:
                stats["empty_continuations"] += 1
            keep = self.max_length - len(cont)
            if keep < 1:
                raise ConfigError(f"a continuation of {len(cont)} tokens does not fit max_length={self.max_length} "
                                  "with one token of context; raise max_length (rope_scaling=ntk_auto:<n>) or score "
                                  "it with loglikelihood_rolling")
            if len(ctx) > keep:
                self._record_truncation(stats, instances[k] if instances else None, k, len(ctx) - keep)
                ctx = ctx[-keep:]
            spans.append(Span(tuple(ctx), tuple(cont), request_seed(self.seed, "loglikelihood", ctx, cont)))
        self._warn_truncated("loglikelihood", stats, before, len(requests))
        scores = self.score_spans(spans)
        stats["tokens"] += sum(s.tokens for s in scores)
        return [(0.0 - s.nll, s.is_greedy) for s in scores]  # 0.0 - : an empty continuation is 0.0, not -0.0

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(text) over disjoint windows (module docstring); the diffusion value is minus a bound."""
        scores = self.rolling_scores([req.args[0] for req in requests])
        stats = self._stats("loglikelihood_rolling", len(requests))
        stats["tokens"] += sum(s.tokens for s in scores)
        stats["windows"] = stats.get("windows", 0) + sum(s.windows for s in scores)
        return [-s.nll for s in scores]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """One sampler call per request (its own generator); text cut at EOS, then at the first ``until``."""
        stats, out = self._stats("generate_until", len(requests)), []
        before = len(stats["truncated"])
        for k, req in enumerate(requests):
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            budget = int(gen_kwargs.pop("max_gen_toks", self.default_max_gen_toks))
            ignored = sorted(gen_kwargs)  # do_sample, temperature, ...: the sampler's own settings decide
            if ignored:
                stats["ignored_gen_kwargs"] = sorted(set(stats.get("ignored_gen_kwargs", [])) | set(ignored))
            if budget >= self.max_length:
                raise ConfigError(f"max_gen_toks={budget} leaves no room for a prompt in max_length={self.max_length}; "
                                  "lower max_gen_toks in the task's generation_kwargs")
            ctx = self.tok_encode(context)
            if self.add_bos_token or not ctx:
                ctx = [self.prefix_token_id, *ctx]
            keep = self.max_length - budget
            if len(ctx) > keep:
                self._record_truncation(stats, req, k, len(ctx) - keep)
                ctx = ctx[-keep:]
            text, generated = self._generate(ctx, budget, until, request_seed(self.seed, "generate_until", context,
                                                                              sorted(until), budget))
            stats["tokens"] += generated
            out.append(text)
        self._warn_truncated("generate_until", stats, before, len(requests))
        return out

    # ---------------------------------------------------------------- scoring
    def score_spans(self, spans: list[Span], *, greedy: bool = True) -> list[SpanScore]:
        """Every span scored by the model's family (``SPAN_SCORERS``); ``greedy``: is_greedy is wanted (a
        diffusion model then also runs its greedy decode, when ``greedy_check``)."""
        return SPAN_SCORERS[self.loaded.family](self, spans, greedy and self.greedy_check)

    def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """(context, scored tokens) windows of [prefix] + tokens of ``text``: rows of <= max_length tokens,
        every token scored exactly once."""
        windows = get_rolling_token_windows(token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                                            max_seq_len=self.max_length - 1, context_len=1)
        windows = [make_disjoint_window(w) for w in windows]
        if not self.add_bos_token:  # lm-eval's layout, as its HF backend scores a model
            return windows
        # every row starts with BOS, as every training row of a dlm model does: a later window's context
        # gives its oldest token up to BOS (a full window is then [BOS] + L - 1 scored tokens, the
        # keep_first_token row dlm-eval-ppl scores). A causal model reads position 0 as an attention sink:
        # a row opening mid-text scores far worse than the same text after BOS.
        return [(ctx if i == 0 else [self.prefix_token_id, *ctx[1:]], cont) for i, (ctx, cont) in enumerate(windows)]

    def rolling_scores(self, texts: list[str]) -> list[RollingScore]:
        """The rolling score of every text, all windows of all texts scored together."""
        spans, owner = [], []
        for j, text in enumerate(texts):
            for w, (ctx, cont) in enumerate(self.rolling_windows(text)):
                spans.append(Span(tuple(ctx), tuple(cont), request_seed(self.seed, "rolling", text, w)))
                owner.append(j)
        scores = self.score_spans(spans, greedy=False) if spans else []  # perplexity: no is_greedy
        totals = [[0.0, 0.0, 0, 0] for _ in texts]
        for j, s in zip(owner, scores, strict=True):
            totals[j][0] += s.nll
            totals[j][1] += s.variance
            totals[j][2] += s.tokens
            totals[j][3] += 1
        return [RollingScore(nll=t[0], variance=t[1], tokens=t[2], windows=t[3]) for t in totals]

    def _generate(self, ctx: list[int], budget: int, until: list[str], seed: int) -> tuple[str, int]:
        """(the continuation's text, tokens generated before EOS) of one request."""
        generator = torch.Generator(device=self._device).manual_seed(seed)
        prompt = torch.tensor(ctx, dtype=torch.long, device=self._device)
        tokens = self.sampler(self.net, batch_size=1, length=len(ctx) + budget, prompt=prompt,
                              generator=generator).tokens[0, len(ctx):].tolist()
        if self.tok.eos_id is not None and self.tok.eos_id in tokens:
            tokens = tokens[: tokens.index(self.tok.eos_id)]
        text = self.tok.decode(tokens)
        for stop in until:
            if stop and stop in text:
                text = text[: text.index(stop)]
        return text, len(tokens)

    # ---------------------------------------------------------------- records
    def _stats(self, kind: str, requests: int) -> dict[str, Any]:
        stats = self.stats.setdefault(kind, {"requests": 0, "tokens": 0, "empty_continuations": 0, "truncated": []})
        stats["requests"] += requests
        return stats

    def _record_truncation(self, stats: dict, instance: Any, index: int, dropped: int) -> None:
        where = {"task": getattr(instance, "task_name", None), "doc_id": getattr(instance, "doc_id", None),
                 "request": index, "tokens_dropped": dropped}
        stats["truncated"].append(where)

    def _warn_truncated(self, kind: str, stats: dict, before: int, requests: int) -> None:
        """One warning per call for the contexts it left-truncated (each is listed in the results' config)."""
        cut = stats["truncated"][before:]
        if cut:
            log.warning("dlm: %d of %d %s contexts left-truncated to fit max_length=%d (up to %d tokens dropped); "
                        "each is listed under config.dlm.requests.%s.truncated in the results", len(cut), requests,
                        kind, self.max_length, max(c["tokens_dropped"] for c in cut), kind)

    def get_model_info(self) -> dict:
        """What lm-eval writes into its results' ``config``: everything a number here depends on."""
        record = self.loaded.record
        origin = provenance(seed=self.seed, settings=self.sampler, model=self.loaded.model, source=self.loaded.path)
        return {"dlm": {
            "dlm_version": origin["dlm_version"], "dlm_git_revision": origin["git_rev"], "model": str(self.loaded.path),
            "model_fingerprint": origin["model_fingerprint"], "tokenizer": self.tok.name,
            "tokenizer_fingerprint": self.tok.fingerprint(), "family": record.family.kind,
            "estimator": ("exact" if record.family is Family.AR else
                          {"method": "conditional_nelbo", "mc_samples": self.mc_samples, "estimator": self.method,
                           "t_min": self.t_min, **({"diffusion_block_size": self.net.block_size,
                                                    "shift_logits": self.net.shift_logits}
                                                   if record.family is Family.BLOCK else {})}),
            "ar_softmax": record.ar_softmax, "overrides": record.overrides, "seed": self.seed,
            "batch_size": self.batch_size, "max_length": self.max_length, "add_bos_token": self.add_bos_token,
            "device": str(self._device), "sampler": origin["settings"], "requests": self.stats,
            "provenance": origin,
        }}


def ar_scores(lm: DlmLM, spans: list[Span], greedy: bool) -> list[SpanScore]:
    """AR: exact (is_greedy is a by-product, ``greedy`` is not needed)."""
    return ar_span_scores(lm.net, spans, ar_softmax=lm.loaded.record.ar_softmax, batch_size=lm.batch_size)


def masked_scores(lm: DlmLM, spans: list[Span], greedy: bool) -> list[SpanScore]:
    """Masked diffusion: the conditional NELBO; ``greedy``: run the greedy any-order decode."""
    return masked_span_scores(lm.net, spans, num_samples=lm.mc_samples, method=lm.method, schedule=lm.loaded.schedule,
                              t_min=lm.t_min, batch_size=lm.batch_size, greedy=greedy)


def block_scores(lm: DlmLM, spans: list[Span], greedy: bool) -> list[SpanScore]:
    """Block diffusion: the block NELBO of the continuation; ``greedy``: run greedy block decoding."""
    return block_span_scores(lm.net, spans, num_samples=lm.mc_samples, method=lm.method, schedule=lm.loaded.schedule,
                             t_min=lm.t_min, batch_size=lm.batch_size, greedy=greedy)


# how each family of model directory scores spans: one entry per family, no branching (dlm.eval.scorers' twin)
SPAN_SCORERS: dict[Family, Callable[[DlmLM, list[Span], bool], list[SpanScore]]] = {
    Family.AR: ar_scores, Family.MASKED: masked_scores, Family.BLOCK: block_scores,
}


def usable_device(device: str | None) -> str:
    """``device`` ("auto": CUDA when available); a CUDA device on a machine without CUDA falls back to the CPU
    with a warning, as lm-eval's HF backend does (lm-eval's command line passes cuda:0 unless told)."""
    device = pick_device(device or "auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("dlm: device=%s but CUDA is not available; running on the CPU (pass --device cpu)", device)
        return "cpu"
    return device


def check_text_tokenizer(tok: Any, *, where: str) -> None:
    """lm-eval hands the model arbitrary text and needs a token to condition an empty context on."""
    if tok.bos_id is None and tok.eos_id is None:
        raise ConfigError(f"model={where}: tokenizer {tok.name} has neither BOS nor EOS, and lm-eval needs one to "
                          "condition an empty context on; re-export the model with a tokenizer that has one")
    try:
        tok.encode(PROBE)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"model={where}: tokenizer {tok.name} cannot encode text ({e}); lm-eval tasks are natural "
                          "language: evaluate a model with a text tokenizer") from e


