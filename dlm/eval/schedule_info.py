"""What a learned sampler schedule (LSD / LSD+) holds, for people: ``dlm-sample ... info=true``.

``schedule_info(path)`` reads a schedule directory (``dlm.io.schedule_dir``) through
``load_step_schedule`` (so the grid and scalars are recomputed from the stored parameters, not copied
from the JSON) and returns, per student step n (from t_n down to t_{n+1}): the interval, its length
Delta_n, the logit temperature c_n and the rate scale kappa_n, with the schedule's provenance (step
count, LSD or LSD+, the denoiser fingerprint it was trained for, the teacher it was distilled from).
``schedule_table`` formats that as a fixed-width table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlm.io.schedule_dir import denoiser_fingerprint, read_schedule_dir
from dlm.samplers.learned_schedule import load_step_schedule

PROVENANCE_KEYS = ("teacher_steps", "teacher_state", "trained_for", "step", "length")


def schedule_info(path: str | Path, model: nn.Module | None = None) -> dict[str, Any]:
    """The schedule directory at ``path`` as a JSON-able dict: ``steps`` [{n, t_start, t_end, delta,
    logit_scale, rate_scale}] and the schedule's settings and provenance. ``model``: a denoiser to compare
    fingerprints with (``fingerprint_matches``)."""
    steps = load_step_schedule(path)
    meta = read_schedule_dir(path).meta
    with torch.no_grad():
        t = steps.timesteps().tolist()
        c, kappa = steps.logit_scales().tolist(), steps.rate_scales().tolist()
    rows = [{"n": n, "t_start": t[n], "t_end": t[n + 1], "delta": t[n] - t[n + 1], "logit_scale": c[n],
             "rate_scale": kappa[n]} for n in range(steps.num_steps)]
    info: dict[str, Any] = {"schedule": str(path), "kind": "lsd_plus" if steps.learn_grid else "lsd",
                            "num_steps": steps.num_steps, "learn_grid": steps.learn_grid, "t_min": steps.t_min,
                            "fingerprint": steps.trained_for.fingerprint if steps.trained_for else None,
                            **{k: meta[k] for k in PROVENANCE_KEYS if k in meta}, "steps": rows}
    if model is not None:
        info["model_fingerprint"] = denoiser_fingerprint(model)
        info["fingerprint_matches"] = info["model_fingerprint"] == info["fingerprint"]
    return info


def schedule_table(info: dict[str, Any]) -> str:
    """``schedule_info``'s dict as text: a header line and one row per step (n, t_n -> t_{n+1}, Delta_n, c_n,
    kappa_n)."""
    head = (f"{info['kind']} schedule {info['schedule']}: {info['num_steps']} steps, trained for denoiser "
            f"{info['fingerprint']}" + (f" ({info['trained_for']})" if info.get("trained_for") else "")
            + (f", teacher {info['teacher_steps']} steps ({info.get('teacher_state', '?')} state)"
               if "teacher_steps" in info else "")
            + (f", {info['step']} training steps" if "step" in info else ""))
    if "fingerprint_matches" in info:
        head += "; model= " + ("matches" if info["fingerprint_matches"] else
                               f"does NOT match (fingerprint {info['model_fingerprint']})")
    lines = [head, f"{'n':>3}  {'t_n':>8}  {'t_n+1':>8}  {'delta_n':>8}  {'c_n':>7}  {'kappa_n':>7}"]
    lines += [f"{r['n']:>3}  {r['t_start']:8.5f}  {r['t_end']:8.5f}  {r['delta']:8.5f}  {r['logit_scale']:7.4f}  "
              f"{r['rate_scale']:7.4f}" for r in info["steps"]]
    return "\n".join(lines)
