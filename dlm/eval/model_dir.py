"""Perplexity of an exported model directory on one split of a corpus (what dlm-eval-ppl runs).

Every setting is checked before the model spends compute; the result is written (atomically) to a
file named by every setting that changes the number, never over a result of other settings
(``dlm.eval.result_files``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch
from torch.utils.data import DataLoader

from dlm.data.blocks import corpus_blocks
from dlm.data.corpus import EVAL_PPL_KEYS, corpus_key
from dlm.errors import ConfigError
from dlm.eval.perplexity import Scorer, evaluate_perplexity
from dlm.eval.result_files import check_result_path, result_name
from dlm.eval.scorers import energy_scorer_for, scorer_for
from dlm.eval.strata import Method
from dlm.io.atomic import write_json_atomic
from dlm.io.energy_dir import load_energy
from dlm.io.hub import resolve_model_path
from dlm.io.model_dir import LoadedModel, load_model_dir
from dlm.io.provenance import provenance
from dlm.io.record import Family


def pick_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def check_count(key: str, value: Any, *, optional: bool = False) -> None:
    """A count (``key=value``) must be a positive integer (or None when ``optional``): 0 or a negative
    number never means "the default"."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        unset = f", or leave {key} unset for the default" if optional else ""
        raise ConfigError(f"{key}={value!r} must be a positive integer{unset}")


def context_overrides(record) -> dict:
    """The load overrides that set the context a result was computed with (``rope_scaling``, ``max_seq_len``),
    as applied (JSON); empty when the model runs as trained."""
    return {k: v for k, v in record.overrides.items() if k in ("rope_scaling", "max_seq_len")}


@dataclass
class PplJob:
    """What every row length of one dlm-eval-ppl run shares: the model (loaded once, with its overrides), its
    scorer, and the data and Monte Carlo arguments (``prepare_ppl_job``)."""

    model_dir: str | Path
    loaded: LoadedModel
    scorer: Scorer
    data: dict[str, Any]  # dataset, source, split, mode, text_field, streaming, detokenizer, cache_dir, max_tokens
    energy: dict[str, Any] | None
    batch_size: int
    seed: int
    device: str

    @property
    def context(self) -> dict:
        """The context in effect: the ``rope_scaling`` spec (None: plain RoPE) and ``max_seq_len``."""
        spec = self.loaded.record.model_spec
        return {"rope_scaling": spec.get("rope_scaling"), "max_seq_len": self.loaded.model.max_seq_len}


@dataclass
class PplPlan:
    """One row length of a job, checked and ready: its settings, result path and data rows."""

    seq_len: int
    settings: dict[str, Any]
    path: Path
    rows: Any


