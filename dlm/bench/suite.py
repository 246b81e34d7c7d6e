"""``dlm-bench all [--quick]``: every benchmark in one go, then one benchmarks page.

Each benchmark runs in its own process (``python -m dlm bench <name> ...``: threads, Lightning and
memory start clean, and one failure does not stop the others), after the prerequisites it declares
(trained demo models) are made when missing. Per benchmark the suite records the exact command,
the start time (UTC), the seconds, the exit status and the benchmark's summary line in
``<out_dir>/results/suite.json``, and ``dlm.bench.report`` renders ``<out_dir>/README.md`` from it and
the result files. ``quick``: each benchmark's small settings and quick prerequisites, written under
``quick_out_dir`` so a laptop check never replaces the full tables. A prerequisite may name its own file
for quick mode (``quick_path``: the block benchmark's quick run makes a small block model of its own instead
of the ~80-minute ``make block-recipe``); one with no command lines for the mode is skipped with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from dlm.bench.report import machine, render
from dlm.errors import ConfigError
from dlm.io.atomic import write_json_atomic
from dlm.io.provenance import provenance


def _run(command: list[str], log) -> tuple[int, str]:
    """Run ``command`` (stdout captured, stderr to ``log``): exit status and the last stdout line."""
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return proc.returncode, lines[-1] if lines else ""


def bench_all(*, benches: dict, prepare: dict, quick: bool = False, only: list[str] | None = None,
              out_dir: str = "benchmarks", quick_out_dir: str = "benchmarks/quick", render_only: bool = False) -> dict:
    """Run ``benches`` (name -> {full: [overrides], quick: [overrides], needs: [prepare names],
    outputs: {key: file name}}) in order, making the ``prepare`` entries (name -> {path, quick_path, how, full,
    quick}: a file that must exist (``quick_path``, when given, in quick mode), how it is made, and per mode
    the dlm command lines that make it) they need first; render the page.

    ``only``: a subset of benchmark names; ``render_only``: no runs, the page from the results on disk.
    Returns {out_dir, page, benchmarks: {name: status}}; a failed benchmark makes the command exit
    non-zero after every other one has run.
    """
    unknown = sorted(set(only or []) - set(benches))
    if unknown:
        raise ConfigError(f"only={unknown} are not benchmarks; valid: {', '.join(benches)}")
    root = Path(quick_out_dir if quick else out_dir)
    results = root / "results"
    record_path = results / "suite.json"
    records: dict[str, dict] = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if not render_only:
        results.mkdir(parents=True, exist_ok=True)
        mode = "quick" if quick else "full"
        log_path = results / "suite.log"
        with log_path.open("a") as log:
            for name in only or list(benches):
                spec = benches[name]
                records[name] = _one(name, spec, prepare, mode=mode, results=results, log=log)
                print(f"[{name}] {records[name]['status']} ({records[name]['seconds']:.0f} s)", file=sys.stderr,
                      flush=True)
                write_json_atomic(record_path, records)  # after each benchmark: a cut-off run keeps the rest
    page = render(root, benches=benches, records=records, quick=quick)
    failed = {n: r["status"] for n, r in records.items() if r.get("status", "").startswith("failed")}
    summary = {"out_dir": str(root), "page": str(page),
               "benchmarks": {n: r.get("status") for n, r in records.items()}}
    if failed:
        raise ConfigError(f"benchmarks failed: {failed}; see {results / 'suite.log'}")
    return summary


def _one(name: str, spec: dict, prepare: dict, *, mode: str, results: Path, log) -> dict:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    record = {"started": started, "mode": mode, "machine": machine(), "provenance": provenance(seed=None, settings={})}
    for need in spec.get("needs", []):
        req = prepare[need]
        path = req.get("quick_path") or req["path"] if mode == "quick" else req["path"]
        if Path(path).exists():
            continue
        steps = req.get(mode) or []
        if not steps:
            return {**record, "status": f"skipped: needs {path} ({req.get('how', 'not made by the suite')})",
                    "seconds": time.perf_counter() - t0, "command": None}
        for step in steps:
            status, _ = _run([sys.executable, "-m", "dlm", *step], log)
            if status != 0:
                return {**record, "status": f"failed preparing {need} (exit {status})", "command": step,
                        "seconds": time.perf_counter() - t0}
    outputs = {key: str(results / file) for key, file in spec.get("outputs", {}).items()}
    command = ["bench", name, *spec.get(mode, []), *(f"{k}={v}" for k, v in outputs.items())]
    status, last = _run([sys.executable, "-m", "dlm", *command], log)
    try:
        summary = json.loads(last) if status == 0 else None
    except json.JSONDecodeError:
        summary = None
    return {**record, "status": "ok" if status == 0 else f"failed (exit {status})",
            "command": "dlm-" + " ".join(command), "seconds": time.perf_counter() - t0, "summary": summary}
