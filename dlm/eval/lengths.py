"""Perplexity of one model at several row lengths in one run (``dlm-eval-ppl ... lengths=[512,1024,2048]``).

Same documents at every length. The data arguments (corpus, split, ``mode``, ``max_tokens``, detokenizer)
are identical for every length; only the row length L changes how the one token stream is cut:

- ``mode=wrap`` (chunked): the split's documents are tokenised and concatenated, an EOS after each,
  and the stream is cut into consecutive pieces of L - 2 tokens, each row ``[BOS] piece [EOS]``; the
  tail shorter than a piece is dropped. ``max_tokens=T`` keeps the first ceil(T / L) rows, so every
  length scores the same first ~T tokens of the stream, cut coarser as L grows.
- ``mode=pad`` (truncated): one row per document at every length, ``[BOS]`` + the document's first
  L - 2 tokens + ``[EOS]``, padded: the same documents from their start, longer lengths seeing more of
  each. ``max_tokens`` would keep ceil(T / L) documents, different ones per length, so it is refused
  here.
- ``mode=pack``: as wrap without the BOS/EOS frame (plain chunks of L tokens).

The model is loaded once, with the ``rope_scaling`` / ``max_seq_len`` overrides in effect at every
length (recorded in every line), and each length is scored exactly as a run of that ``seq_len`` alone
would score it (its own generator seeded with ``seed``; the same file name), so a length of this run
and a separate run agree to the last digit. Every length is checked (context, result file, rows)
before any is scored: a length beyond the model's context without an override is refused with the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dlm.errors import ConfigError
from dlm.eval.model_dir import plan_length, prepare_ppl_job, run_length
from dlm.eval.result_files import check_result_path, result_name
from dlm.io.atomic import write_json_atomic
from dlm.io.provenance import provenance

SUMMARY_KEYS = ("seq_len", "nll", "nll_stderr", "ppl", "tokens", "sequences", "seconds", "out")


def check_lengths(lengths: Sequence[int], max_seq_len: int | None, *, key: str) -> list[int]:
    """``lengths`` as a list, refused before any compute when empty, non-positive, repeated or beyond the
    model's context (the message names ``key`` and both ways to go past the context)."""
    lengths = list(lengths)
    if not lengths:
        raise ConfigError(f"{key}=[] is empty; give at least one row length, e.g. {key}=[128,256]")
    for n in lengths:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{key}={lengths}: every length must be a positive integer (tokens per row)")
    if len(set(lengths)) != len(lengths):
        raise ConfigError(f"{key}={lengths} repeats a length; list each once")
    too_long = [n for n in lengths if max_seq_len is not None and n > max_seq_len]
    if too_long:
        n = max(too_long)
        raise ConfigError(f"{key}={lengths}: {n} exceeds the model's context model.max_seq_len={max_seq_len}; "
                          f"extend it with NTK RoPE scaling (rope_scaling=ntk_auto:{n}) or evaluate past it without "
                          f"scaling (max_seq_len={n}), or drop the longer lengths")
    return lengths


def length_out(out: str | Path | None, seq_len: int) -> Path | None:
    """Where one length's record goes when ``out`` names the summary: ``<stem>-len<L>.json`` beside it."""
    return None if out is None else Path(out).with_name(f"{Path(out).stem}-len{seq_len}.json")


def eval_ppl_lengths(model_dir: str | Path, *, lengths: Sequence[int], out: str | Path | None = None,
                     report: Callable[[dict], None] | None = None, **job_kwargs: Any) -> dict:
    """Perplexity at every row length of ``lengths`` (module docstring); ``job_kwargs`` are
    ``eval_ppl_model_dir``'s (``dataset``, ``source``, ``split``, ``mode``, ..., ``rope_scaling``,
    ``max_seq_len``). ``report(record)`` receives each length's record as soon as it is written.

    Each length's record is the file a ``seq_len=L`` run writes (default name: its settings digest, so
    lengths never overwrite each other; with ``out``: ``<out stem>-len<L>.json``). The summary (one line
    per length: nll, stderr, ppl, tokens, its file) is written to ``out`` or to
    ``<model_dir>/eval/<data stem>-<split>-lengths-<digest>.json`` and returned.
    """
    if job_kwargs.get("mode") == "pad" and job_kwargs.get("max_tokens") is not None:
        raise ConfigError("lengths= with mode=pad truncates every document to each length; max_tokens would keep "
                          "ceil(max_tokens / L) documents, different ones per length: leave max_tokens unset")
    check_lengths(lengths, None, key="lengths")  # the list itself, before the model is loaded
    job = prepare_ppl_job(model_dir, **job_kwargs)
    lengths = check_lengths(lengths, job.loaded.model.max_seq_len, key="lengths")
    plans = [plan_length(job, n, length_out(out, n), key="lengths") for n in lengths]  # all checked first
    settings = {"lengths": lengths, "per_length": [p.settings for p in plans]}
    d = job.data
    path = Path(out) if out else (Path(job.loaded.path) / "eval" /
                                  result_name(f"{Path(str(d['dataset'])).stem}-{d['split']}", "lengths", settings))
    check_result_path(path, settings, key="out")
    rows = []
    for plan in plans:
        record = run_length(job, plan)
        if report is not None:
            report(record)
        rows.append({k: record[k] for k in SUMMARY_KEYS})
    summary = {"dataset": d["dataset"], "split": d["split"], "model": str(model_dir), "lengths": lengths,
               "mode": d["mode"], "context": job.context, "overrides": plans[0].settings["overrides"],
               "results": rows, **job.scorer.summary(), "settings": settings,
               "provenance": provenance(seed=job.seed if job.scorer.stochastic else None, settings=settings,
                                        model=job.loaded.model, source=job.loaded.path)}
    write_json_atomic(path, summary)
    return {**summary, "out": str(path)}
