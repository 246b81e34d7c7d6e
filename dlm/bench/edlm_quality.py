"""``dlm-bench edlm``: EDLM's quality-matched speed claim, measured against the base sampler in one run.

Rows: the ancestral sampler (``base_steps``) and EDLM with the AR energy and the NCE energy for every
(k, w, steps) in the grid, each sampled at batch 8 (quality: ``num_samples`` samples) and at batch 1
(speed: ``batch1_samples`` samples), length 128. Quality is judged by an **independent** AR model: the
benchmark trains it itself (another seed, and a training set of its own: the odd-numbered pydoc
topics, so it is neither the energy nor the energy's twin). A judge equal to the AR energy would make
the comparison circular (EDLM-AR resamples by exactly that model's likelihood).

Reported per row: gen-PPL with a standard error over samples (delta method on the pooled NLL ratio),
mean unigram entropy (judge tokens), seconds per sample at batch 1 and 8, nfe and energy calls.
Target (EDLM's "1.3x at equal quality"): some EDLM setting reaches the base sampler's gen-PPL at
``reference_steps`` steps (within one standard error) in <= 0.77x its seconds per sample (batch 1),
with entropy >= 0.95x the base's.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from dlm.eval.diversity import mean_entropy
from dlm.eval.gen_job import read_sample_texts
from dlm.eval.gen_ppl import generative_perplexity_of_ids, load_judge
from dlm.eval.sample_job import sample_to_jsonl
from dlm.io.atomic import write_json_atomic
from dlm.io.energy_dir import load_energy
from dlm.io.model_dir import load_model_dir
from dlm.samplers.ancestral import AncestralSampler
from dlm.samplers.importance import ImportanceSampler


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


def train(args: list[str], run_dir: Path) -> Path:
    """Run ``dlm-train`` (a subprocess: Lightning owns the process) and return the exported model directory."""
    if not (run_dir / "model" / "model.json").is_file():
        subprocess.run([sys.executable, "-m", "dlm", "train", *args, f"run_dir={run_dir}"], check=True,
                       stdout=subprocess.DEVNULL)
    return run_dir / "model"


def gen_ppl_with_se(texts: list[str], judge) -> dict:
    """Pooled gen-PPL over samples and its standard error (ratio estimator, delta method)."""
    ids = [judge.encode(t) for t in texts]
    per = [generative_perplexity_of_ids([s], judge, progress=False) for s in ids]  # one bar per text would flood
    nll = torch.tensor([p["nll"] * p["tokens"] for p in per], dtype=torch.float64)
    tok = torch.tensor([p["tokens"] for p in per], dtype=torch.float64)
    mean = float(nll.sum() / tok.sum())
    n = len(per)
    resid = nll - mean * tok
    se_log = float(resid.std(unbiased=True) / math.sqrt(n) / tok.mean()) if n > 1 else float("nan")
    ppl = math.exp(mean)
    return {"gen_ppl": ppl, "gen_ppl_se": ppl * se_log, "entropy": mean_entropy(ids)}


def run_row(model_dir: Path, sampler, *, name: str, judge, length: int, num_samples: int, batch1_samples: int,
            seed: int, tmp: Path) -> dict:
    quality = sample_to_jsonl(model_dir, sampler, num_samples=num_samples, length=length, batch_size=8, seed=seed,
                              device="cpu", out=tmp / f"{name}.jsonl")
    speed = sample_to_jsonl(model_dir, sampler, num_samples=batch1_samples, length=length, batch_size=1, seed=seed,
                            device="cpu", out=tmp / f"{name}.b1.jsonl")
    scores = gen_ppl_with_se(read_sample_texts(tmp / f"{name}.jsonl"), judge)
    row = {"name": name, **scores, "seconds_per_sample_b8": quality["seconds_per_sample"],
           "seconds_per_sample_b1": speed["seconds_per_sample"], "nfe": quality["nfe"],
           "energy_calls_per_batch": quality.get("energy_calls", 0) / math.ceil(num_samples / 8)}
    print(f"{name:<28} gen_ppl {row['gen_ppl']:7.2f} +- {row['gen_ppl_se']:5.2f}  entropy {row['entropy']:.3f}  "
          f"b1 {row['seconds_per_sample_b1']:6.3f} s  b8 {row['seconds_per_sample_b8']:6.3f} s/sample", flush=True)
    return row


def plot_rows(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    families = {}
    for r in rows:
        families.setdefault(r["family"], []).append(r)
    for fam, rs in families.items():
        ax.errorbar([r["seconds_per_sample_b1"] for r in rs], [r["gen_ppl"] for r in rs],
                    yerr=[r["gen_ppl_se"] for r in rs], fmt="o", label=fam, ms=4, capsize=2)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per sample, batch 1 (CPU, log scale)")
    ax.set_ylabel("gen-PPL under an independent AR judge")
    ax.set_title("EDLM vs the base sampler (demo models, length 128)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def bench_edlm(*, radd: str, ar: str, nce: str | None = None, judge: str | None = None, work_dir: str = "runs/bench_edlm",
               length: int = 128, num_samples: int = 32, batch1_samples: int = 4, base_steps: list[int],
               edlm_steps: list[int], ks: list[int], windows: list[float], reference_steps: int = 128,
               seed: int = 0, threads: int = 2, out: str = "benchmarks/results/edlm.json",
               plot: str | None = "benchmarks/results/edlm_time_vs_genppl.png") -> dict:
    """The EDLM benchmark (module docstring). ``nce``/``judge`` None: trained here into ``work_dir``."""
    torch.set_num_threads(threads)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if judge is None:
        corpus = judge_corpus(work / "judge_corpus.jsonl")
        judge = str(train(["experiment=demo_ar", "seed=1", "data=text_file", f"data.source={corpus.resolve()}"],
                          work / "judge"))
    if nce is None:
        nce = str(train(["experiment=edlm_nce_demo", f"init_from={Path(radd).resolve()}"], work / "nce"))
    scorer = load_judge(judge, device="cpu")
    schedule = load_model_dir(radd).schedule
    energies = {"ar": load_energy(ar, denoiser=radd), "nce": load_energy(nce, denoiser=radd)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in base_steps:
            sampler = AncestralSampler(num_steps=n, row_cache="row", schedule=schedule)
            rows.append({"family": "base", "steps": n, "k": 1, "window": 0.0,
                         **run_row(radd, sampler, name=f"base_{n}", judge=scorer, length=length,
                                   num_samples=num_samples, batch1_samples=batch1_samples, seed=seed, tmp=Path(tmp))})
        for energy_name, energy in energies.items():
            for k in ks:
                for w in windows:
                    for n in edlm_steps:
                        sampler = ImportanceSampler(energy=energy, num_candidates=k, window=w, num_steps=n,
                                                    schedule=schedule)
                        name = f"edlm_{energy_name}_k{k}_w{w:g}_{n}"
                        rows.append({"family": f"edlm_{energy_name}", "steps": n, "k": k, "window": w,
                                     **run_row(radd, sampler, name=name, judge=scorer, length=length,
                                               num_samples=num_samples, batch1_samples=batch1_samples, seed=seed,
                                               tmp=Path(tmp))})
    ref = next(r for r in rows if r["family"] == "base" and r["steps"] == reference_steps)
    for r in rows:
        r["time_ratio_vs_ref"] = r["seconds_per_sample_b1"] / ref["seconds_per_sample_b1"]
        r["entropy_ratio_vs_ref"] = r["entropy"] / ref["entropy"]
        r["matches_ref_quality"] = r["gen_ppl"] <= ref["gen_ppl"] + ref["gen_ppl_se"]
    qualifying = [r for r in rows if r["family"] != "base" and r["matches_ref_quality"]
                  and r["entropy_ratio_vs_ref"] >= 0.95]
    best = min(qualifying, key=lambda r: r["time_ratio_vs_ref"]) if qualifying else None
    report = {"task": "edlm", "radd": radd, "ar_energy": ar, "nce_energy": nce, "judge": judge, "length": length,
              "num_samples": num_samples, "batch1_samples": batch1_samples, "threads": threads,
              "torch": torch.__version__, "reference": ref["name"], "rows": rows,
              "best": None if best is None else best["name"],
              "best_time_ratio": None if best is None else best["time_ratio_vs_ref"],
              "target_met": best is not None and best["time_ratio_vs_ref"] <= 0.77}
    write_json_atomic(Path(out), report)
    if plot:
        plot_rows(rows, Path(plot))
    print(f"reference {ref['name']}: gen_ppl {ref['gen_ppl']:.2f} +- {ref['gen_ppl_se']:.2f}, "
          f"{ref['seconds_per_sample_b1']:.3f} s/sample at batch 1")
    print("best EDLM at the reference's quality:", "none" if best is None else
          f"{best['name']} at {best['time_ratio_vs_ref']:.2f}x the time (target <= 0.77x)")
    return {"out": out, "rows": len(rows), "best": report["best"], "best_time_ratio": report["best_time_ratio"],
            "target_met": report["target_met"]}