def prepare_ppl_job(
    model_dir: str | Path,
    *,
    dataset: str,
    source: str,
    split: str,
    mode: str = "wrap",
    text_field: str | None = None,
    streaming: bool = False,
    detokenizer: str | None = None,
    batch_size: int = 8,
    num_samples: int = 32,
    method: Method = "mc",
    max_tokens: int | None = None,
    seed: int = 0,
    device: str = "auto",
    cache_dir: str | Path = ".cache/dlm",
    rope_scaling: Any = None,
    max_seq_len: int | None = None,
    energy: str | Path | None = None,
    energy_carry_over: bool = False,
    log_z_samples: int = 16,
) -> PplJob:
    """Check the settings shared by every row length, load the model with its overrides and build its scorer
    (``eval_ppl_model_dir`` documents the arguments)."""
    for key, value, optional in (("batch_size", batch_size, False), ("num_samples", num_samples, False),
                                 ("max_tokens", max_tokens, True), ("max_seq_len", max_seq_len, True),
                                 ("log_z_samples", log_z_samples, False)):
        check_count(key, value, optional=optional)
    if method not in get_args(Method):
        raise ConfigError(f"method={method!r}; choose {' or '.join(get_args(Method))}")
    device = pick_device(device)
    loaded = load_model_dir(model_dir, device=device, rope_scaling=rope_scaling, max_seq_len=max_seq_len)
    model, record = loaded.model, loaded.record
    if record.family is Family.ENERGY:
        raise ConfigError(f"model={model_dir} is an EDLM energy directory (kind 'energy'): it corrects a diffusion "
                          "model and has no perplexity of its own; pass the diffusion model as model= and this "
                          f"directory as energy= (dlm-eval-ppl model=<diffusion dir> energy={model_dir} data=...)")
    scoring = dict(num_samples=num_samples, method=method, schedule=loaded.schedule,
                   keep_first_token=record.keep_first_token, ar_softmax=record.ar_softmax)
    if energy is None:
        scorer = scorer_for(record.family, model, **scoring)
    else:
        corrector = load_energy(energy, carry_over=energy_carry_over, denoiser=model_dir, device=device, key="energy",
                                carry_over_key="energy_carry_over")
        scorer = energy_scorer_for(record.family, model, energy=corrector, log_z_samples=log_z_samples, **scoring)
    data = {"dataset": dataset, "source": source, "split": split, "mode": mode, "text_field": text_field,
            "streaming": streaming, "detokenizer": detokenizer, "cache_dir": cache_dir, "max_tokens": max_tokens}
    return PplJob(model_dir=model_dir, loaded=loaded, scorer=scorer, data=data, batch_size=batch_size, seed=seed,
                  device=device, energy=None if energy is None else {"energy": energy,
                                                                    "energy_carry_over": energy_carry_over})


def plan_length(job: PplJob, seq_len: int | None, out: str | Path | None, *, key: str = "seq_len") -> PplPlan:
    """Check one row length against the model (``key`` names the option that gave it), name its result file
    and tokenise its rows: everything but the model's compute."""
    model, record, d = job.loaded.model, job.loaded.record, job.data
    seq_len = seq_len or record.seq_len
    if seq_len is None:
        raise ConfigError("seq_len is unknown for this model directory; pass seq_len=<tokens per row>")
    if model.max_seq_len is not None and seq_len > model.max_seq_len:
        raise ConfigError(f"{key}={seq_len} exceeds the model's context model.max_seq_len={model.max_seq_len}; "
                          f"pass a smaller {key} or extend the context with NTK RoPE scaling "
                          f"(rope_scaling=ntk_auto:{seq_len})")
    if record.family is Family.BLOCK and seq_len % model.block_size:
        raise ConfigError(f"{key}={seq_len} must be a multiple of the model's diffusion block size "
                          f"model.block_size={model.block_size}; pass a {key} that it divides")
    local_dir = job.loaded.path  # a Hub id's snapshot in the HF cache (dlm.io.hub); the directory itself otherwise
    energy = job.energy
    # everything the number depends on; a Monte Carlo estimate also depends on its random draws
    settings = {"model": str(Path(local_dir).resolve()),
                "data": corpus_key(str(d["source"]), d["split"], text_field=d["text_field"]),
                "mode": d["mode"], "detokenizer": d["detokenizer"], "seq_len": seq_len, "max_tokens": d["max_tokens"],
                "overrides": context_overrides(record), **job.scorer.summary(),
                **({} if energy is None else {"energy": str(resolve_model_path(energy["energy"]).resolve()),
                                              "energy_carry_over": energy["energy_carry_over"]}),
                **({"seed": job.seed, "batch_size": job.batch_size, "device": torch.device(job.device).type}
                   if job.scorer.stochastic else {})}
    path = Path(out) if out else Path(local_dir) / "eval" / result_name(Path(str(d["dataset"])).stem, d["split"],
                                                                      settings)
    check_result_path(path, settings, key="out")
    rows = corpus_blocks(source=d["source"], split=d["split"], tokenizer=job.loaded.tokenizer, seq_len=seq_len,
                         mode=d["mode"], text_field=d["text_field"], streaming=d["streaming"],
                         detokenizer=d["detokenizer"], cache_dir=d["cache_dir"], max_tokens=d["max_tokens"],
                         keys=EVAL_PPL_KEYS)
    if len(rows) == 0:
        raise ConfigError(f"{d['dataset']} ({d['split']}) gives no row of {seq_len} tokens; pass a smaller {key}")
    return PplPlan(seq_len=seq_len, settings=settings, path=path, rows=rows)


