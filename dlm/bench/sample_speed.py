"""Sampler speed (and, given trained models, quality), all rows measured in one run.

Speed rows use a random-init model with the GPT-2 vocabulary (50,258 with the mask): speed does
not depend on the weights. Each row times one sampler call after a warm-up forward and reports
seconds per sample, network calls, mean per-row evaluations, and the speed-up over the baseline
sampler at the same (length, batch). Quality rows (optional) sample from a trained model
directory and score the text with a judge AR model (generative perplexity, per-sequence entropy).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dlm.io.atomic import write_text_atomic
from dlm.io.model_dir import load_model_dir
from dlm.io.provenance import provenance
from dlm.io.spec import build


def _time_call(sampler, model, *, length: int, batch_size: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    out = sampler(model, batch_size=batch_size, length=length, generator=g)
    seconds = time.perf_counter() - start
    row_nfe = out.info.get("row_nfe")
    return {"seconds_per_sample": seconds / batch_size, "seconds": seconds, "nfe": out.nfe,
            "row_nfe_mean": float(row_nfe.double().mean()) if row_nfe is not None else float(out.nfe)}


def _quality_rows(samplers: dict, *, model_dir: str, judge: str, length: int, num_samples: int,
                  seed: int) -> list[dict]:
    from dlm.eval.gen_job import eval_gen_file
    from dlm.eval.sample_job import sample_to_jsonl

    loaded = load_model_dir(model_dir)
    rows = []
    for name, spec in samplers.items():
        if spec.get("schedule", "absent") is None:
            spec = {**spec, "schedule": loaded.record.schedule_spec}
        with tempfile.TemporaryDirectory() as tmp:
            sampled = sample_to_jsonl(model_dir, build(spec), num_samples=num_samples, length=length,
                                      batch_size=num_samples, seed=seed, out=Path(tmp) / "s.jsonl")
            scored = eval_gen_file(Path(tmp) / "s.jsonl", judge)
        rows.append({"sampler": name, "length": length, "seconds_per_sample": sampled["seconds_per_sample"],
                     "nfe": sampled["nfe"], "gen_ppl": scored["gen_ppl"], "entropy": scored["entropy"]})
        print(f"quality {name:<32} gen_ppl {scored['gen_ppl']:8.2f}  entropy {scored['entropy']:.3f}  "
              f"{sampled['seconds_per_sample']:.3f} s/sample", flush=True)
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["seconds_per_sample"], r["gen_ppl"])
        ax.annotate(r["sampler"], (r["seconds_per_sample"], r["gen_ppl"]), fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap at 2 decades
    ax.set_xlabel("seconds per sample (CPU, log scale)")
    ax.set_ylabel("generative perplexity under the judge")
    ax.set_title("speed vs quality of dlm samplers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def bench_sample(*, model: dict, samplers: dict, grid: list, restrict: dict | None = None, baseline: str,
                 cached: str | None = None, vocab_size: int = 50258, threads: int = 2, seed: int = 0,
                 quality: dict | None = None, out: str = "benchmarks/results/sample.json",
                 plot: str | None = "benchmarks/results/sample_speed_quality.png") -> dict:
    """Speed table over ``grid`` ([length, batch_size] pairs); ``restrict[name]`` limits a sampler's pairs."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = build({**model, "vocab_size": vocab_size, "mask_id": vocab_size - 1}).eval()
    restrict = restrict or {}
    rows = []
    for length, batch_size in grid:
        with torch.no_grad():  # warm-up: allocator and kernels, outside the timed calls
            net(torch.zeros(batch_size, length, dtype=torch.long))
        for name, spec in samplers.items():
            allowed = restrict.get(name)
            if allowed is not None and [length, batch_size] not in [list(a) for a in allowed]:
                continue
            r = {"sampler": name, "length": length, "batch_size": batch_size,
                 **_time_call(build(spec), net, length=length, batch_size=batch_size, seed=seed)}
            rows.append(r)
            print(f"L={length:<4} B={batch_size:<2} {name:<32} {r['seconds_per_sample']:9.3f} s/sample  "
                  f"nfe {r['nfe']:5d}  row-nfe {r['row_nfe_mean']:7.1f}", flush=True)
    by_key = {(r["sampler"], r["length"], r["batch_size"]): r for r in rows}
    for r in rows:
        base = by_key.get((baseline, r["length"], r["batch_size"]))
        r["speedup_vs_baseline"] = base["seconds_per_sample"] / r["seconds_per_sample"] if base else None
        if r["sampler"] == cached:  # RADD's E-NFE formula for per-row caching, log-linear grid
            n = samplers[cached]["num_steps"]
            r["row_nfe_formula"] = n * (1 - (1 - 1 / n) ** r["length"])
            r["row_nfe_rel_error"] = r["row_nfe_mean"] / r["row_nfe_formula"] - 1
    if quality and quality.get("model_dir") and not quality.get("judge"):
        raise ValueError("quality.model_dir is set but quality.judge is not: give a judge AR model directory")
    quality_rows = _quality_rows(samplers, seed=seed, **quality) if quality and quality.get("model_dir") else []
    report = {"task": "sample", "model": {k: v for k, v in model.items() if k != "_target_"},
              "vocab_size": vocab_size, "threads": threads, "torch": torch.__version__, "baseline": baseline,
              "speed": rows, "quality": quality_rows,
              "provenance": provenance(seed=seed, settings={"samplers": samplers, "grid": grid, "restrict": restrict,
                                                            "quality": quality}, model=net),
              "median_speedup_first_hitting": statistics.median(
                  [r["speedup_vs_baseline"] for r in rows
                   if r["sampler"] == "first_hitting" and r["speedup_vs_baseline"]] or [0.0])}
    path = Path(out)
    write_text_atomic(path, json.dumps(report, indent=2))
    if plot and quality_rows:
        _plot(quality_rows, Path(plot))
    print(f"{'sampler':<32} {'L':>4} {'B':>2} {'s/sample':>9} {'nfe':>5} {'speed-up':>9}")
    for r in rows:
        sp = f"{r['speedup_vs_baseline']:.1f}x" if r["speedup_vs_baseline"] else "-"
        print(f"{r['sampler']:<32} {r['length']:>4} {r['batch_size']:>2} {r['seconds_per_sample']:>9.3f} "
              f"{r['nfe']:>5} {sp:>9}")
    return {"out": str(path), "rows": len(rows), "quality_rows": len(quality_rows)}
