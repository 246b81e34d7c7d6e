"""``dlm-bench lsd``: learned few-step sampler schedules (LSD, LSD+) against the base sampler, at matched entropy.

One run on the demo RADD model. For every student step count N in ``steps``:

1. **Training**: an LSD and an LSD+ schedule through the real recipe (``dlm-train experiment=lsd_demo
   init_from=<radd> objective.num_steps=N [objective.learn_grid=true]``, a subprocess, settings in
   ``train``), wall-clock seconds recorded (target <= ``train_budget_s``).
2. **Rows** (``num_samples`` samples of ``length`` tokens, seed ``seed``, batch ``batch_size``): the base
   ancestral sampler with N steps at temperature 1, LSD, LSD+, the ``teacher_steps``-step ancestral
   sampler (the teacher), each scored by an **independent** AR judge (``dlm.bench.judged_quality``:
   trained on the odd-numbered pydoc topics with another seed, never the demo AR model): gen-PPL with a
   standard error over samples, mean unigram entropy (judge tokens), seconds per sample.
   At N = 8 also a hand-set reference profile (``REFERENCE_SCALES``: sharpens the late steps only).
3. **Matched entropy**: a per-step temperature lowers gen-PPL by sharpening alone, so each student is
   compared with the base sampler at the global temperature whose entropy matches the student's
   (``match_temperature``: regula falsi in log T on common random numbers, accepted within
   ``entropy_tolerance`` = 2 %, refined towards ``refine_tolerance``). The base sampler is also matched
   to the teacher's entropy (how much of the base-teacher gap sharpening alone closes).
4. **The model's own measure**: the judge's unigram entropy does not see a profile that sharpens the
   conditionals while keeping the character frequencies, so every row also records its *path entropy*
   (each sample's NLL under the distributions its tokens were drawn from, ``sampler_nll``, per generated
   token) and, where compared, its *self-NELBO* under the denoiser (``nelbo_draws`` draws, one seed for
   every row). Each student is matched a second time, on path entropy, and scored by ``self_closure`` (the
   gap taken at the teacher's path entropy) and by the judge against that base.

Gap closure of a student s at N steps, everything at the student's entropy except the teacher::

    closure = (PPL(base_N @ T*) - PPL(s)) / (PPL(base_N @ T*) - PPL(teacher))

with a standard error from the paired difference (the student and the matched base share their random
numbers: ``paired_log_ratio_se``) and the unpaired gap. Target: LSD+ at ``target_steps`` (8) closes
>= ``target_closure`` (30 %) of the gap, with training within ``train_budget_s`` (5 min).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dlm.bench.judged_quality import (
    SampleNLL,
    gen_ppl_with_se,
    independent_judge,
    paired_log_ratio_se,
    sample_nlls,
)
from dlm.bench.judged_quality import train as train_run
from dlm.errors import ConfigError
from dlm.eval.gen_job import read_sample_texts
from dlm.eval.gen_ppl import Judge, load_judge
from dlm.eval.perplexity import nelbo_per_sequence
from dlm.eval.sample_job import sample_to_jsonl
from dlm.io.atomic import write_json_atomic
from dlm.io.model_dir import LoadedModel, load_model_dir
from dlm.io.provenance import provenance
from dlm.samplers.ancestral import AncestralSampler
from dlm.samplers.learned_schedule import LearnedScheduleSampler, load_step_schedule
from dlm.types import Sampler

VARIANTS = {"lsd": False, "lsd_plus": True}  # name -> objective.learn_grid
# tiny settings for tests (``quick=true``): the whole run in well under a minute on a tiny model
QUICK = {"steps": [2], "teacher_steps": 8, "length": 16, "num_samples": 4, "batch_size": 4, "max_search_evals": 4,
         "nelbo_draws": 2,
         "target_steps": 2, "train": {"teacher_steps": 4, "max_steps": 2, "batch_size": 2}}
# a hand-set profile that sharpens the late steps only: the reference the notes measure LSD against
REFERENCE_SCALES = {8: (0.95, 0.96, 0.98, 1.0, 1.05, 1.12, 1.25, 1.4)}
TRAIN_DEFAULTS = {"teacher_steps": 32, "max_steps": 40, "batch_size": 8, "lr": 0.02}


@dataclass
class TemperatureMatch:
    """The global sampler temperature whose entropy is closest to ``target`` among ``evaluations``
    [(temperature, entropy), ...] in the order they were made; ``relative_error`` = entropy / target - 1."""

    temperature: float
    entropy: float
    target: float
    evaluations: list[tuple[float, float]] = field(default_factory=list)

    @property
    def relative_error(self) -> float:
        return self.entropy / self.target - 1.0


def match_temperature(entropy_at: Callable[[float], float], target: float, *, tolerance: float = 0.02,
                      refine_tolerance: float = 0.0025, temperature_range: tuple[float, float] = (0.5, 2.0),
                      max_evals: int = 6, start: float = 1.0, expand: float = 1.15) -> TemperatureMatch:
    """Find T in ``temperature_range`` with |entropy_at(T) / target - 1| <= ``tolerance`` (entropy grows with T).

    Starts at ``start``; stops once within ``refine_tolerance`` or after ``max_evals`` calls of
    ``entropy_at`` (each one a sampling run). Brackets the target by stepping T by the factor ``expand``,
    then narrows the bracket by regula falsi in log T (each new point kept inside the middle 80 %). Raises
    ConfigError naming ``temperature_range`` (target outside the reachable entropies) or
    ``max_search_evals`` (reachable but not reached).
    """
    lo, hi = float(temperature_range[0]), float(temperature_range[1])
    if not 0.0 < lo <= start <= hi:
        raise ConfigError(f"temperature_range=[{lo}, {hi}] must be positive and contain the start temperature {start}")
    evals: dict[float, float] = {}

    def rel(t: float) -> float:
        if t not in evals:
            evals[t] = float(entropy_at(t))
        return evals[t] / target - 1.0

    def done() -> TemperatureMatch:
        t = min(evals, key=lambda k: abs(evals[k] / target - 1.0))
        return TemperatureMatch(temperature=t, entropy=evals[t], target=target, evaluations=list(evals.items()))

    a = b = start
    r = rel(start)
    if abs(r) <= refine_tolerance:
        return done()
    # bracket: a (entropy below target) < b (entropy above)
    range_exhausted = False
    while len(evals) < max_evals:
        if r < 0:
            if b >= hi:
                range_exhausted = True
                break
            a, b = b, min(b * expand, hi)
            r = rel(b)
            if r >= 0:
                break
        else:
            if a <= lo:
                range_exhausted = True
                break
            a, b = max(a / expand, lo), a
            r = rel(a)
            if r <= 0:
                break
    bracketed = rel(a) <= 0 <= rel(b) and a < b
    while bracketed and len(evals) < max_evals and abs(rel(done().temperature)) > refine_tolerance:
        la, lb, ra, rb = math.log(a), math.log(b), rel(a), rel(b)
        lm = la - ra * (lb - la) / (rb - ra) if rb != ra else 0.5 * (la + lb)
        lm = min(max(lm, la + 0.1 * (lb - la)), lb - 0.1 * (lb - la))
        m = math.exp(lm)
        if rel(m) < 0:
            a = m
        else:
            b = m
    best = done()
    if abs(best.relative_error) <= tolerance:
        return best
    reached = sorted(evals.values())
    if not bracketed and range_exhausted:
        raise ConfigError(f"temperature_range=[{lo}, {hi}]: the base sampler's entropy spans "
                          f"[{reached[0]:.4f}, {reached[-1]:.4f}] there, not the target {target:.4f} "
                          f"(+-{tolerance:.0%}); widen temperature_range")
    raise ConfigError(f"max_search_evals={max_evals}: the closest entropy reached is {best.entropy:.4f} at "
                      f"T={best.temperature:.4f}, {best.relative_error:+.2%} from the target {target:.4f} "
                      f"(tolerance {tolerance:.0%}); raise max_search_evals or num_samples (entropy noise)")


@dataclass
class Scored:
    """One row's numbers (``row``, JSON-able) and its per-sample judge scores (for paired errors); the model's
    own per-sample measures, nats per generated token: ``path_nll`` (S,) the sample's NLL under the sampler's
    own draws (its mean: the path entropy), ``self_nelbo`` (S,) its NELBO under the denoiser (filled on demand
    by ``RowRunner.score_self``)."""

    row: dict[str, Any]
    scores: SampleNLL
    tokens: Tensor
    path_nll: Tensor
    self_nelbo: Tensor | None = None


class RowRunner:
    """Samples ``num_samples`` rows with a sampler and scores them (gen-PPL +- s.e., entropy, s/sample).

    Every row uses the same seed and batch layout, so two samplers that differ little draw nearly the same
    samples (common random numbers: paired comparisons are sharp)."""

    def __init__(self, *, model_dir: str, judge: Judge, length: int, num_samples: int, batch_size: int, seed: int,
                 tmp: Path, denoiser: LoadedModel, nelbo_draws: int = 16) -> None:
        self.model_dir, self.judge, self.length = model_dir, judge, length
        self.num_samples, self.batch_size, self.seed, self.tmp = num_samples, batch_size, seed, tmp
        self.denoiser, self.nelbo_draws = denoiser, nelbo_draws
        self._count = 0

    def __call__(self, sampler: Sampler, **labels: Any) -> Scored:
        """``sampler`` must record its draws (``record_trajectory=True``): the path entropy is read from them."""
        self._count += 1
        out = self.tmp / f"row{self._count}.jsonl"
        job = sample_to_jsonl(self.model_dir, sampler, num_samples=self.num_samples, length=self.length,
                              batch_size=self.batch_size, seed=self.seed, device="cpu", out=out)
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        texts = read_sample_texts(out)
        scores = sample_nlls(texts, self.judge)
        if "sampler_nll" not in records[0]:
            raise ConfigError(f"{type(sampler).__name__} recorded no draws: the LSD benchmark reads each row's path "
                              "entropy from them; build its samplers with record_trajectory=True")
        tokens = torch.tensor([r["tokens"] for r in records])
        path_nll = torch.tensor([r["sampler_nll"] for r in records], dtype=torch.float64) / job["generated_per_sample"]
        row = {**labels, **gen_ppl_with_se(texts, self.judge, scores), "path_entropy": float(path_nll.mean()),
               "seconds_per_sample": job["seconds_per_sample"], "nfe": job["nfe"]}
        print(f"{row.get('name', ''):<34} gen_ppl {row['gen_ppl']:8.2f} +- {row['gen_ppl_se']:6.2f}  "
              f"entropy {row['entropy']:.4f}  path entropy {row['path_entropy']:.4f}  "
              f"{row['seconds_per_sample']:.4f} s/sample", flush=True)
        return Scored(row=row, scores=scores, tokens=tokens, path_nll=path_nll)

    def score_self(self, scored: Scored) -> Scored:
        """Fill ``scored.self_nelbo``: each sample's NELBO (nats per token) under the denoiser that drew it,
        ``nelbo_draws`` Monte Carlo draws from one fixed seed, so every row is scored with the same masks and
        times (paired differences between rows are sharp). Adds ``self_nelbo`` (+- ``self_nelbo_se``) to the row."""
        if scored.self_nelbo is None:
            d = self.denoiser
            per_sample = []
            generator = torch.Generator().manual_seed(self.seed + 1)
            with torch.no_grad():
                for start in range(0, scored.tokens.shape[0], self.batch_size):
                    x0 = scored.tokens[start:start + self.batch_size]
                    nelbo, _, n = nelbo_per_sequence(d.model, {"input_ids": x0}, num_samples=self.nelbo_draws,
                                                     schedule=d.schedule, generator=generator,
                                                     keep_first_token=d.record.keep_first_token)
                    per_sample.append(nelbo / n.double())
            scored.self_nelbo = torch.cat(per_sample)
            n = scored.self_nelbo.numel()
            scored.row["self_nelbo"] = float(scored.self_nelbo.mean())
            scored.row["self_nelbo_se"] = float(scored.self_nelbo.std() / math.sqrt(n)) if n > 1 else float("nan")
        return scored


def train_schedule(*, radd: str, steps: int, learn_grid: bool, run_dir: Path, length: int, seed: int,
                   settings: dict[str, Any], retrain: bool) -> dict[str, Any]:
    """One LSD / LSD+ schedule through ``dlm-train experiment=lsd_demo``; returns its training record
    (schedule directory, wall-clock seconds, last losses, the learned grid and scalars)."""
    if retrain and run_dir.exists():
        shutil.rmtree(run_dir)  # a new run (the recipe refuses a run directory that holds checkpoints)
    fresh = not (run_dir / "schedule" / "schedule.json").is_file()
    args = ["experiment=lsd_demo", f"init_from={Path(radd).resolve()}", f"objective.num_steps={steps}",
            f"objective.learn_grid={str(learn_grid).lower()}", f"objective.teacher_steps={settings['teacher_steps']}",
            f"trainer.max_steps={settings['max_steps']}", f"trainer.val_check_interval={settings['max_steps']}",
            "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", f"batch_size={settings['batch_size']}",
            f"optim.lr={settings['lr']}", f"data.seq_len={length}", f"seed={seed}"]
    t0 = time.perf_counter()
    schedule_dir = train_run(args, run_dir, product="schedule", marker="schedule.json")
    seconds = time.perf_counter() - t0 if fresh else None  # None: an earlier run's schedule was reused
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"variant": "lsd_plus" if learn_grid else "lsd", "steps": steps, "schedule_dir": str(schedule_dir),
            "train_seconds": seconds, "train_steps": summary.get("step"), "val_kl": summary.get("val/kl"),
            "train_kl": summary.get("train/kl"), "timesteps": summary["timesteps"],
            "logit_scales": summary["logit_scales"], "rate_scales": summary["rate_scales"]}


def closure(base: Scored, student: Scored, teacher: Scored) -> dict[str, float | None]:
    """Fraction of the base-teacher gen-PPL gap the student closes (module docstring), with standard errors:
    the numerator paired (shared random numbers), the gap unpaired."""
    pb, ps, pt = base.row["gen_ppl"], student.row["gen_ppl"], teacher.row["gen_ppl"]
    gap, closed = pb - pt, pb - ps
    se_closed = math.sqrt(pb * ps) * paired_log_ratio_se(base.scores, student.scores)
    se_gap = math.hypot(base.row["gen_ppl_se"], teacher.row["gen_ppl_se"])
    frac = closed / gap if gap > 0 else None
    se_frac = math.sqrt(se_closed**2 + frac**2 * se_gap**2) / gap if frac is not None else None
    return {"gap": gap, "gap_se": se_gap, "closed": closed, "closed_se": se_closed, "closure": frac,
            "closure_se": se_frac}


def self_closure(base: Scored, student: Scored, base_at_teacher: Scored, teacher: Scored) -> dict[str, float | None]:
    """The student's gain by the denoiser's own measure, as a fraction of the base-teacher gap: (NELBO(base) -
    NELBO(student)) / (NELBO(base_at_teacher) - NELBO(teacher)), nats per token, ``base`` matched to the
    student's path entropy and ``base_at_teacher`` to the teacher's (the gap at the teacher's entropy: a
    student whose entropy differs from the teacher's is not judged against a gap that shrinks or flips
    with it). The numerator's error from the paired per-sample differences, the gap's unpaired. All four
    rows scored (``RowRunner.score_self``)."""
    nb, ns = base.self_nelbo, student.self_nelbo
    gap = float(base_at_teacher.self_nelbo.mean() - teacher.self_nelbo.mean())
    closed = float(nb.mean() - ns.mean())
    se_closed = float((nb - ns).std() / math.sqrt(nb.numel()))
    se_gap = math.hypot(base_at_teacher.row["self_nelbo_se"], teacher.row["self_nelbo_se"])
    frac = closed / gap if gap > 0 else None
    se_frac = math.sqrt(se_closed**2 + frac**2 * se_gap**2) / gap if frac is not None else None
    return {"gap": gap, "gap_se": se_gap, "closed": closed, "closed_se": se_closed, "closure": frac,
            "closure_se": se_frac}


def plot_rows(rows: list[dict], path: Path, *, teacher: dict) -> None:
    """gen-PPL (+- s.e.) against the number of steps, one line per sampler family; the teacher as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    labels = {"base": "base (ancestral, T = 1)", "lsd": "LSD", "lsd_plus": "LSD+",
              "base_at_lsd_plus_entropy": "base at LSD+'s entropy (matched T)",
              "base_at_teacher_entropy": "base at the teacher's entropy"}
    for i, (family, label) in enumerate(labels.items()):
        rs = sorted((r for r in rows if r["family"] == family and r.get("matched", True)), key=lambda r: r["steps"])
        if rs:
            ax.errorbar([r["steps"] * (1 + 0.03 * (i - 2)) for r in rs], [r["gen_ppl"] for r in rs],
                        yerr=[r["gen_ppl_se"] for r in rs], fmt="o-", label=label, ms=4, capsize=2)
    ax.axhline(teacher["gen_ppl"], color="k", lw=1, label=f"teacher ({teacher['steps']} steps)")
    ax.axhspan(teacher["gen_ppl"] - teacher["gen_ppl_se"], teacher["gen_ppl"] + teacher["gen_ppl_se"], color="k",
               alpha=0.1)
    steps = sorted({r["steps"] for r in rows if r["family"] == "base"})
    ax.set_xscale("log", base=2)
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.set_xlabel("sampling steps (network calls)")
    ax.set_ylabel("gen-PPL under an independent AR judge")
    ax.set_title("LSD / LSD+ vs the base sampler (demo RADD model)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(report: dict) -> str:
    """The README table of a report: one line per row, matched rows with their temperature; a student's line
    carries both closures (the judge's at matched entropy, the model's own at matched path entropy)."""
    lines = ["| sampler | steps | T | gen-PPL ± s.e. | entropy | closure (judge) | path entropy | self-NELBO "
             "| closure (model) | closure (judge, path entropy) | s/sample |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    closures = {(c["variant"], c["steps"]): c for c in report["closures"]}

    def frac(c: dict | None) -> str:
        return "" if c is None or c["closure"] is None else f"{c['closure']:+.0%} ± {c['closure_se']:.0%}"

    for r in report["rows"]:
        if not r.get("matched", True):
            lines.append(f"| {r['name']} | {r['steps']} | – | not matched: {r['error']} | | | | | | | |")
            continue
        c = closures.get((r["family"], r["steps"]))
        nelbo = f"{r['self_nelbo']:.4f} ± {r['self_nelbo_se']:.4f}" if "self_nelbo" in r else ""
        lines.append(f"| {r['name']} | {r['steps']} | {r['temperature']:.3f} | {r['gen_ppl']:.1f} ± "
                     f"{r['gen_ppl_se']:.1f} | {r['entropy']:.3f} | {frac(c)} | {r['path_entropy']:.4f} | {nelbo} | "
                     f"{frac(None if c is None else c['self'])} | "
                     f"{frac(None if c is None or c['self'] is None else c['self']['judge'])} | "
                     f"{r['seconds_per_sample']:.3f} |")
    return "\n".join(lines)


def bench_lsd(*, radd: str, judge: str | None = None, judge_work_dir: str = "runs/bench_edlm",
              work_dir: str = "runs/bench_lsd", steps: list[int] = (4, 8, 16), teacher_steps: int = 256,
              length: int = 128, num_samples: int = 256, batch_size: int = 16, seed: int = 0,
              train: dict[str, Any] | None = None, retrain: bool = True, entropy_tolerance: float = 0.02,
              refine_tolerance: float = 0.0025, temperature_range: tuple[float, float] = (0.5, 2.0),
              max_search_evals: int = 6, nelbo_draws: int = 16, target_steps: int = 8, target_closure: float = 0.30,
              train_budget_s: float = 300.0, threads: int = 2, quick: bool = False,
              out: str = "benchmarks/results/lsd.json", plot: str | None = "benchmarks/results/lsd_genppl_vs_steps.png",
              ) -> dict:
    """The LSD benchmark (module docstring). ``judge`` None: the independent judge of ``judge_work_dir``
    (trained there once, shared with ``dlm-bench edlm``). ``quick``: the tiny settings of ``QUICK``."""
    if quick:
        steps, teacher_steps, length = QUICK["steps"], QUICK["teacher_steps"], QUICK["length"]
        num_samples, batch_size, max_search_evals = QUICK["num_samples"], QUICK["batch_size"], QUICK["max_search_evals"]
        nelbo_draws = QUICK["nelbo_draws"]
        target_steps, train = QUICK["target_steps"], {**(train or {}), **QUICK["train"]}
    settings = {**TRAIN_DEFAULTS, **(train or {})}
    steps = [int(n) for n in steps]
    if target_steps not in steps:
        raise ConfigError(f"target_steps={target_steps} is not among steps={steps}")
    if any(teacher_steps <= n for n in steps):
        raise ConfigError(f"teacher_steps={teacher_steps} must exceed every student step count in steps={steps}")
    torch.set_num_threads(threads)
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if judge is None:
        Path(judge_work_dir).mkdir(parents=True, exist_ok=True)
        judge = independent_judge(Path(judge_work_dir))
    scorer = load_judge(judge, device="cpu")
    denoiser = load_model_dir(radd)
    noise = denoiser.schedule

    trained = {}
    for n in steps:
        for variant, learn_grid in VARIANTS.items():
            rec = train_schedule(radd=radd, steps=n, learn_grid=learn_grid, run_dir=work / f"{variant}_{n}",
                                 length=length, seed=seed, settings=settings, retrain=retrain)
            print(f"trained {variant} N={n}: {rec['train_seconds'] or float('nan'):.1f} s, "
                  f"c = {[round(c, 3) for c in rec['logit_scales']]}", flush=True)
            trained[(variant, n)] = rec

    rows: list[dict] = []
    closures: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        run = RowRunner(model_dir=radd, judge=scorer, length=length, num_samples=num_samples, batch_size=batch_size,
                        seed=seed, tmp=Path(tmp), denoiser=denoiser, nelbo_draws=nelbo_draws)
        teacher = run(AncestralSampler(num_steps=teacher_steps, row_cache="row", schedule=noise, record_trajectory=True),
                      name=f"teacher ({teacher_steps} steps)", family="teacher", steps=teacher_steps, temperature=1.0)
        run.score_self(teacher)
        rows.append(teacher.row)
        for n in steps:
            base_cache: dict[float, Scored] = {}

            def base_at(t: float, n: int = n, cache: dict = base_cache) -> Scored:
                if t not in cache:
                    cache[t] = run(AncestralSampler(num_steps=n, row_cache="row", schedule=noise, temperature=t,
                                                    record_trajectory=True),
                                   name=f"base {n} T={t:.4f}", family="base_search", steps=n, temperature=t)
                return cache[t]

            def matched_base(target_name: str, target: Scored, measure: str, n: int = n) -> tuple[float, Scored] | None:
                """The base sampler at the temperature whose ``measure`` (entropy: the judge's unigram entropy;
                path_entropy: the sampler's own) matches ``target``'s; its row is added (or the refusal)."""
                label = "entropy" if measure == "entropy" else "path entropy"
                name, family = f"base at {target_name}'s {label}", f"base_at_{target_name}_{measure}"
                h = target.row[measure]
                try:
                    found = match_temperature(lambda t: base_at(t).row[measure], h, tolerance=entropy_tolerance,
                                              refine_tolerance=refine_tolerance, temperature_range=temperature_range,
                                              max_evals=max_search_evals)
                except ConfigError as e:
                    print(f"N={n}: no base temperature matches {target_name}'s {label}: {e}", flush=True)
                    rows.append({"name": name, "family": family, "steps": n, "matched": False, "error": str(e)})
                    return None
                matched = base_at(found.temperature)
                if measure == "path_entropy":  # scored by the model before its row is copied into the table
                    run.score_self(matched)
                rows.append({**matched.row, "name": name, "family": family, "matched": True, "matched_on": measure,
                             "entropy_target": h, "entropy_relative_error": found.relative_error,
                             "search": [{"temperature": t, measure: e} for t, e in found.evaluations]})
                return found.temperature, matched

            base = base_at(1.0)
            rows.append({**base.row, "name": "base", "family": "base"})
            targets: list[tuple[str, Scored, bool]] = [("teacher", teacher, False)]
            for variant in VARIANTS:
                rec = trained[(variant, n)]
                sampler = LearnedScheduleSampler(schedule=load_step_schedule(rec["schedule_dir"]), row_cache="row",
                                                 record_trajectory=True)
                targets.append((variant, run(sampler, name=variant.replace("_plus", "+").upper(), family=variant,
                                             steps=n, temperature=1.0, train_seconds=rec["train_seconds"]), True))
            if not quick and n in REFERENCE_SCALES:
                sampler = AncestralSampler(num_steps=n, row_cache="row", schedule=noise, record_trajectory=True,
                                           logit_scales=REFERENCE_SCALES[n])
                targets.append(("reference", run(sampler, name="hand-set profile (reference)", family="reference",
                                                 steps=n, temperature=1.0, logit_scales=list(REFERENCE_SCALES[n])),
                                True))
            at_teacher: Scored | None = None  # the base at the teacher's path entropy: the model's gap
            for target_name, target, is_student in targets:
                if is_student:
                    rows.append(run.score_self(target).row)
                by_judge = matched_base(target_name, target, "entropy")
                by_model = matched_base(target_name, target, "path_entropy")
                if not is_student:
                    at_teacher = None if by_model is None else by_model[1]
                if not is_student or by_judge is None:
                    continue
                entry = {"variant": target_name, "steps": n, "matched_temperature": by_judge[0],
                         **closure(by_judge[1], target, teacher), "unmatched": closure(base, target, teacher),
                         "self": None}
                if by_model is not None and at_teacher is not None:
                    entry["self"] = {"matched_temperature": by_model[0],
                                     **self_closure(by_model[1], target, at_teacher, teacher),
                                     "judge": closure(by_model[1], target, teacher)}
                closures.append(entry)
    hit = next((c for c in closures if c["variant"] == "lsd_plus" and c["steps"] == target_steps), None)
    train_seconds = [r["train_seconds"] for r in trained.values() if r["train_seconds"] is not None]
    target = {"steps": target_steps, "closure_required": target_closure,
              "closure": None if hit is None else hit["closure"], "closure_se": None if hit is None else hit["closure_se"],
              "closure_met": hit is not None and hit["closure"] is not None and hit["closure"] >= target_closure,
              "max_train_seconds": max(train_seconds) if train_seconds else None, "train_budget_s": train_budget_s,
              "train_time_met": bool(train_seconds) and max(train_seconds) <= train_budget_s}
    target["met"] = target["closure_met"] and target["train_time_met"]
    run_settings = {"steps": steps, "teacher_steps": teacher_steps, "length": length, "num_samples": num_samples,
                    "batch_size": batch_size, "train": settings, "entropy_tolerance": entropy_tolerance,
                    "refine_tolerance": refine_tolerance, "temperature_range": list(temperature_range),
                    "max_search_evals": max_search_evals, "nelbo_draws": nelbo_draws, "threads": threads,
                    "quick": quick}
    report = {"task": "lsd", "radd": radd, "judge": judge, "settings": run_settings, "seeds": {"sampling": seed,
              "training": seed}, "torch": torch.__version__, "rows": rows, "closures": closures,
              "training": list(trained.values()), "target": target,
              "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
              "wall_seconds": time.perf_counter() - t_start,
              "provenance": provenance(seed=seed, settings=run_settings,
                                       model={"radd": denoiser.model, "judge": scorer.model}, source=denoiser.path)}
    write_json_atomic(Path(out), report)
    if plot:
        plot_rows(rows, Path(plot), teacher=teacher.row)
    print(markdown_table(report))
    print(f"target (LSD+ at {target_steps} steps closes >= {target_closure:.0%} of the gap at matched entropy, "
          f"training <= {train_budget_s:.0f} s): closure "
          + ("n/a" if target["closure"] is None else f"{target['closure']:+.1%} +- {target['closure_se']:.1%}")
          + f", slowest training {target['max_train_seconds']} s -> {'met' if target['met'] else 'missed'}")
    return {"out": out, "rows": len(rows), "closure": target["closure"], "closure_se": target["closure_se"],
            "target_met": target["met"], "wall_seconds": report["wall_seconds"]}
