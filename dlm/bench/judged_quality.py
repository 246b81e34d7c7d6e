"""Sample quality under an independent AR judge, shared by the quality benchmarks (``dlm-bench edlm``,
``dlm-bench lsd``).

* ``judge_corpus`` / ``independent_judge``: the judge is a demo-sized AR model trained by the benchmark
  itself (seed 1, odd-numbered pydoc topics only), so it is neither the demo AR model (EDLM's energy)
  nor trained on the denoiser's exact corpus; it is trained once per ``work_dir`` and reused.
* ``train``: one ``dlm-train`` run in a subprocess (Lightning owns the process), skipped when its
  product already exists.
* ``sample_nlls`` / ``gen_ppl_with_se``: pooled gen-PPL over samples with its standard error (ratio
  estimator, delta method), and ``paired_log_ratio_se``: the standard error of the difference of two
  log gen-PPLs measured on paired samples (the same seed: common random numbers).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dlm.eval.diversity import mean_entropy
from dlm.eval.gen_ppl import Judge, generative_perplexity_of_ids, scored_sequences


def judge_corpus(path: Path) -> Path:
    """The judge's training documents: odd-numbered pydoc topics (the denoiser and energies train on all
    topics but every 20th), written as JSONL."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    with path.open("w") as f:
        for i, k in enumerate(keys):
            if i % 2 == 1:
                f.write(json.dumps({"text": topics[k]}) + "\n")
    return path


def train(args: list[str], run_dir: Path, *, product: str = "model", marker: str = "model.json") -> Path:
    """Run ``dlm-train`` (a subprocess: Lightning owns the process) and return ``run_dir/product``; skipped
    when ``run_dir/product/marker`` exists (a model directory by default; ``product="schedule",
    marker="schedule.json"`` for an LSD run)."""
    if not (run_dir / product / marker).is_file():
        subprocess.run([sys.executable, "-m", "dlm", "train", *args, f"run_dir={run_dir}"], check=True,
                       stdout=subprocess.DEVNULL)
    return run_dir / product


def independent_judge(work_dir: Path) -> str:
    """The benchmarks' independent AR judge: ``experiment=demo_ar`` with seed 1 on ``judge_corpus``, trained
    into ``work_dir/judge`` unless it is already there; returns its model directory."""
    corpus = judge_corpus(work_dir / "judge_corpus.jsonl")
    return str(train(["experiment=demo_ar", "seed=1", "data=text_file", f"data.source={corpus.resolve()}"],
                     work_dir / "judge"))


@dataclass
class SampleNLL:
    """Per-sample judge scores: ``nll`` (S,) summed NLL of each sample, ``tokens`` (S,) its scored tokens
    (float64), ``ids`` the judge's token ids of each sample."""

    nll: Tensor
    tokens: Tensor
    ids: list[list[int]]

    def mean(self) -> float:
        """Pooled NLL per token: sum nll / sum tokens."""
        return float(self.nll.sum() / self.tokens.sum())

    def residuals(self) -> Tensor:
        """(S,) the ratio estimator's linearisation: (nll_s - mean * tokens_s) / mean tokens."""
        return (self.nll - self.mean() * self.tokens) / self.tokens.mean()


def sample_nlls(texts: list[str], judge: Judge) -> SampleNLL:
    """Score each text alone under ``judge`` (a per-text bar would flood the console: none).

    A sample with no token to score (empty after the sampler stopped at an EOS, say) counts 0 NLL over 0
    tokens: the pooled ratio estimator weighs samples by their tokens, so it drops out of the mean without
    stopping the run."""
    ids = [judge.encode(t) for t in texts]
    nll, tok = torch.zeros(len(ids), dtype=torch.float64), torch.zeros(len(ids), dtype=torch.float64)
    for i, s in enumerate(ids):
        if any(sum(weights) > 0 for _, weights in scored_sequences([s], judge)):
            p = generative_perplexity_of_ids([s], judge, progress=False)
            nll[i], tok[i] = p["nll"] * p["tokens"], p["tokens"]
    return SampleNLL(nll=nll, tokens=tok, ids=ids)


def gen_ppl_with_se(texts: list[str], judge: Judge, scores: SampleNLL | None = None) -> dict:
    """Pooled gen-PPL over samples and its standard error (ratio estimator, delta method), and the mean
    unigram entropy of the samples (judge tokens). ``scores``: ``sample_nlls(texts, judge)`` when already
    computed."""
    scores = scores if scores is not None else sample_nlls(texts, judge)
    n = scores.nll.numel()
    se_log = float(scores.residuals().std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    ppl = math.exp(scores.mean())
    return {"gen_ppl": ppl, "gen_ppl_se": ppl * se_log, "entropy": mean_entropy(scores.ids)}


def paired_log_ratio_se(a: SampleNLL, b: SampleNLL) -> float:
    """Standard error of log gen-PPL(a) - log gen-PPL(b) when sample s of ``a`` and of ``b`` share their
    random numbers (same seed, same batch layout): the delta method on the per-sample differences of the
    two ratio estimators' residuals. Far smaller than the unpaired error when the samplers differ little."""
    if a.nll.numel() != b.nll.numel():
        raise ValueError(f"paired samples need equal counts ({a.nll.numel()} vs {b.nll.numel()})")
    n = a.nll.numel()
    return float((a.residuals() - b.residuals()).std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
