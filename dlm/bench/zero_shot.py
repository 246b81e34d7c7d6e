"""``dlm-bench zero_shot``: WikiText-2 and LAMBADA-style zero-shot scores through the lm-eval adapter,
beside ``dlm-eval-ppl``'s figure for the same documents.

One run (``make bench-zero-shot``):

1. **Data** (offline, under ``work_dir``): the first ``num_docs`` articles of the WikiText-2 test split
   (``wikitext``: the tokenized ``wiki.test.tokens`` form; split at its top-level `` = Title = ``
   headings, each article passed through dlm's WikiText detokenizer) as a JSONL ``{"text": ...}``, and
   a LAMBADA-format JSONL: ``lambada`` when given (the OpenAI ``lambada_test.jsonl``), else a stand-in
   of the same format cut from the WikiText-2 test paragraphs (the last ``lambada_words`` words of each
   paragraph of at least that many; the target is its last word). Two lm-eval task YAMLs name them
   (``dlm_zs_wikitext``: ``loglikelihood_rolling`` with word / byte perplexity and bits per byte, as
   lm-eval's ``wikitext``; ``dlm_zs_lambada``: ``loglikelihood`` with perplexity and accuracy, as
   ``lambada_openai``).
2. **Models**: every ``models`` entry (default the demo RADD and AR models) through ``DlmLM`` and
   ``lm_eval.simple_evaluate``; and an HF causal LM (``hf_model``; default a random-init Llama with the
   GPT-2 tokenizer written here, because no pretrained checkpoint is on an offline machine) converted
   with ``dlm-convert`` and scored by the adapter, beside lm-eval's own HF backend on the original.
3. **Agreement**: per model the adapter's rolling NLL (per token and in total over the documents, with its
   Monte Carlo standard error for a diffusion bound) beside ``dlm-eval-ppl``'s on the same JSONL. The
   adapter's rows (its defaults) are the text slots of the training rows, ``[BOS]`` + L - 2 tokens;
   dlm-eval-ppl's wrap rows ``[BOS] piece [EOS]`` also score the ``[EOS]`` slot (and, for a diffusion
   model, ``[BOS]``), which such a model predicts almost for free. So the totals are compared (both hold
   every text token once): the difference in per cent and in combined standard errors. Token-for-token
   equality on identical rows is ``tests/unit/test_harness.py``'s. For the HF pair the adapter must
   equal lm-eval's HF backend per document (``max_rel_delta_per_doc``).

Every row records the command's settings, the seconds, and the provenance of the result file.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import torch

from dlm.data.detokenizers import wt_detokenizer
from dlm.errors import ConfigError
from dlm.io.atomic import write_json_atomic, write_text_atomic
from dlm.io.provenance import provenance

WIKITEXT_TASK = "dlm_zs_wikitext"
LAMBADA_TASK = "dlm_zs_lambada"
HEADING = re.compile(r"^ = [^=].* = $")  # a top-level WikiText heading; " = = Section = = " is not one


def wikitext_articles(path: Path) -> list[str]:
    """The articles of a ``wiki.*.tokens`` file, each from its top-level heading to the next, detokenized."""
    articles: list[list[str]] = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if HEADING.match(line) or not articles:
            articles.append([])
        articles[-1].append(line)
    texts = [wt_detokenizer("\n".join(lines)).strip() for lines in articles]
    return [t for t in texts if t]


def lambada_standin(path: Path, *, words: int, limit: int) -> list[str]:
    """LAMBADA-format passages from a ``wiki.*.tokens`` file: the last ``words`` words of each paragraph of at
    least that many (headings skipped), detokenized, with the closing full stop dropped so the target (the
    last word) is a word."""
    out: list[str] = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip() or line.strip().startswith("="):
            continue
        text = wt_detokenizer(line).strip().rstrip(".").rstrip()
        parts = text.split(" ")
        if len(parts) >= words and parts[-1].isalpha():
            out.append(" ".join(parts[-words:]))
        if len(out) == limit:
            break
    return out


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    """Write the texts unless the file already holds them (a rewrite would change its mtime, and the
    eval-ppl result beside it would then belong to other data)."""
    body = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    if not path.is_file() or path.read_text(encoding="utf-8") != body:
        write_text_atomic(path, body)
    return path


def _task_yamls(root: Path, wikitext: Path, lambada: Path) -> None:
    """The two local lm-eval tasks (data files by absolute path, so any working directory works)."""
    metrics_rolling = "".join(f"  - metric: {m}\n    aggregation: {a}\n    higher_is_better: false\n" for m, a in (
        ("word_perplexity", "weighted_perplexity"), ("byte_perplexity", "weighted_perplexity"),
        ("bits_per_byte", "bits_per_byte")))
    write_text_atomic(root / f"{WIKITEXT_TASK}.yaml", (
        f"task: {WIKITEXT_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {wikitext}\n"
        "output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        f"metric_list:\n{metrics_rolling}metadata:\n  version: 1.0\n"))
    write_text_atomic(root / f"{LAMBADA_TASK}.yaml", (
        f"task: {LAMBADA_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {lambada}\n"
        "output_type: loglikelihood\ntest_split: test\n"
        "doc_to_text: \"{{text.split(' ')[:-1]|join(' ')}}\"\ndoc_to_target: \"{{' '+text.split(' ')[-1]}}\"\n"
        "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1.0\n"))


def reference_hf_model(root: Path, tokenizer_dir: Path, *, context: int, seed: int) -> Path:
    """A random-init Llama (2 layers, width 64) with the GPT-2 BPE from ``tokenizer_dir``, saved with
    ``save_pretrained``: the stand-in for a pretrained HF causal LM on a machine without the Hub."""
    import transformers

    from dlm.data.tokenizers.hf import bpe_tokenizer_from_files

    if (root / "config.json").is_file():
        return root
    for name in ("vocab.json", "merges.txt"):
        if not (tokenizer_dir / name).is_file():
            raise ConfigError(f"hf_tokenizer={tokenizer_dir}: no {name}; point it at a folder with the GPT-2 "
                              "vocab.json and merges.txt (../shared/data/tokenizers/gpt2) or pass hf_model=<HF dir>")
    tok = bpe_tokenizer_from_files(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"))
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                   tie_word_embeddings=False)
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(cfg).save_pretrained(root)
    tok.save_pretrained(root)
    return root


def _evaluate(lm: Any, task_manager: Any, *, limit: int | None = None) -> tuple[dict, dict]:
    """lm-eval's metrics for both tasks and the per-document rolling log-likelihoods."""
    import datasets
    import lm_eval

    datasets.disable_progress_bars()
    out = lm_eval.simple_evaluate(model=lm, tasks=[WIKITEXT_TASK, LAMBADA_TASK], task_manager=task_manager,
                                  log_samples=True, limit=limit, verbosity="ERROR", bootstrap_iters=0)
    res = out["results"]
    n = len(out["samples"][LAMBADA_TASK])
    acc = res[LAMBADA_TASK]["acc,none"]
    metrics = {
        "word_perplexity": res[WIKITEXT_TASK]["word_perplexity,none"],
        "byte_perplexity": res[WIKITEXT_TASK]["byte_perplexity,none"],
        "bits_per_byte": res[WIKITEXT_TASK]["bits_per_byte,none"],
        "lambada_ppl": res[LAMBADA_TASK]["perplexity,none"],
        "lambada_acc": res[LAMBADA_TASK]["acc,none"],
        "lambada_acc_stderr": math.sqrt(acc * (1 - acc) / (n - 1)) if n > 1 else None,  # lm-eval's mean_stderr
        "lambada_items": n,
    }
    per_doc = {int(s["doc_id"]): float(s["filtered_resps"][0]) for s in out["samples"][WIKITEXT_TASK]}
    return metrics, per_doc


