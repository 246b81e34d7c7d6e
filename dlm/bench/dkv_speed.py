"""dlm-bench dkv: confidence decoding with and without a dKV cache, in one run (ratios, agreement).

A random-init bidirectional backbone decodes a canvas whose first half is a prompt, one token per
step in a fixed random order (generation length = steps), at each (length, batch) of ``grid``. Every cache setting runs with
the same generator as the uncached baseline, so ``agreement`` is the fraction of generated tokens
equal to the baseline's. Timings are the median of ``rounds`` interleaved rounds. Optional quality:
with ``quality.model_dir`` (a trained masked-diffusion directory) and ``quality.judge`` (an AR model
directory), every setting's samples are scored by the judge, with the per-sample NLL difference to
the baseline's samples (same prompts and generator) and its paired standard error.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import torch

from dlm.io.atomic import write_text_atomic
from dlm.io.provenance import provenance
from dlm.io.spec import build
from dlm.samplers.confidence import ConfidenceSampler


def _run(net, cache, *, length: int, batch_size: int, seed: int, prompt: torch.Tensor):
    # one fixed random order for every setting: the greedy variant needs it, and the others then
    # decode the same positions at the same steps as the baseline
    sampler = ConfidenceSampler(num_steps=length - prompt.shape[-1], order="fixed_random", temperature=1.0,
                                cache=None if cache is None else build(cache))
    start = time.perf_counter()
    out = sampler(net, batch_size=batch_size, length=length, prompt=prompt, generator=torch.Generator().manual_seed(seed))
    return time.perf_counter() - start, out


def _judge_nll(judge, tokens: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Per-sample mean NLL (B,) of the generated tokens under an AR judge."""
    with torch.no_grad():
        logits = judge(tokens[:, :-1], None).float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    return nll[:, prompt_len - 1:].mean(-1).double()


def bench_dkv(*, model: dict, vocab_size: int, grid: list, caches: dict, rounds: int = 3, threads: int = 2,
              seed: int = 0, quality: dict | None = None, out: str = "benchmarks/results/dkv.json") -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rows = []
    for length, batch_size in grid:
        net = build({**model, "vocab_size": vocab_size, "mask_id": vocab_size - 1, "max_seq_len": length}).eval()
        prompt = torch.randint(0, vocab_size - 1, (batch_size, length // 2), generator=torch.Generator().manual_seed(seed))
        settings = {"none": None, **caches}
        times: dict[str, list[float]] = {name: [] for name in settings}
        outs = {}
        _run(net, None, length=length, batch_size=batch_size, seed=seed, prompt=prompt)  # warm-up
        for _ in range(rounds):
            for name, cache in settings.items():
                seconds, outs[name] = _run(net, cache, length=length, batch_size=batch_size, seed=seed, prompt=prompt)
                times[name].append(seconds)
        gen_tokens = (length - prompt.shape[1]) * batch_size
        base = statistics.median(times["none"])
        for name in settings:
            sec = statistics.median(times[name])
            agree = (outs[name].tokens[:, prompt.shape[1]:] == outs["none"].tokens[:, prompt.shape[1]:]).float().mean()
            row = {"cache": name, "length": length, "batch_size": batch_size, "seconds": sec,
                   "round_seconds": times[name], "tokens_per_second": gen_tokens / sec, "speedup": base / sec,
                   "agreement": float(agree), "nfe": outs[name].nfe}
            rows.append(row)
            print(f"L={length:<4} B={batch_size:<2} {name:<16} {sec:8.2f} s  {row['tokens_per_second']:8.1f} tok/s  "
                  f"x{row['speedup']:.2f}  agreement {row['agreement']:.3f}", flush=True)
    quality_rows = _quality(caches, seed=seed, **quality) if quality and quality.get("model_dir") else []
    report = {"rows": rows, "quality": quality_rows, "model": model, "vocab_size": vocab_size, "threads": threads,
              "rounds": rounds,  # the networks are seeded random initialisations of ``model``: no fingerprint
              "provenance": provenance(seed=seed, settings={"caches": caches, "grid": grid, "rounds": rounds,
                                                            "quality": quality})}
    path = Path(out)
    write_text_atomic(path, json.dumps(report, indent=2))
    return {"out": str(path), "rows": len(rows), "quality_rows": len(quality_rows)}


def _quality(caches: dict, *, model_dir: str, judge: str, length: int, num_samples: int, seed: int) -> list[dict]:
    from dlm.io.model_dir import load_model_dir

    den, ar = load_model_dir(model_dir), load_model_dir(judge)
    tok = den.tokenizer
    prompt = torch.full((num_samples, length // 2), tok.bos_id if tok.bos_id is not None else 0)
    _, base = _run(den.model, None, length=length, batch_size=num_samples, seed=seed, prompt=prompt[:, :1])
    base_nll = _judge_nll(ar.model, base.tokens, 1)
    rows = [{"cache": "none", "judge_nll": float(base_nll.mean()), "diff_vs_none": 0.0, "paired_se": 0.0,
             "agreement": 1.0, "quality_met": True}]
    for name, cache in caches.items():
        _, res = _run(den.model, cache, length=length, batch_size=num_samples, seed=seed, prompt=prompt[:, :1])
        diff = _judge_nll(ar.model, res.tokens, 1) - base_nll
        se = float(diff.std(unbiased=True) / math.sqrt(num_samples))
        agreement = float((res.tokens[:, 1:] == base.tokens[:, 1:]).float().mean())  # generated tokens, same draws
        # the bar: >= 95 % of tokens as without the cache, judge NLL within 2 paired standard errors
        rows.append({"cache": name, "judge_nll": float(base_nll.mean() + diff.mean()), "diff_vs_none": float(diff.mean()),
                     "paired_se": se, "agreement": agreement,
                     "quality_met": agreement >= 0.95 and abs(float(diff.mean())) <= 2 * se})
    return rows
