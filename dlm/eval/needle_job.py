"""Needle retrieval of an exported model directory over a depth x length grid (what dlm-eval-needle runs).

Every setting is checked before the model spends compute (lengths against the context in effect, the
task's shape, the result path); the grid JSON (``dlm.eval.needle.needle_grid`` plus ``settings`` and
``provenance``) and its heat map PNG are written atomically, named by the settings digest
(``dlm.eval.result_files``), so grids of other settings (another ``rope_scaling``) never overwrite it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dlm.data.needle import NeedleTask
from dlm.errors import ConfigError
from dlm.eval.lengths import check_lengths
from dlm.eval.model_dir import check_count, context_overrides, pick_device
from dlm.eval.needle import needle_grid, retriever_for
from dlm.eval.needle_plot import plot_needle_grid
from dlm.eval.result_files import check_result_path, result_name
from dlm.io.atomic import write_json_atomic
from dlm.io.model_dir import load_model_dir
from dlm.io.provenance import provenance

TASK_KEYS = ("num_pairs", "key_len", "value_len", "num_queries")
TASK_DEFAULTS = {"num_pairs": 4, "key_len": 2, "value_len": 3, "num_queries": 1}  # NeedleTask's


def task_settings(given: dict[str, int | None], trained: dict[str, Any]) -> dict[str, int]:
    """The task's shape: each key as given, else as the model was trained (its ``data=needle`` config in
    model.json), else the generator's default."""
    return {k: given[k] if given.get(k) is not None else int(trained.get(k, TASK_DEFAULTS[k])) for k in TASK_KEYS}


def eval_needle_model_dir(
    model_dir: str | Path,
    *,
    lengths: Sequence[int],
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    num_docs: int = 64,
    num_pairs: int | None = None,
    key_len: int | None = None,
    value_len: int | None = None,
    num_queries: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "auto",
    rope_scaling: Any = None,
    max_seq_len: int | None = None,
    out: str | Path | None = None,
    plot: str | Path | None = None,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """The needle grid of ``model_dir`` (``dlm.eval.needle``), with ``rope_scaling`` / ``max_seq_len`` load
    overrides to evaluate past the training length (recorded under ``overrides``). Written to ``out``
    (default ``<model_dir>/eval/needle-grid-<settings digest>.json``) and the heat map to ``plot`` (default:
    the JSON's path with .png). Returns the record, with ``out`` and ``plot``."""
    lengths, depths = [int(n) if isinstance(n, float) and n.is_integer() else n for n in lengths], list(depths)
    for key, value in (("num_docs", num_docs), ("batch_size", batch_size), ("max_seq_len", max_seq_len),
                       ("num_pairs", num_pairs), ("key_len", key_len), ("value_len", value_len),
                       ("num_queries", num_queries)):
        check_count(key, value, optional=key not in ("num_docs", "batch_size"))
    device = pick_device(device)
    loaded = load_model_dir(model_dir, device=device, rope_scaling=rope_scaling, max_seq_len=max_seq_len)
    model = loaded.model
    retriever_for(model)  # refuses a model kind it cannot decode, before any compute
    lengths = check_lengths(lengths, model.max_seq_len, key="lengths")
    trained = loaded.meta.get("data") if isinstance(loaded.meta.get("data"), dict) else {}
    task = task_settings({"num_pairs": num_pairs, "key_len": key_len, "value_len": value_len,
                          "num_queries": num_queries}, trained)
    for n in lengths:
        NeedleTask.for_row(n, **task)  # every length must hold the pairs and the query
    context = context_overrides(loaded.record)
    settings = {"model": str(Path(loaded.path).resolve()), "task": task, "lengths": lengths,
                "depths": depths, "num_docs": num_docs, "seed": seed, "overrides": context,
                "retrieval": model.attention}
    path = Path(out) if out else Path(loaded.path) / "eval" / result_name("needle", "grid", settings)
    check_result_path(path, settings, key="out")
    if path.suffix != ".json":
        raise ConfigError(f"out={path} must be a .json file (the heat map is written beside it as .png)")
    plot_path = Path(plot) if plot else path.with_suffix(".png")
    start = time.perf_counter()
    grid = needle_grid(model, loaded.tokenizer, lengths=lengths, depths=depths, num_docs=num_docs, seed=seed,
                       batch_size=batch_size, progress=progress, **task)
    result = {"model": str(model_dir), **({"overrides": context} if context else {}), **grid, **task,
              "seconds": time.perf_counter() - start, "settings": settings,
              "provenance": provenance(seed=seed, settings=settings, model=model, source=loaded.path)}
    write_json_atomic(path, result)
    scaling = context.get("rope_scaling")
    title = f"rope_scaling={scaling['_target_'].rsplit('.', 1)[-1] if scaling else 'none'}"
    if scaling:
        title += "\n" + ", ".join(f"{k}={v}" for k, v in scaling.items() if k != "_target_")
    plot_needle_grid(grid, plot_path, title=title)
    return {**result, "out": str(path), "plot": str(plot_path)}