def _eval_ppl(model_dir: Path, data: Path, *, seq_len: int, num_samples: int, seed: int, out: Path) -> dict:
    from dlm.eval.model_dir import eval_ppl_model_dir

    rec = eval_ppl_model_dir(model_dir, dataset=str(data), source=str(data), split="test", seq_len=seq_len,
                             mode="wrap", num_samples=num_samples, seed=seed, device="cpu", batch_size=8,
                             out=out, cache_dir=out.parent / "cache")
    return {"nll": rec["nll"], "nll_stderr": rec["nll_stderr"], "tokens": rec["tokens"], "ppl": rec["ppl"]}


def bench_zero_shot(*, models: dict[str, str], hf_model: str | None = None, hf_tokenizer: str = "../shared/data/tokenizers/gpt2",
                    wikitext: str = "../shared/data/eval/wikitext2/test.txt", lambada: str | None = None,
                    num_docs: int = 4, lambada_words: int = 40, num_lambada: int = 200, mc_samples: int = 8,
                    batch_size: int = 8, seed: int = 0, threads: int = 2, work_dir: str = "runs/bench_zero_shot",
                    out: str = "benchmarks/results/zero_shot.json") -> dict:
    """Run the benchmark (module docstring); write ``out`` and return its record.

    models: name -> dlm model directory (AR or masked diffusion); hf_model: an HF causal-LM directory
    (null: the random-init reference built in ``work_dir``); wikitext: a ``wiki.*.tokens`` file;
    lambada: a LAMBADA JSONL (``{"text": ...}`` per line; null: the WikiText-2 stand-in).
    """
    from lm_eval.tasks import TaskManager

    from dlm.eval.harness import DlmLM
    from dlm.io.hf_dir import hf_to_dlm
    from dlm.io.model_dir import read_record

    wiki_path = Path(wikitext)
    if not wiki_path.is_file():
        raise ConfigError(f"wikitext={wikitext}: no such file; point it at WikiText-2's wiki.test.tokens "
                          "(../shared/data/eval/wikitext2/test.txt beside the checkout)")
    if lambada is not None and not Path(lambada).is_file():
        raise ConfigError(f"lambada={lambada}: no such file; pass the OpenAI lambada_test.jsonl or lambada=null "
                          "for the WikiText-2 stand-in")
    for name, path in models.items():
        if not (Path(path) / "model.json").is_file():
            raise ConfigError(f"models.{name}={path}: not a dlm model directory (no model.json); train it first "
                              "(make demo) or point at another")
    torch.set_num_threads(threads)
    root = Path(work_dir)
    root.mkdir(parents=True, exist_ok=True)
    docs = wikitext_articles(wiki_path)[:num_docs]
    wiki_jsonl = _write_jsonl(root / "wikitext2_docs.jsonl", docs)
    if lambada is None:
        lambada_jsonl = _write_jsonl(root / "lambada_standin.jsonl",
                                     lambada_standin(wiki_path, words=lambada_words, limit=num_lambada))
    else:
        lambada_jsonl = Path(lambada).resolve()
    _task_yamls(root, wiki_jsonl.resolve(), lambada_jsonl)
    tasks = TaskManager(include_path=str(root))

    rows: list[dict[str, Any]] = []
    for name, path in models.items():
        seq_len = int(read_record(path)[0].seq_len)
        rows.append(_dlm_row(name, Path(path), DlmLM, tasks, docs, wiki_jsonl, seq_len=seq_len, mc_samples=mc_samples,
                             batch_size=batch_size, seed=seed, root=root))
    hf_src = Path(hf_model) if hf_model else reference_hf_model(root / "hf_reference", Path(hf_tokenizer),
                                                                 context=128, seed=seed)
    hf_dlm = root / f"hf_converted-{_path_digest(hf_src)}"  # one conversion per source: never another's weights
    if not (hf_dlm / "model.json").is_file():
        hf_to_dlm(hf_src, hf_dlm)
    hf_record = read_record(hf_dlm)[0]
    seq_len = int(hf_record.seq_len or hf_record.model_spec["max_seq_len"])  # a converted model: its context
    row = _dlm_row("hf_converted", hf_dlm, DlmLM, tasks, docs, wiki_jsonl, seq_len=seq_len, mc_samples=mc_samples,
                   batch_size=batch_size, seed=seed, root=root, add_bos_token=False)
    row.update(_hf_backend(hf_src, tasks, seq_len=row["max_length"], batch_size=batch_size, ours=row.pop("_per_doc")))
    hf_parity = bool(row["hf_parity_met"])
    row["hf_model"] = str(hf_src) + ("" if hf_model else " (random-init Llama, GPT-2 tokenizer)")
    rows.append(row)
    for r in rows:
        r.pop("_per_doc", None)

    record = {
        "benchmark": "zero_shot", "rows": rows,
        "data": {"wikitext": str(wiki_path), "articles": len(docs), "characters": sum(map(len, docs)),
                 "lambada": str(lambada) if lambada else f"WikiText-2 stand-in ({num_lambada} passages of "
                                                        f"{lambada_words} words)",
                 "lambada_items": sum(1 for _ in lambada_jsonl.open())},
        "target_agreement": "the adapter's total NLL of the documents within 1 % of dlm-eval-ppl's, every model",
        "agreement_met": all(abs(r["total_delta_pct"]) <= 1.0 for r in rows),
        "target_hf_parity": "the adapter on the converted HF model = lm-eval's HF backend on the original, per "
                            "document (relative 1e-6)",
        "hf_parity_met": hf_parity,
        "settings": {"mc_samples": mc_samples, "batch_size": batch_size, "seed": seed, "threads": threads},
        "provenance": provenance(seed=seed, settings={"mc_samples": mc_samples, "num_docs": num_docs}),
    }
    write_json_atomic(Path(out), record)
    return {"out": out, "rows": [{k: r[k] for k in ("model", "nll_adapter", "nll_eval_ppl", "total_delta_pct")}
                                 for r in rows]}


