"""Generative perplexity and diversity of a samples file (what dlm-eval-gen runs).

Reads the JSONL written by ``dlm.eval.sample_job.sample_to_jsonl`` (field ``text``; other fields
are ignored), scores every text under a judge AR model and measures diversity on the judge's
tokenisation of the same texts, so entropy and distinct-n are comparable across models with
different tokenizers (DUO / FHS report entropy this way, on GPT-2 tokens).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from dlm.errors import ConfigError
from dlm.eval.diversity import distinct_n, mean_entropy
from dlm.eval.gen_ppl import generative_perplexity_of_ids, load_judge
from dlm.eval.result_files import check_result_path
from dlm.io.atomic import write_json_atomic
from dlm.io.provenance import provenance


def read_sample_texts(path: str | Path) -> list[str]:
    """The ``text`` field of every line of a samples JSONL file; refuses a missing or empty file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"samples={path} does not exist; write one with dlm-sample (out=<file>.jsonl)")
    texts = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"samples={path} line {n} is not JSON ({e}); expected dlm-sample output") from e
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise ConfigError(f"samples={path} line {n} has no string field 'text'; expected dlm-sample output")
            texts.append(rec["text"])
    if not texts:
        raise ConfigError(f"samples={path} is empty: no sample to evaluate")
    return texts


def eval_gen_file(
    samples: str | Path,
    judge: str | Path,
    *,
    batch_size: int = 8,
    max_len: int | None = None,
    device: str = "auto",
    out: str | Path | None = None,
) -> dict:
    """gen_ppl under ``judge`` plus entropy and distinct-1/2/3; writes and returns the JSON record.

    Record: gen_ppl, nll, tokens (scored judge tokens), entropy (mean per-sample unigram entropy,
    nats), entropy_tokens ("judge": entropy and distinct-n are computed on the judge's token ids),
    distinct_1/2/3, num_samples, samples, judge, max_len, seconds, provenance (``dlm.io.provenance``: the
    judge's fingerprint; the samples file's own model is in dlm-sample's summary), settings (what the
    numbers depend on: the samples file's content hash, the judge's fingerprint, max_len). Default ``out``:
    ``<samples stem>.gen_eval.json`` next to the samples file. An existing ``out`` is replaced only by a
    result of the same settings (``dlm.eval.result_files``); anything else is refused before scoring.
    """
    start = time.perf_counter()
    samples = Path(samples)
    texts = read_sample_texts(samples)
    scorer = load_judge(judge, device=device)
    record = provenance(seed=None, settings={"batch_size": batch_size, "max_len": max_len, "judge": str(judge)},
                        model=scorer.model)
    settings = {"samples_sha1": hashlib.sha1(samples.read_bytes()).hexdigest(),
                "judge_fingerprint": record["model_fingerprint"], "max_len": max_len}
    path = Path(out) if out else samples.with_name(f"{samples.stem}.gen_eval.json")
    check_result_path(path, settings)
    ids = [scorer.encode(t) for t in texts]
    result = {
        **generative_perplexity_of_ids(ids, scorer, batch_size=batch_size, max_len=max_len),
        "entropy": mean_entropy(ids),
        "entropy_tokens": "judge",
        **{f"distinct_{n}": distinct_n(ids, n) for n in (1, 2, 3)},
        "num_samples": len(texts),
        "samples": str(samples),
        "judge": str(judge),
        "max_len": max_len,
        "seconds": time.perf_counter() - start,
        "provenance": record,
        "settings": settings,
    }
    write_json_atomic(path, result)
    return {**result, "out": str(path)}
