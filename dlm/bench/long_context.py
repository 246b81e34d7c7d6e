"""``dlm-bench long``: long-context evaluation of a masked diffusion model trained at L, with and without NTK.

One run (``make long-context``):

1. **Training** (or reuse): the needle model, ``dlm-train experiment=needle_demo`` (a subprocess) into
   ``work_dir/needle``, rows of L = ``data.seq_len`` tokens; wall-clock and CPU seconds recorded
   (target: retrieval >= 0.9 at L within 20 minutes on 2 CPU cores).
2. **Needle grids** (``dlm.eval.needle_job``): depth x length exact-match accuracy at lengths
   L, 2L, 4L (``multiples``) for every ``ropes`` arm, one heat map each. An arm is a load override
   applied to the whole grid, as LongLLaDA draws one map per scaling factor: ``none`` extends the
   context without touching RoPE (``max_seq_len=4L``: plain extrapolation), ``ntk_auto`` sets the base
   by the critical-dimension rule for 4L (``rope_scaling=ntk_auto:4L``), ``ntk_auto_diffusion`` by
   UltraLLaDA's diffusion-aware cap. At 1x an arm's base change is also in effect (a real user of
   that setting would see it).
3. **Perplexity vs length** (``dlm.eval.lengths``, the same code as ``dlm-eval-ppl lengths=[...]``):
   ``num_ppl_docs`` held-out texts, each ``max(multiples)`` needle documents of the training length
   joined by a blank line (``ppl_documents``), in ``work_dir/ppl_docs.jsonl``, truncated to every length
   (``mode=pad``): the row of kL tokens is ``[BOS]`` + k whole training-style documents + ``[EOS]``,
   so 1x is exactly a training row and longer rows only add documents (needle documents *generated*
   longer would hold mostly filler: a shift of content, not only of length). NELBO bound per arm.

LongLLaDA's claim, checked here at toy scale: without NTK a bidirectional model keeps retrieving
needles near the query (local perception) and loses distant ones; NTK scaling extends retrieval to
the whole longer context. The table (``table``) and plots go to ``out`` / ``plot_dir``.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch

from dlm.bench.judged_quality import train as train_run
from dlm.data.needle import NeedleTask, document_seed, needle_document
from dlm.eval.lengths import eval_ppl_lengths
from dlm.eval.needle_job import eval_needle_model_dir
from dlm.io.atomic import write_json_atomic, write_text_atomic
from dlm.io.model_dir import load_model_dir
from dlm.io.provenance import provenance


def arm_overrides(arm: str, longest: int) -> dict[str, Any]:
    """The load overrides of a rope arm: ``none`` -> plain extrapolation to ``longest``; ``<name>`` ->
    ``rope_scaling=<name>:<longest>`` (the context follows the target length)."""
    return {"max_seq_len": longest} if arm == "none" else {"rope_scaling": f"{arm}:{longest}"}


def ppl_documents(path: Path, *, length: int, per_text: int, num_texts: int, seed: int,
                  task: dict[str, int]) -> Path:
    """``num_texts`` JSONL texts ``{"text": ...}``, each ``per_text`` needle documents of ``length`` row
    tokens (a seed stream no training or grid uses) joined by a blank line: 2 characters, the room of a
    row's [EOS] [BOS], so truncating a text to k * length tokens (``mode=pad``) keeps k whole documents."""
    spec = NeedleTask.for_row(length, **task)
    docs = [needle_document(spec, seed=document_seed(seed, "ppl", i)).text for i in range(num_texts * per_text)]
    text = "".join(json.dumps({"text": "\n\n".join(docs[i * per_text : (i + 1) * per_text])}) + "\n"
                   for i in range(num_texts))
    if not path.is_file() or path.read_text(encoding="utf-8") != text:  # unchanged: keep its mtime, which
        write_text_atomic(path, text)  # names the data in the results, so a rerun replaces, not refuses
    return path


def table(result: dict) -> str:
    """Markdown: one row per (arm, length) with needle accuracy (mean over depths, and at depth 0: the
    farthest needle) and the perplexity bound."""
    lines = ["| rope | length | x train | needle acc (mean) | needle acc (depth 0) | ppl bound |",
             "|---|---|---|---|---|---|"]
    train_len = result["train_len"]
    for arm, data in result["arms"].items():
        grid, ppl = data["needle"], {r["seq_len"]: r for r in data["ppl"]["results"]}
        for j, n in enumerate(grid["lengths"]):
            accs = [row[j] for row in grid["accuracy"]]
            lines.append(f"| {arm} | {n} | {n // train_len} | {sum(accs) / len(accs):.2f} | {accs[0]:.2f} | "
                         f"{ppl[n]['ppl']:.3f} |")
    return "\n".join(lines)