def _path_digest(path: Path) -> str:
    """10 hex digits naming a model by its resolved path (work files of two models never share a name)."""
    return hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:10]


def _dlm_row(name: str, path: Path, lm_cls: Any, tasks: Any, docs: list[str], wiki_jsonl: Path, *, seq_len: int,
             mc_samples: int, batch_size: int, seed: int, root: Path, add_bos_token: bool = True) -> dict[str, Any]:
    t0 = time.perf_counter()
    lm = lm_cls(str(path), mc_samples=mc_samples, batch_size=batch_size, seed=seed, device="cpu",
                add_bos_token=add_bos_token)  # the adapter's default row length: what a user gets
    metrics, per_doc = _evaluate(lm, tasks)
    scores = lm.rolling_scores(docs)  # the same per-request seeds as lm-eval's requests: the same numbers
    tokens = sum(s.tokens for s in scores)
    nll, stderr = sum(s.nll for s in scores) / tokens, math.sqrt(sum(s.variance for s in scores)) / tokens
    ref = _eval_ppl(path, wiki_jsonl, seq_len=seq_len, num_samples=mc_samples, seed=seed,
                    out=root / "eval_ppl" / f"{name}-{_path_digest(path)}.json")
    # totals over the documents: both score every text token once; dlm-eval-ppl also scores its rows' [EOS]
    # (and, for a diffusion model, [BOS]) slots, which a model trained on such rows predicts almost for free
    total, ref_total = nll * tokens, ref["nll"] * ref["tokens"]
    se = math.hypot(stderr * tokens, ref["nll_stderr"] * ref["tokens"])
    row: dict[str, Any] = {  # the headline columns first (the benchmarks page shows the first ten)
        "model": name, "family": lm.loaded.family.kind, "nll_adapter": nll, "nll_eval_ppl": ref["nll"],
        "total_nll_adapter": total, "total_nll_eval_ppl": ref_total,
        "total_delta_pct": 100 * (total - ref_total) / ref_total,
        "total_delta_se": (total - ref_total) / se if se > 0 else None, **metrics,
        "nll_adapter_stderr": stderr,
        "nll_eval_ppl_stderr": ref["nll_stderr"], "tokens_adapter": tokens, "tokens_eval_ppl": ref["tokens"],
        "lm_eval_equals_direct": all(abs(per_doc[i] + s.nll) < 1e-6 for i, s in enumerate(scores)),
        "path": str(path), "seq_len": seq_len, "max_length": lm.max_length, "_per_doc": per_doc}
    row["seconds"] = time.perf_counter() - t0
    return row


def _hf_backend(hf_src: Path, tasks: Any, *, seq_len: int, batch_size: int, ours: dict[int, float]) -> dict[str, Any]:
    """lm-eval's own HF backend on the original weights: its metrics and the largest per-document difference
    from the adapter on the converted model (HF's max_length counts model inputs: one less than dlm's row)."""
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=str(hf_src), device="cpu", batch_size=batch_size, dtype="float32", max_length=seq_len - 1)
    metrics, theirs = _evaluate(hf, tasks)
    rel = max(abs(ours[i] - theirs[i]) / max(abs(theirs[i]), 1e-12) for i in theirs)
    return {"max_rel_delta_per_doc": rel, "hf_parity_met": rel < 1e-6,
            **{f"hf_backend_{k}": v for k, v in metrics.items()}}
