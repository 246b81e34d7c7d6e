"""Training-step overhead of the masked-diffusion objective over a bare LM step.

Baseline: forward + full-vocabulary cross-entropy on every position + backward, same backbone,
same batch. Candidate: the same plus the diffusion machinery (t sampling, masking, SUBS, masked
cross-entropy, weighting). Each variant runs in its own subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dlm.io.atomic import write_text_atomic
from dlm.io.provenance import provenance
from dlm.io.spec import build


def _worker(variant: str, model_spec: dict, objective_spec: dict, batch_size: int, length: int,
            warmup: int, repeats: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(model_spec)
    objective = build(objective_spec)
    x0 = torch.randint(0, model.mask_id, (batch_size, length), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": x0}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        if variant == "bare":
            logits = model(x0, None)
            loss = F.cross_entropy(logits.float().flatten(0, 1), x0.flatten())
        else:
            loss = objective(model, batch).loss
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"times": times, "peak_rss_mib": peak_kib / 1024})


def bench_train_step(*, model: dict, objective: dict, vocab_size: int = 50258, batch_size: int = 8,
                     length: int = 256, warmup: int = 2, repeats: int = 7, rounds: int = 2, threads: int = 2,
                     out: str = "benchmarks/results/train.json") -> dict:
    """Median step time of both variants (interleaved rounds), tokens/s and the overhead ratio."""
    model_spec = {**model, "vocab_size": vocab_size, "mask_id": vocab_size - 1}
    ctx = mp.get_context("spawn")
    results: dict[str, list[float]] = {"bare": [], "objective": []}
    peaks: dict[str, float] = {}
    for _ in range(rounds):  # interleave so drift in machine load hits both variants alike
        for variant in ("bare", "objective"):
            q = ctx.Queue()
            p = ctx.Process(target=_worker, args=(variant, model_spec, objective, batch_size, length, warmup,
                                                   repeats, threads, q))
            p.start()
            r = q.get()
            p.join()
            results[variant] += r["times"]
            peaks[variant] = max(peaks.get(variant, 0.0), r["peak_rss_mib"])
    tokens = batch_size * length
    rows = {}
    for variant, times in results.items():
        med = statistics.median(times)
        rows[variant] = {"median_s": med, "tokens_per_s": tokens / med, "peak_rss_mib": peaks[variant],
                         "samples": len(times)}
    ratio = rows["objective"]["median_s"] / rows["bare"]["median_s"]
    report = {
        "task": "train_step",
        "model": {k: v for k, v in model.items() if k != "_target_"},
        "objective": objective,
        "batch_size": batch_size, "length": length, "vocab_size": vocab_size, "threads": threads,
        "device": f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "rows": rows,
        "overhead_ratio": ratio,
        "target_ratio": 1.10,
        # each worker seeds its own random model and batch with 0 (``_worker``)
        "provenance": provenance(seed=0, settings={"objective": objective, "batch_size": batch_size, "length": length,
                                                   "warmup": warmup, "repeats": repeats, "rounds": rounds}),
    }
    print(f"{'variant':<10} {'median s/step':>14} {'tokens/s':>10} {'peak RSS MiB':>13}")
    for variant, r in rows.items():
        print(f"{variant:<10} {r['median_s']:>14.3f} {r['tokens_per_s']:>10.0f} {r['peak_rss_mib']:>13.0f}")
    print(f"overhead ratio objective/bare = {ratio:.3f} (target <= 1.10)")
    path = Path(out)
    write_text_atomic(path, json.dumps(report, indent=2))
    return {"overhead_ratio": ratio, "out": str(path),
            **{f"{v}_tokens_per_s": r["tokens_per_s"] for v, r in rows.items()}}
