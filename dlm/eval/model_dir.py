"""Perplexity of an exported model directory on one split of a corpus (what dlm-eval-ppl runs).

Every setting is checked before the model spends compute; the result is written (atomically) to a
file named by every setting that changes the number, never over a result of other settings
(``dlm.eval.result_files``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import torch
from torch.utils.data import DataLoader

from dlm.data.blocks import corpus_blocks
from dlm.data.corpus import EVAL_PPL_KEYS, corpus_key
from dlm.errors import ConfigError
from dlm.eval.perplexity import evaluate_perplexity
from dlm.eval.result_files import check_result_path, result_name
from dlm.eval.scorers import energy_scorer_for, scorer_for
from dlm.eval.strata import Method
from dlm.io.atomic import write_json_atomic
from dlm.io.energy_dir import load_energy
from dlm.io.hub import resolve_model_path
from dlm.io.model_dir import load_model_dir
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
    are load overrides (long-context evaluation, ``dlm.io.overrides``), recorded under ``overrides``.
    ``energy``: an AR model directory (``energy_carry_over``: coAR) or an EDLM energy directory; the
    masked diffusion model is then scored by the energy-corrected NELBO (``dlm.eval.energy_nelbo``), log Z
    estimated from ``log_z_samples`` proposals unless the energy is exactly normalised (coAR).

    The record holds ``settings`` (everything the number depends on) and ``provenance`` (dlm version, git
    revision, seed, model fingerprint: ``dlm.io.provenance``) and is written to ``out`` or to
    ``<model_dir>/eval/<data stem>-<split>-<settings digest>.json`` (a Hub id's: its snapshot directory in
    the HF cache); a file there that holds anything but a result of the same settings is refused before
    any compute.
    """
    for key, value, optional in (("seq_len", seq_len, True), ("batch_size", batch_size, False),
                                 ("num_samples", num_samples, False), ("max_tokens", max_tokens, True),
                                 ("max_seq_len", max_seq_len, True), ("log_z_samples", log_z_samples, False)):
        check_count(key, value, optional=optional)
    if method not in get_args(Method):
        raise ConfigError(f"method={method!r}; choose {' or '.join(get_args(Method))}")
    device = pick_device(device)
    loaded = load_model_dir(model_dir, device=device, rope_scaling=rope_scaling, max_seq_len=max_seq_len)
    model, record = loaded.model, loaded.record
    local_dir = loaded.path  # a Hub id's snapshot in the HF cache (dlm.io.hub); the directory itself otherwise
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
    seq_len = seq_len or record.seq_len
    if seq_len is None:
        raise ConfigError("seq_len is unknown for this model directory; pass seq_len=<tokens per row>")
    if model.max_seq_len is not None and seq_len > model.max_seq_len:
        raise ConfigError(f"seq_len={seq_len} exceeds the model's context model.max_seq_len={model.max_seq_len}; "
                          f"pass a smaller seq_len or extend the context with NTK RoPE scaling "
                          f"(rope_scaling=ntk_auto:{seq_len})")
    if record.family is Family.BLOCK and seq_len % model.block_size:
        raise ConfigError(f"seq_len={seq_len} must be a multiple of the model's diffusion block size "
                          f"model.block_size={model.block_size}; pass a seq_len that it divides")
    context = {k: v for k, v in record.overrides.items() if k in ("rope_scaling", "max_seq_len")}
    # everything the number depends on; a Monte Carlo estimate also depends on its random draws
    settings = {"model": str(Path(local_dir).resolve()), "data": corpus_key(str(source), split, text_field=text_field),
                "mode": mode, "detokenizer": detokenizer, "seq_len": seq_len, "max_tokens": max_tokens,
                "overrides": context, **scorer.summary(),
                **({} if energy is None else {"energy": str(resolve_model_path(energy).resolve()),
                                              "energy_carry_over": energy_carry_over}),
                **({"seed": seed, "batch_size": batch_size, "device": torch.device(device).type}
                   if scorer.stochastic else {})}
    path = Path(out) if out else Path(local_dir) / "eval" / result_name(Path(str(dataset)).stem, split, settings)
    check_result_path(path, settings, key="out")
    rows = corpus_blocks(source=source, split=split, tokenizer=loaded.tokenizer, seq_len=seq_len, mode=mode,
                         text_field=text_field, streaming=streaming, detokenizer=detokenizer, cache_dir=cache_dir,
                         max_tokens=max_tokens, keys=EVAL_PPL_KEYS)
    if len(rows) == 0:
        raise ConfigError(f"{dataset} ({split}) gives no row of {seq_len} tokens; pass a smaller seq_len")
    loader = DataLoader(rows, batch_size=batch_size)
    result = evaluate_perplexity(model, loader, scorer, seed=seed, device=device, total=len(loader))
    result = {"dataset": dataset, "split": split, "seq_len": seq_len, "model": str(model_dir),
              **({} if energy is None else {"energy": str(energy)}),
              "detokenizer": detokenizer, **({"overrides": context} if context else {}), **result,
              "settings": settings,
              "provenance": provenance(seed=seed if scorer.stochastic else None, settings=settings, model=model,
                                       source=local_dir)}
    write_json_atomic(path, result)
    result["out"] = str(path)
    return result
