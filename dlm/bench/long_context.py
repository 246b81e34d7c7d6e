"""``dlm-bench long``: long-context evaluation of a diffusion model trained at L, with and without NTK,
beside an AR model of the same size trained on the same data (the control).

One run (``make long-context``):

1. **Training** (or reuse), one subprocess per entry of ``models`` (name -> ``dlm-train`` overrides and run
   directory): the needle model, ``dlm-train experiment=needle_demo`` (a block-diffusion model, blocks of
   4) into ``work_dir/needle``, rows of L = ``data.seq_len`` tokens, and the AR control, the same recipe
   with ``objective=ar objective.sft=true model.attention=causal`` (same backbone, size, data with the
   same answer-only rows, steps and seed) into ``work_dir/needle_ar``;
   wall-clock and CPU seconds recorded per model (target: retrieval >= 0.9 at L within 20 minutes on 2
   CPU cores). Every model must share one training length (the lengths are multiples of it).
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
   longer would hold mostly filler: a shift of content, not only of length). The block NELBO bound per arm
   for the diffusion model, the exact NLL for the AR control (both through ``dlm-eval-ppl``'s code).

Steps 2 and 3 run for every model. LongLLaDA's claims, checked here at toy scale: past its training
length the diffusion model's perplexity stays nearly flat where the AR model's explodes; without NTK a
bidirectional model keeps retrieving needles near the query (local perception) and loses distant ones;
NTK scaling extends retrieval to the whole longer context. The table (``table``) and plots go to ``out`` / ``plot_dir``.
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
from dlm.errors import ConfigError
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
    """Markdown: one row per (model, arm, length) with needle accuracy (mean over depths, and at depth 0:
    the farthest needle), the perplexity (a bound for diffusion, exact for AR) and its ratio to the same
    model and arm at the training length."""
    lines = ["| model | rope | length | x train | needle acc (mean) | needle acc (depth 0) | ppl | ppl / ppl at L |",
             "|---|---|---|---|---|---|---|---|"]
    train_len = result["train_len"]
    for name, model in result["models"].items():
        for arm, data in model["arms"].items():
            grid, ppl = data["needle"], {r["seq_len"]: r for r in data["ppl"]["results"]}
            for j, n in enumerate(grid["lengths"]):
                accs = [row[j] for row in grid["accuracy"]]
                lines.append(f"| {name} | {arm} | {n} | {n // train_len} | {sum(accs) / len(accs):.2f} | "
                             f"{accs[0]:.2f} | {ppl[n]['ppl']:.3f} | {ppl[n]['ppl'] / ppl[train_len]['ppl']:.2f} |")
    return "\n".join(lines)


def plot_ppl(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlm.io.atomic import atomic_file

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    styles = ("-", "--", ":", "-.")
    for k, (name, model) in enumerate(result["models"].items()):
        for a, (arm, data) in enumerate(model["arms"].items()):
            rows, colour = data["ppl"]["results"], f"C{a}"
            label = f"{name}, {arm}"
            axes[0].plot([r["seq_len"] for r in rows], [r["ppl"] for r in rows], "o", ls=styles[k % 4], c=colour,
                         label=label)
            grid = data["needle"]
            mean = [sum(row[j] for row in grid["accuracy"]) / len(grid["accuracy"])
                    for j in range(len(grid["lengths"]))]
            axes[1].plot(grid["lengths"], mean, "o", ls=styles[k % 4], c=colour, label=label)
    axes[0].set_yscale("log")
    for ax, label in zip(axes, ("perplexity (k needle docs per row)", "needle accuracy (mean over depths)"),
                         strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(result["lengths"], [str(n) for n in result["lengths"]])
        ax.set_xlabel("row length (tokens)")
        ax.set_ylabel(label)
        ax.axvline(result["train_len"], color="grey", ls=":", lw=1)
        ax.legend(fontsize=7)
    axes[1].set_ylim(-0.02, 1.02)
    fig.suptitle(f"{' vs '.join(result['models'])}, trained at L={result['train_len']}: with and without NTK",
                 fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f.buffer, format="png", dpi=120)  # the binary stream under the text handle: PNG bytes
    plt.close(fig)


MODELS = {"diffusion": {"run": "needle", "train": ["experiment=needle_demo"]},
          "ar": {"run": "needle_ar", "train": ["experiment=needle_demo", "objective=ar", "objective.sft=true",
                                               "model.attention=causal",
                                               "name=needle_demo_ar"]}}


def train_timed(args: list[str], run_dir: Path, *, retrain: bool, threads: int) -> tuple[Path, dict]:
    """``dlm-train args`` into ``run_dir`` (reused when its model exists, unless ``retrain``) with
    ``threads`` OpenMP threads; returns the model directory and the training time record (wall and CPU
    seconds, kept in ``run_dir/training_time.json`` so a reusing bench still reports it)."""
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the training subprocess's threads
    trained_now = retrain or not (run_dir / "model" / "model.json").is_file()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        if retrain and run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        model_dir = train_run(args, run_dir)
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    timing = run_dir / "training_time.json"
    if trained_now:
        write_json_atomic(timing, {"seconds": time.perf_counter() - start, "threads": threads,
                                   "cpu_seconds": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
                                   "load_average_after": os.getloadavg()})  # a shared machine slows the wall clock
    return model_dir, {"trained_now": trained_now, **(json.loads(timing.read_text()) if timing.is_file() else {})}


def bench_long(*, work_dir: str = "runs/bench_long", train: list[str] | None = None, retrain: bool = False,
               models: dict[str, dict] | None = None, multiples: list[int] | None = None,
               ropes: list[str] | None = None, depths: list[float] | None = None, num_docs: int = 64,
               num_ppl_docs: int = 64, num_samples: int = 8, seed: int = 0, threads: int = 2,
               out: str = "benchmarks/results/long_context.json", plot_dir: str = "benchmarks/results") -> dict:
    """The benchmark of the module docstring. ``models``: name -> ``{"run": <directory under work_dir>,
    "train": [dlm-train overrides]}`` (default ``MODELS``: the diffusion needle model and its AR control);
    ``train``: extra ``dlm-train`` overrides for every model; ``retrain``: train even when a model exists."""
    models = models or MODELS
    multiples = multiples or [1, 2, 4, 8]
    ropes = ropes or ["none", "ntk_auto"]
    depths = depths if depths is not None else [0.0, 0.25, 0.5, 0.75, 1.0]
    for name, spec in models.items():
        if set(spec) != {"run", "train"}:
            raise ConfigError(f"models.{name} must hold exactly the keys run and train (got {sorted(spec)})")
    torch.set_num_threads(threads)
    work, plots = Path(work_dir), Path(plot_dir)
    trained = {name: train_timed([*spec["train"], f"seed={seed}", *(train or [])], work / spec["run"],
                                 retrain=retrain, threads=threads) for name, spec in models.items()}
    loaded = {name: load_model_dir(model_dir) for name, (model_dir, _) in trained.items()}
    train_lens = {name: m.record.seq_len for name, m in loaded.items()}
    if len(set(train_lens.values())) != 1:
        raise ConfigError(f"models must share one training length (got {train_lens}): give them the same data.seq_len")
    first = next(iter(loaded.values()))
    train_len, data = first.record.seq_len, first.meta.get("data") or {}
    task = {k: int(data[k]) for k in ("num_pairs", "key_len", "value_len", "num_queries") if k in data}
    lengths = [train_len * m for m in multiples]
    longest = max(lengths)
    corpus = ppl_documents(work / "ppl_docs.jsonl", length=train_len, per_text=max(multiples), num_texts=num_ppl_docs,
                           seed=seed, task=task)
    result: dict[str, Any] = {"train_len": train_len, "lengths": lengths, "task": task, "models": {}}
    for name, (model_dir, training) in trained.items():
        if training["trained_now"]:  # results of the model this one replaced: not another result to protect
            for arm in ropes:
                stale = [f"needle_{name}_{arm}.json", f"ppl_{name}_{arm}.json",
                         *(f"ppl_{name}_{arm}-len{n}.json" for n in lengths)]
                for file in stale:
                    (work / file).unlink(missing_ok=True)
        arms: dict[str, dict] = {}
        for arm in ropes:
            overrides = arm_overrides(arm, longest)
            needle = eval_needle_model_dir(model_dir, lengths=lengths, depths=depths, num_docs=num_docs, seed=seed,
                                           device="cpu", out=work / f"needle_{name}_{arm}.json",
                                           plot=plots / f"long_context_needle_{name}_{arm}.png", **overrides)
            ppl = eval_ppl_lengths(model_dir, lengths=lengths, dataset="needle", source=str(corpus), split="test",
                                   mode="pad", num_samples=num_samples, seed=seed, device="cpu",
                                   cache_dir=work / "cache", out=work / f"ppl_{name}_{arm}.json", **overrides)
            arms[arm] = {"overrides": needle.get("overrides", {}),
                         "needle": {k: needle[k] for k in ("lengths", "depths", "accuracy", "mean_accuracy", "out",
                                                           "plot")},
                         "ppl": {"results": ppl["results"], "method": ppl.get("method"), "context": ppl["context"],
                                 "out": ppl["out"]}}
            print(f"{name} {arm}: needle {needle['mean_accuracy']:.3f}; ppl " +
                  ", ".join(f"{r['seq_len']}: {r['ppl']:.3f}" for r in ppl["results"]), flush=True)
        at_train = arms[ropes[0]]["needle"]
        result["models"][name] = {
            "model_dir": str(model_dir), "training": training, "arms": arms,
            "accuracy_at_train_len": sum(row[0] for row in at_train["accuracy"]) / len(at_train["accuracy"])}
    result["table"] = table(result)
    settings = {"work_dir": str(work), "train": train or [], "models": models, "multiples": multiples, "ropes": ropes,
                "depths": depths, "num_docs": num_docs, "num_ppl_docs": num_ppl_docs, "num_samples": num_samples}
    result["provenance"] = provenance(seed=seed, settings=settings, model={n: m.model for n, m in loaded.items()})
    plot_ppl(result, plots / "long_context.png")
    write_json_atomic(out, result)
    print(result["table"], flush=True)
    return {**result, "out": out, "plot": str(plots / "long_context.png"), "settings": json.loads(json.dumps(settings))}
