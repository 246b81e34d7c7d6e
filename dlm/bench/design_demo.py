"""``dlm-bench design`` / ``make design-demo``: GB1 sequence design, every method on one enumerable space.

One run, on CPU, through the real commands (subprocesses: each is what a user runs):

1. ``dlm-train experiment=gb1_base_demo``: the base model, pretrained on every measured GB1 variant (the natural
   prior); ``dlm-fit-oracle``: the differentiable fine-tuning oracle (MLP on FLIP ``sampled`` train +
   validation rows). The evaluation oracle is the measured fitness itself (``gb1_lookup``: exact on the
   149,361 measured variants, 0 elsewhere), which no method reads.
2. DRAKES (``dlm-train experiment=drakes_gb1_demo``) for every α of ``alphas`` and for α = 0. The α reported
   as ``drakes`` is the one that went furthest towards its own target π_α = p_pre exp(r/α)/Z: the smallest
   ``remaining`` = KL(q_α ‖ π_α) / KL(p_pre ‖ π_α), both exact (``dlm.eval.design_exact``): the share of the
   pretrained model's distance to the target that fine-tuning left. It reads the fine-tuning reward and the
   pretrained model only, never the evaluation oracle; every α's row is in the report (``sweep``).
3. ``dlm-design`` for base, drakes (α*), drakes_alpha0, svdd, smc, cg (sampler α = α*) and best_of_n, on the
   same grid (``num_steps``), ``num_samples`` designs each, the tilted optimum at α* the common target.
   Matched compute: M (SVDD), k (SMC) and N (best-of-N) are set so that denoiser rows per design are about
   equal (``network_rows_per_design`` is measured and reported); DRAKES and CG sample at the base cost.
4. The table (``out``), a reward-vs-KL plot with the exact tilted optimum p_pre exp(r/α)/Z over α, and the
   issue's targets, each met or missed. Last stdout line: one JSON keyed by method plus the directories.

Models already in ``work_dir`` are reused (a rerun only re-samples): delete ``work_dir`` after changing a
training setting (``drakes_steps``, ``alphas``, ``oracle_steps``, ``seed``).

``dna=true`` adds the DNA half (``dlm.bench.design_dna``) as the report's ``dna`` block; ``gb1=false`` runs it alone.
The runs both halves share (DRAKES and ``dlm-design`` subprocesses, matched-compute arguments, the table) are
``dlm.bench.design_runs``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dlm.bench.design_runs import (
    INFERENCE,
    alpha_name,
    design,
    finetune,
    inference_runs,
    method_table,
    targets_line,
)
from dlm.bench.judged_quality import train
from dlm.errors import ConfigError
from dlm.io.atomic import write_json_atomic
from dlm.io.provenance import provenance


def fit_oracle(out: Path, steps: int) -> Path:
    if not (out / "reward.json").is_file():
        subprocess.run([sys.executable, "-m", "dlm", "fit-oracle", f"out={out}", f"steps={steps}"], check=True,
                       stdout=subprocess.DEVNULL)
    return out


def landscape(base_model: str, reward_dir: str, num_steps: int) -> dict:
    """Exact tensors over the 160,000 cells: the pretrained law p_pre (its ancestral sampler, ``num_steps``), the
    fine-tuning reward r, the measured fitness, and the measured top-1 % cells."""
    import torch

    from dlm.data.gb1 import PROTEIN, load_gb1
    from dlm.eval.design import top_fraction_cells
    from dlm.eval.design_exact import ancestral_law, cells_of
    from dlm.eval.design_space import reward_table
    from dlm.io.model_dir import load_model_dir
    from dlm.rewards.gb1_lookup import gb1_lookup_from_zip
    from dlm.rewards.reward_dir import load_reward
    from dlm.samplers.ancestral import AncestralSampler

    loaded = load_model_dir(base_model)
    k, v = len(PROTEIN), loaded.model.vocab_size
    table = load_gb1()
    cells = cells_of(torch.tensor([[PROTEIN.index(c) for c in s] for s in table.sequences]), k)
    return {"p_pre": ancestral_law(loaded.model, AncestralSampler(num_steps=num_steps, schedule=loaded.schedule),
                                   alphabet_size=k, length=4),
            "r": reward_table(load_reward(reward_dir), alphabet_size=k, length=4, vocab_size=v),
            "fitness": reward_table(gb1_lookup_from_zip(), alphabet_size=k, length=4, vocab_size=v),
            "top": top_fraction_cells(cells, torch.tensor(table.values), num_cells=k ** 4)}


def prior_to_optimum(land: dict, alpha: float) -> float:
    """KL(p_pre ‖ π_α), exact: how far the problem of α asks a method to move (sampling p_pre scores this)."""
    from dlm.eval.design_exact import kl, tilted

    return kl(land["p_pre"], tilted(land["p_pre"], land["r"], alpha))


def frontier(land: dict, alpha: float, alphas: list[float]) -> list[dict]:
    """The exact optimum π_α = p_pre exp(r/α)/Z for each α: its mean measured fitness, top-1 % share and KL to
    p_pre (cell level, and over the reward bins of the common target α as the methods' plotted KLs). π_α is the
    optimum of the *fine-tuning* problem (E[r] − α KL), so the curve is the path every method aims at, not a
    bound on the measured fitness (r is an oracle; the evaluation is the measured fitness)."""
    from dlm.eval.design_exact import binned_kl, equal_mass_bins, kl, tilted
    from dlm.eval.design_space import REWARD_BINS

    p_pre, r = land["p_pre"], land["r"]
    bins = equal_mass_bins(r, tilted(p_pre, r, alpha), REWARD_BINS)
    rows = []
    for a in alphas:
        pi = tilted(p_pre, r, a)
        rows.append({"alpha": a, "mean_reward": float((pi * land["fitness"]).sum()),
                     "top1_share": float(pi[land["top"]].sum()), "kl_to_pretrained": kl(pi, p_pre),
                     "kl_to_pretrained_reward_bins": binned_kl(p_pre, bins, REWARD_BINS, law=pi)["estimate"]})
    return rows


def plot_reward_vs_kl(results: dict, front: list[dict], path: Path) -> None:
    """Mean measured fitness against KL to the pretrained law (reward bins: comparable across methods)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    ax.plot([f["kl_to_pretrained_reward_bins"] for f in front], [f["mean_reward"] for f in front], "k--", lw=1,
            label="tilted optimum p_pre exp(r/α)/Z, α = 64 … 0.05 (exact)")
    for name, row in results.items():
        ax.errorbar(row["kl_to_pretrained_reward_bins"], row["mean_reward"], xerr=row["kl_to_pretrained_reward_bins_se"],
                    yerr=row["mean_reward_se"], fmt="o", ms=5, capsize=2,
                    label=f"{name} ({row['network_rows_per_design']:.0f} rows/design)")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("KL(design law ‖ pretrained), reward bins (nats)")
    ax.set_ylabel("mean measured GB1 fitness (evaluation)")
    ax.set_title("GB1 design: reward vs distance to the pretrained model")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(results: dict) -> str:
    cols = ("median_reward", "mean_reward", "top1_share", "kl_to_tilted", "kl_to_tilted_reward_bins",
            "kl_to_pretrained", "kl_to_pretrained_reward_bins", "app_log_lik", "unique_fraction", "hamming",
            "network_rows_per_design", "seconds")
    return method_table(results, cols, last=("KL", lambda row: "exact" if row.get("kl_exact") else "estimate"))


def sweep_table(sweep: dict, best: float) -> str:
    cols = ("kl_to_tilted", "prior_kl_to_tilted", "remaining", "kl_to_pretrained", "median_reward", "top1_share",
            "unique_fraction")
    lines = ["| DRAKES α | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for a, row in sweep.items():
        if a > 0:
            mark = " (chosen)" if a == best else ""
            lines.append(f"| {a:g}{mark} | " + " | ".join(f"{row[c]:.3g}" for c in cols) + " |")
    return "\n".join(lines)


def targets(results: dict) -> dict:
    """The issue's GB1 targets, each with its numbers and met / missed."""
    base, drakes, zero = results["base"], results["drakes"], results["drakes_alpha0"]
    ratio = drakes["median_reward"] / base["median_reward"] if base["median_reward"] else math.inf
    inf_kl = {m: results[m]["kl_to_tilted_reward_bins"] for m in INFERENCE}
    uniq = zero["unique_fraction"] / drakes["unique_fraction"]
    out = {"median_ratio": {"value": ratio, "required": 3.0, "met": ratio >= 3.0},
           "top1_share": {"value": drakes["top1_share"], "required": 0.2, "met": drakes["top1_share"] >= 0.2},
           "kl_to_tilted_below_inference": {"drakes": drakes["kl_to_tilted_reward_bins"], "inference": inf_kl,
                                            "met": all(drakes["kl_to_tilted_reward_bins"] < v for v in inf_kl.values())},
           "alpha0_unique_ratio": {"value": uniq, "required": 0.3, "met": uniq <= 0.3}}
    return out


def bench_gb1(*, work_dir: str, alphas: list[float], num_samples: int, num_steps: int, svdd_candidates: int,
              smc_particles: int, best_of_n: int, drakes_steps: int, oracle_steps: int, batch_size: int, seed: int,
              threads: int, workers: int, plot: str | None, settings: dict) -> tuple[dict, dict]:
    """The GB1 run of the module docstring: (the report, the last-line JSON)."""
    t0 = time.perf_counter()
    work = Path(work_dir)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base_dir = str(train(["experiment=gb1_base_demo", f"seed={seed}", "trainer.enable_progress_bar=false"],
                         work / "gb1_base"))
    reward_dir = str(fit_oracle(work / "oracles" / "gb1_ft", oracle_steps))
    print(f"base model {base_dir}, fine-tuning oracle {reward_dir} ({time.perf_counter() - t0:.0f} s)", flush=True)
    common = [f"reward={reward_dir}", f"num_samples={num_samples}", f"num_steps={num_steps}", f"seed={seed}",
              f"batch_size={batch_size}", "overwrite=true"]
    pool = ThreadPoolExecutor(max_workers=workers)  # subprocesses: one per core, the GIL is not held

    def drakes(a: float) -> str:
        return finetune(experiment="drakes_gb1_demo", base_dir=base_dir, alpha=a, num_steps=num_steps,
                        max_steps=drakes_steps, seed=seed, work=work, extra=[f"reward.path={reward_dir}"])

    sweep = {a: {"model": m} for a, m in zip([*alphas, 0.0], pool.map(drakes, [*alphas, 0.0]), strict=True)}
    # each alpha's distance to its own optimum, exactly (the fine-tuning reward and the pretrained model only)
    scored = pool.map(lambda a: design([f"model={sweep[a]['model']}", "method=drakes", f"target_alpha={a}",
                                        f"out={work / f'sweep_alpha{alpha_name(a)}.csv'}", *common],
                                       logs / f"sweep_{alpha_name(a)}.log"), alphas)
    land = landscape(base_dir, reward_dir, num_steps)
    for a, s in zip(alphas, scored, strict=True):
        far = prior_to_optimum(land, a)
        sweep[a] |= {"kl_to_tilted": s["kl_to_tilted"], "prior_kl_to_tilted": far,
                     "remaining": s["kl_to_tilted"] / far if far > 0 else math.inf,
                     "median_reward": s["median_reward"], "mean_reward": s["mean_reward"],
                     "kl_to_pretrained": s["kl_to_pretrained"], "top1_share": s["top1_share"],
                     "unique_fraction": s["unique_fraction"], "mean_finetune_reward": s["mean_finetune_reward"]}
        print(f"DRAKES alpha={a}: exact KL to its optimum {s['kl_to_tilted']:.3f} (the pretrained model's: {far:.3f}), "
              f"median fitness {s['median_reward']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    # the alpha whose fine-tuning went furthest towards its own optimum: the least remaining share of the
    # pretrained model's exact KL to it (fine-tuning reward and pretrained model only; never the evaluation oracle)
    best = min(alphas, key=lambda a: sweep[a]["remaining"])
    target = [f"target_alpha={best}"]
    runs = {"base": [f"model={base_dir}", "method=base"],
            "drakes": [f"model={sweep[best]['model']}", "method=drakes"],
            "drakes_alpha0": [f"model={sweep[0.0]['model']}", "method=drakes"],
            **inference_runs(base_dir, alpha=best, svdd_candidates=svdd_candidates, smc_particles=smc_particles,
                             best_of_n=best_of_n)}
    done = pool.map(lambda name: design([*runs[name], *target, *common, f"out={work / f'{name}.csv'}"],
                                        logs / f"{name}.log"), runs)
    results = dict(zip(runs, done, strict=True))
    pool.shutdown()
    for name, r in results.items():
        print(f"{name}: median fitness {r['median_reward']:.3f}, top-1 % {r['top1_share']:.3f}, KL to optimum "
              f"{r['kl_to_tilted']:.3f} ({'exact' if r['kl_exact'] else 'estimate'}), "
              f"{r['network_rows_per_design']:.1f} rows/design", flush=True)
    front = frontier(land, best, [2.0 ** (k / 2) for k in range(12, -10, -1)])
    met = targets(results)
    settings = {**settings, "alpha": best}
    report = {"task": "design", "dataset": "gb1", "settings": settings, "sweep": {str(k): v for k, v in sweep.items()},
              "results": results, "frontier": front, "targets": met, "load_average": list(os.getloadavg()),
              "wall_seconds": time.perf_counter() - t0, "provenance": provenance(seed=seed, settings=settings,
                                                                                 source=base_dir)}
    if plot:
        plot_reward_vs_kl(results, front, Path(plot))
    print(sweep_table(sweep, best), flush=True)
    print(markdown_table(results), flush=True)
    print(targets_line(met), flush=True)
    return report, {**results, "base_model_dir": base_dir, "drakes_model_dir": sweep[best]["model"],
                    "reward_dir": reward_dir, "alpha": best, "targets": {k: v["met"] for k, v in met.items()}}


def bench_design(*, work_dir: str = "runs/design_demo", alphas: list[float] = (0.5, 1.0, 2.0), num_samples: int = 2048,
                 num_steps: int = 8, svdd_candidates: int = 21, smc_particles: int = 9, best_of_n: int = 16,
                 drakes_steps: int = 200, oracle_steps: int = 2000, batch_size: int = 512, seed: int = 0,
                 threads: int = 1, workers: int = 2, out: str = "benchmarks/results/design.json",
                 plot: str | None = "benchmarks/results/design_reward_vs_kl.png", gb1: bool = True, dna: bool = False,
                 dna_settings: dict | None = None) -> dict:
    """GB1 (``gb1``, the module docstring) and DNA (``dna``: ``dlm.bench.design_dna.bench_dna(**dna_settings)``)
    into one report ``out``: GB1's keys at the top level, DNA's in its ``dna`` block. With ``gb1=false`` the GB1
    part of an existing ``out`` is kept and only its ``dna`` block is replaced; with ``dna=false`` its ``dna``
    block is kept. Returns the last-line JSON: GB1's methods and directories, plus ``dna`` (its methods,
    directories and targets) when it ran."""
    if not (gb1 or dna):
        raise ConfigError("gb1=false and dna=false: nothing to run; set gb1=true and/or dna=true")
    t0 = time.perf_counter()
    # every subprocess: these networks are tiny, and on a busy 2-core machine one thread per process is fastest
    os.environ["OMP_NUM_THREADS"] = str(threads)
    dna_block = dna_line = None
    if dna:
        from dlm.bench.design_dna import bench_dna, check_dna_settings

        dna_settings = check_dna_settings(dna_settings or {}, workers=workers, seed=seed, out=out)
    if gb1:
        settings = {"alphas": list(alphas), "num_samples": num_samples, "num_steps": num_steps,
                    "svdd_candidates": svdd_candidates, "smc_particles": smc_particles, "best_of_n": best_of_n,
                    "drakes_steps": drakes_steps, "oracle_steps": oracle_steps, "threads": threads, "workers": workers,
                    "dna": dna}
        report, line = bench_gb1(work_dir=work_dir, alphas=list(alphas), num_samples=num_samples, num_steps=num_steps,
                                 svdd_candidates=svdd_candidates, smc_particles=smc_particles, best_of_n=best_of_n,
                                 drakes_steps=drakes_steps, oracle_steps=oracle_steps, batch_size=batch_size, seed=seed,
                                 threads=threads, workers=workers, plot=plot, settings=settings)
    else:
        report, line = previous_report(Path(out)), {}
    if dna:
        report["dna"] = "not finished: the DNA part was interrupted"  # the GB1 part is safe on disk meanwhile
        write_json_atomic(Path(out), report)
        dna_block, dna_line = bench_dna(**dna_settings)
    report["dna"] = dna_block if dna_block is not None else kept_dna_block(Path(out)) or "not run (dna=false)"
    write_json_atomic(Path(out), report)
    return {**line, **({"dna": dna_line} if dna_line else {}), "out": out, "wall_seconds": time.perf_counter() - t0}


def kept_dna_block(out: Path) -> dict | None:
    """The ``dna`` block of the design report already at ``out`` (a ``dna=false`` run keeps it, as a ``gb1=false``
    run keeps the GB1 part; its own provenance dates it), or None."""
    import json

    try:
        report = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    block = report.get("dna") if isinstance(report, dict) and report.get("task") == "design" else None
    return block if isinstance(block, dict) else None


def previous_report(out: Path) -> dict:
    """The report already at ``out`` (its GB1 part is kept by a ``gb1=false`` run), or a DNA-only report."""
    import json

    if out.is_file():
        try:
            report = json.loads(out.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ConfigError(f"out={out} is not a JSON report ({err}); choose another out= or delete it") from None
        if report.get("task") != "design":
            raise ConfigError(f"out={out} is not a dlm-bench design report; choose another out= or delete it")
        return report
    return {"task": "design", "dataset": "dna"}