def run_length(job: PplJob, plan: PplPlan) -> dict:
    """Score ``plan``'s rows (one generator seeded with the job's seed, so a length scores exactly as a run of
    that length alone) and write the record atomically; returns it with ``out``."""
    model, d, context = job.loaded.model, job.data, context_overrides(job.loaded.record)
    loader = DataLoader(plan.rows, batch_size=job.batch_size)
    result = evaluate_perplexity(model, loader, job.scorer, seed=job.seed, device=job.device, total=len(loader))
    result = {"dataset": d["dataset"], "split": d["split"], "seq_len": plan.seq_len, "model": str(job.model_dir),
              **({} if job.energy is None else {"energy": str(job.energy["energy"])}),
              "detokenizer": d["detokenizer"], **({"overrides": context} if context else {}),
              "context": job.context, **result, "settings": plan.settings,
              "provenance": provenance(seed=job.seed if job.scorer.stochastic else None, settings=plan.settings,
                                       model=model, source=job.loaded.path)}
    write_json_atomic(plan.path, result)
    result["out"] = str(plan.path)
    return result


def eval_ppl_model_dir(
    model_dir: str | Path,
    *,
    dataset: str,
    source: str,
    split: str,
    seq_len: int | None = None,
    mode: str = "wrap",
    text_field: str | None = None,
    streaming: bool = False,
    detokenizer: str | None = None,
    batch_size: int = 8,
    num_samples: int = 32,
    method: Method = "mc",
    max_tokens: int | None = None,
    seed: int = 0,
    device: str = "auto",
    cache_dir: str | Path = ".cache/dlm",
    out: str | Path | None = None,
    rope_scaling: Any = None,
    max_seq_len: int | None = None,
    energy: str | Path | None = None,
    energy_carry_over: bool = False,
    log_z_samples: int = 16,
) -> dict:
    """The perplexity of the directory's family (``dlm.eval.scorers``: exact for AR, normalised as the
    model was trained; the NELBO bound for masked diffusion; the per-block bound with the model's own
    ``block_size`` and ``shift_logits`` for block diffusion) on rows of ``seq_len`` tokens (default: the
    training rows' length); returns the JSON record it also writes. ``rope_scaling`` / ``max_seq_len``
    are load overrides (long-context evaluation, ``dlm.io.overrides``), recorded under ``overrides`` (as
    applied) and ``context`` (in effect: the RoPE scaling spec, null for plain RoPE, and the model's
    ``max_seq_len``). Several row lengths in one run: ``dlm.eval.lengths.eval_ppl_lengths``.
    ``energy``: an AR model directory (``energy_carry_over``: coAR) or an EDLM energy directory; the
    masked diffusion model is then scored by the energy-corrected NELBO (``dlm.eval.energy_nelbo``), log Z
    estimated from ``log_z_samples`` proposals unless the energy is exactly normalised (coAR).

    The record holds ``settings`` (everything the number depends on) and ``provenance`` (dlm version, git
    revision, seed, model fingerprint: ``dlm.io.provenance``) and is written to ``out`` or to
    ``<model_dir>/eval/<data stem>-<split>-<settings digest>.json`` (a Hub id's: its snapshot directory in
    the HF cache); a file there that holds anything but a result of the same settings is refused before
    any compute.
    """
    check_count("seq_len", seq_len, optional=True)
    job = prepare_ppl_job(model_dir, dataset=dataset, source=source, split=split, mode=mode, text_field=text_field,
                          streaming=streaming, detokenizer=detokenizer, batch_size=batch_size, num_samples=num_samples,
                          method=method, max_tokens=max_tokens, seed=seed, device=device, cache_dir=cache_dir,
                          rope_scaling=rope_scaling, max_seq_len=max_seq_len, energy=energy,
                          energy_carry_over=energy_carry_over, log_z_samples=log_z_samples)
    return run_length(job, plan_length(job, seq_len, out))
