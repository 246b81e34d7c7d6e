"""The benchmarks page: ``<out_dir>/README.md`` rendered from the result files and the suite's records.

One section per benchmark: what it compares (the first comment block of its ``conf/task/<name>.yaml``),
its table (the result's ``rows``: scalar columns, numbers to 4 significant digits), its plots, the
targets it states (result keys named ``target*`` or ending in ``_met``), the machine (CPU model,
threads, torch), the date and the exact command, then its hand-written notes on the reference run
(``<out_dir>/notes/<name>.md``, included verbatim when present: how it was measured, the full tables as
measured, why each target was met or missed, how to reproduce; links in it are relative to ``<out_dir>``). A
benchmark with no result yet says so and how to make it. The main README links this page and keeps only
headline rows.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from dlm.io.atomic import write_text_atomic

MAX_COLUMNS = 10


def machine() -> dict[str, Any]:
    """CPU model, logical cores, torch threads, torch version, GPU (when there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": gpu}


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")[:60]


def table(rows: list[dict]) -> str:
    """A markdown table of the scalar columns of ``rows`` (the first ``MAX_COLUMNS``, in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in columns and (v is None or isinstance(v, (int, float, str, bool))):
                columns.append(k)
    columns = [c for c in columns if c not in ("example", "provenance")][:MAX_COLUMNS]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def targets(result: dict) -> list[str]:
    """``key: value`` for every stated target and verdict of a result."""
    return [f"`{k}`: {_fmt(v)}" for k, v in result.items()
            if (k.startswith("target") or k.endswith("_met")) and not isinstance(v, (dict, list))]


def _about(name: str) -> str:
    conf = Path(__file__).resolve().parents[2] / "conf" / "task" / f"{name}.yaml"
    if not conf.is_file():
        return ""
    lines = []
    for line in conf.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return " ".join(lines)


def notes(name: str, page_dir: Path) -> str | None:
    """The notes on a benchmark's reference run, ``<page_dir>/notes/<name>.md`` (stripped), or None."""
    path = Path(page_dir) / "notes" / f"{name}.md"
    return path.read_text().strip() if path.is_file() else None


def _with_notes(out: list[str], text: str | None) -> str:
    if text:
        out = [*out, "### Notes (reference run)", "", text, ""]
    return "\n".join(out)


def section(name: str, spec: dict, record: dict | None, results: Path, page_dir: Path, quick: bool) -> str:
    out = [f"## `{name}`", "", _about(name), ""]
    written = notes(name, page_dir)
    result_file = results / spec.get("outputs", {}).get("out", f"{name}.json")
    if not result_file.is_file():
        why = record.get("status") if record else "not run yet"
        return _with_notes([*out, f"No result ({why}). Run: `dlm-bench all{' --quick' if quick else ''} "
                            f"only=[{name}]`.", ""], written)
    result = json.loads(result_file.read_text())
    rows = result.get("rows")
    if isinstance(rows, list) and rows and isinstance(rows[0], dict):
        out += [table(rows), ""]
    plots = [results / f for k, f in spec.get("outputs", {}).items() if k != "out" and f.endswith(".png")]
    plots += sorted(p for p in results.glob(f"{name}*.png") if p not in plots)
    for png in plots:
        if png.is_file():
            out += [f"![{png.stem}]({os.path.relpath(png, page_dir)})", ""]
    stated = targets(result)
    if stated:
        out += ["Targets: " + "; ".join(stated) + ".", ""]
    if record:
        m = record.get("machine", {})
        out += [f"Run {record.get('started', '?')} ({record.get('mode')}, {record.get('seconds', 0):.0f} s, "
                f"{record.get('status')}) on {m.get('cpu')} ({m.get('cores')} cores, {m.get('torch_threads')} torch "
                f"threads, torch {m.get('torch')}{', ' + m['gpu'] if m.get('gpu') else ''}).", "",
                f"Command: `{record.get('command')}`", ""]
    else:
        prov = result.get("provenance") or {}
        out += [f"Result file `{result_file.name}` (dlm {prov.get('dlm_version', '?')}, git {prov.get('git_rev', '?')}, "
                f"torch {result.get('torch', '?')}, {result.get('threads', '?')} threads); not run by the suite"
                + (": how it was run is in the notes below." if written else "."), ""]
    return _with_notes(out, written)


def render(root: Path, *, benches: dict, records: dict, quick: bool) -> Path:
    """Write ``root/README.md`` (one section per benchmark, in suite order) and return its path."""
    root = Path(root)
    title = "dlm benchmarks" + (" (quick settings: a laptop check, not the reference numbers)" if quick else "")
    head = [f"# {title}", "",
            f"Made by `dlm-bench all{' --quick' if quick else ''}` (`dlm.bench.suite`); every number comes with the "
            "command that reproduces it. Each benchmark compares against its baseline in the same run.", ""]
    body = [section(n, benches[n], records.get(n), root / "results", root, quick) for n in benches]
    page = root / "README.md"
    write_text_atomic(page, "\n".join(head + body))
    return page
