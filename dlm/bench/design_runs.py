"""The runs both halves of ``dlm-bench design`` (GB1: ``design_demo``, DNA: ``design_dna``) are made of: DRAKES
fine-tuning and ``dlm-design`` jobs as subprocesses (each is what a user runs), the inference-time methods at
matched network calls, and the printed table.

Matched compute: every method samples on one grid of ``num_steps`` steps; SVDD's M candidates (1 + M denoiser rows
per row per step), SMC's k particles (2 rows per particle per step) and best-of-N's N samples are chosen by the
caller so that ``network_rows_per_design`` (measured by ``dlm-design``) is about equal; DRAKES and CG sample at
the base cost.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from dlm.bench.judged_quality import train

METHODS = ("base", "drakes", "drakes_alpha0", "svdd", "smc", "cg", "best_of_n")
INFERENCE = ("svdd", "smc", "cg", "best_of_n")


def design(args: list[str], log: Path) -> dict:
    """``dlm design <args>`` as a subprocess; its last stdout line (the JSON summary); stderr kept in ``log``."""
    with open(log, "w", encoding="utf-8") as err:
        proc = subprocess.run([sys.executable, "-m", "dlm", "design", *args], stdout=subprocess.PIPE, stderr=err,
                              text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dlm design {' '.join(args)} failed ({proc.returncode}); see {log}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def alpha_name(alpha: float) -> str:
    return f"{alpha:g}".replace(".", "p")


def finetune(*, experiment: str, base_dir: str, alpha: float, num_steps: int, max_steps: int, seed: int,
             work: Path, extra: list[str] = ()) -> str:
    """``dlm-train experiment=<DRAKES recipe>`` from ``base_dir`` at KL weight ``alpha`` into
    ``work/drakes_alpha<α>`` (reused when its model is there); returns the model directory."""
    return str(train([f"experiment={experiment}", f"init_from={base_dir}", f"objective.alpha={alpha}",
                      f"objective.num_steps={num_steps}", f"trainer.max_steps={max_steps}", f"seed={seed}",
                      "trainer.enable_progress_bar=false", *extra], work / f"drakes_alpha{alpha_name(alpha)}"))


def inference_runs(base_dir: str, *, alpha: float, svdd_candidates: int, smc_particles: int,
                   best_of_n: int) -> dict[str, list[str]]:
    """``dlm-design`` arguments of the inference-time methods on the pretrained model: SVDD, SMC and CG target
    p_pre exp(r/α)/Z at the given α; best-of-N keeps the best of N base samples."""
    return {"svdd": [f"model={base_dir}", "method=svdd", f"method.sampler.num_candidates={svdd_candidates}",
                     f"method.sampler.alpha={alpha}"],
            "smc": [f"model={base_dir}", "method=smc", f"method.sampler.num_particles={smc_particles}",
                    f"method.sampler.alpha={alpha}"],
            "cg": [f"model={base_dir}", "method=cg", f"method.sampler.alpha={alpha}"],
            "best_of_n": [f"model={base_dir}", "method=best_of_n", f"method.sampler.num_candidates={best_of_n}"]}


def method_table(results: dict, cols: tuple[str, ...], *, label: str = "method",
                 last: tuple[str, Callable[[dict], str]] | None = None) -> str:
    """A markdown table: one row per method of ``results`` ({name: summary}), the numeric ``cols`` to 3
    significant digits ("—" when absent), and optionally a ``last`` (header, cell of a row) column."""
    head = [label, *cols, *([last[0]] if last else [])]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, row in results.items():
        cells = [("—" if row.get(c) is None else f"{row[c]:.3g}") for c in cols]
        lines.append(f"| {name} | " + " | ".join([*cells, *([last[1](row)] if last else [])]) + " |")
    return "\n".join(lines)


def targets_line(met: dict) -> str:
    return "targets: " + "; ".join(f"{k} {'met' if v['met'] else 'missed'}" for k, v in met.items())