def plot_ppl(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlm.io.atomic import atomic_file

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for arm, data in result["arms"].items():
        rows = data["ppl"]["results"]
        axes[0].plot([r["seq_len"] for r in rows], [r["ppl"] for r in rows], "o-", label=arm)
        grid = data["needle"]
        mean = [sum(row[j] for row in grid["accuracy"]) / len(grid["accuracy"]) for j in range(len(grid["lengths"]))]
        axes[1].plot(grid["lengths"], mean, "o-", label=arm)
    for ax, label in zip(axes, ("perplexity bound (k needle docs per row)", "needle accuracy (mean over depths)"),
                         strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(result["lengths"], [str(n) for n in result["lengths"]])
        ax.set_xlabel("row length (tokens)")
        ax.set_ylabel(label)
        ax.axvline(result["train_len"], color="grey", ls=":", lw=1)
        ax.legend(fontsize=7)
    axes[1].set_ylim(-0.02, 1.02)
    fig.suptitle(f"masked diffusion trained at L={result['train_len']}: with and without NTK", fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f.buffer, format="png", dpi=120)  # the binary stream under the text handle: PNG bytes
    plt.close(fig)


def bench_long(*, work_dir: str = "runs/bench_long", train: list[str] | None = None, retrain: bool = False,
               multiples: list[int] | None = None, ropes: list[str] | None = None,
               depths: list[float] | None = None, num_docs: int = 64, num_ppl_docs: int = 64, num_samples: int = 8,
               seed: int = 0, threads: int = 2, out: str = "benchmarks/results/long_context.json",
               plot_dir: str = "benchmarks/results") -> dict:
    """The benchmark of the module docstring; ``train``: extra ``dlm-train`` overrides (after
    ``experiment=needle_demo``); ``retrain``: train even when ``work_dir/needle/model`` exists."""
    multiples = multiples or [1, 2, 4]
    ropes = ropes or ["none", "ntk_auto"]
    depths = depths if depths is not None else [0.0, 0.25, 0.5, 0.75, 1.0]
    torch.set_num_threads(threads)
    work, plots = Path(work_dir), Path(plot_dir)
    run_dir = work / "needle"
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the training subprocess's threads
    trained_now = retrain or not (run_dir / "model" / "model.json").is_file()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        if retrain and (run_dir / "model").exists():
            import shutil

            shutil.rmtree(run_dir)
        model_dir = train_run(["experiment=needle_demo", f"seed={seed}", *(train or [])], run_dir)
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    timing = run_dir / "training_time.json"  # kept with the run, so a reusing bench still reports it
    if trained_now:
        write_json_atomic(timing, {"seconds": time.perf_counter() - start, "threads": threads,
                                   "cpu_seconds": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
                                   "load_average_after": os.getloadavg()})  # a shared machine slows the wall clock
    training = {"trained_now": trained_now, **(json.loads(timing.read_text()) if timing.is_file() else {})}
    loaded = load_model_dir(model_dir)
    train_len, data = loaded.record.seq_len, loaded.meta.get("data") or {}
    task = {k: int(data[k]) for k in ("num_pairs", "key_len", "value_len", "num_queries") if k in data}
    lengths = [train_len * m for m in multiples]
    longest = max(lengths)
    corpus = ppl_documents(work / "ppl_docs.jsonl", length=train_len, per_text=max(multiples), num_texts=num_ppl_docs,
                           seed=seed, task=task)
    arms: dict[str, dict] = {}
    for arm in ropes:
        overrides = arm_overrides(arm, longest)
        needle = eval_needle_model_dir(model_dir, lengths=lengths, depths=depths, num_docs=num_docs, seed=seed,
                                       device="cpu", out=work / f"needle_{arm}.json",
                                       plot=plots / f"long_context_needle_{arm}.png", **overrides)
        ppl = eval_ppl_lengths(model_dir, lengths=lengths, dataset="needle", source=str(corpus), split="test",
                               mode="pad", num_samples=num_samples, seed=seed, device="cpu",
                               cache_dir=work / "cache", out=work / f"ppl_{arm}.json", **overrides)
        arms[arm] = {"overrides": needle.get("overrides", {}), "needle": {k: needle[k] for k in
                                                                          ("lengths", "depths", "accuracy", "mean_accuracy", "out", "plot")},
                     "ppl": {"results": ppl["results"], "context": ppl["context"], "out": ppl["out"]}}
        print(f"{arm}: needle {needle['mean_accuracy']:.3f}; ppl " +
              ", ".join(f"{r['seq_len']}: {r['ppl']:.3f}" for r in ppl["results"]), flush=True)
    at_train = arms[ropes[0]]["needle"]
    result = {"train_len": train_len, "lengths": lengths, "task": task, "training": training,
              "accuracy_at_train_len": sum(row[0] for row in at_train["accuracy"]) / len(at_train["accuracy"]),
              "arms": arms}
    result["table"] = table(result)
    settings = {"work_dir": str(work), "train": train or [], "multiples": multiples, "ropes": ropes, "depths": depths,
                "num_docs": num_docs, "num_ppl_docs": num_ppl_docs, "num_samples": num_samples}
    result["provenance"] = provenance(seed=seed, settings=settings, model=loaded.model, source=model_dir)
    plot_ppl(result, plots / "long_context.png")
    write_json_atomic(out, result)
    print(result["table"], flush=True)
    return {**result, "out": out, "plot": str(plots / "long_context.png"), "settings": json.loads(json.dumps(settings))}
