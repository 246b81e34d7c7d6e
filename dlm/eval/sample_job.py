"""Draw samples from an exported model directory into a JSONL file (what dlm-sample runs).

One JSON object per line (``sample_to_jsonl``)::

    {"text": str, "tokens": [int, ...], "nfe": int, "seconds": float}

``tokens`` is the whole generated row (prompt included, nothing cut); ``text`` is the row decoded
up to (excluding) the first EOS after the prompt, special tokens dropped, so it holds the prompt
text followed by the continuation. ``nfe`` is the network evaluations of the row's batch,
``seconds`` the batch's sampling time divided by its size. ``dlm-eval-gen`` reads this file.
The helpers here (prompt, decoding) are shared with the sample-during-validation training callback;
the file is written by the one atomic writer (``dlm.io.atomic``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dlm.data.tokenizers.bio import LetterTokenizer
from dlm.errors import ConfigError
from dlm.eval.finite_outputs import FiniteOutputs
from dlm.eval.model_dir import pick_device
from dlm.eval.result_files import canonical, settings_differences, settings_digest
from dlm.io.atomic import atomic_file, write_json_atomic
from dlm.io.model_dir import load_model_dir
from dlm.io.provenance import provenance
from dlm.io.record import Family
from dlm.samplers.canvas import check_length
from dlm.types import Sampler


def rows_start_with_bos(tokenizer, *, keep_first_token: bool) -> bool:
    """Whether a model's training rows began with BOS: always for text (the text pipeline prepends it);
    for DNA / protein letter tokenizers (rows are the letters alone, ``dlm.train.sequence_datamodule``)
    only when the model was trained with ``keep_first_token`` (its first token is then a given BOS).
    Sampling starts from what training started from, so no model sees a BOS it never saw."""
    return tokenizer.bos_id is not None and (keep_first_token or not isinstance(tokenizer, LetterTokenizer))


def prompt_ids(tokenizer, prompt: str | None, *, family: Family, bos: bool = True) -> list[int]:
    """[BOS] (when ``bos`` and the tokenizer has one) followed by ``tokenizer.encode(prompt)``.

    Training rows start with BOS (``rows_start_with_bos`` says when not), so BOS is the natural
    unconditional prompt; a family that cannot start from nothing (AR: ``family.needs_prompt``) refuses
    an empty prompt.
    """
    ids = [tokenizer.bos_id] if bos and tokenizer.bos_id is not None else []
    if prompt:
        ids += tokenizer.encode(prompt)
    if family.needs_prompt and not ids:
        raise ConfigError(f"an autoregressive model needs a prompt of at least one token and tokenizer "
                          f"{tokenizer.name} has no BOS; pass prompt=<text>")
    return ids


def decode_sample(row: Sequence[int], tokenizer, prompt_len: int) -> str:
    """Decode one generated row, cut before the first EOS after the prompt; special tokens dropped."""
    row = list(row)
    eos = tokenizer.eos_id
    if eos is not None and eos in row[prompt_len:]:
        row = row[: row.index(eos, prompt_len)]
    return tokenizer.decode(row)


def sample_to_jsonl(
    model_dir: str | Path,
    sampler: Sampler,
    *,
    num_samples: int,
    length: int,
    batch_size: int = 8,
    prompt: str | None = None,
    seed: int = 0,
    device: str = "auto",
    out: str | Path | None = None,
    rope_scaling: Any = None,
    max_seq_len: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Draw ``num_samples`` rows of ``length`` tokens with ``sampler`` and write them to ``out`` (JSONL).

    ``out`` None: ``samples-<digest>.jsonl`` in the working directory, the digest of the job's settings, so
    two jobs never write one file. Beside ``out`` goes ``<out stem>.summary.json`` (the returned summary,
    with ``"settings"``: everything that changes the samples). An existing ``out`` is replaced only by a
    job of the same settings (a rerun) or with ``overwrite``; anything else is refused before any compute.

    One generator seeded with ``seed`` serves the whole job, so the same arguments give the same
    file. Returns {samples, out, nfe (mean over samples of their batch's nfe), seconds (total
    sampling time, auxiliary networks included), seconds_per_sample, sampler (class name), length,
    generated_per_sample (length minus the prompt, BOS included), model,
    ``<name>_calls`` for each auxiliary network the sampler called (EDLM: ``energy_calls``, total
    batched energy calls of the job), provenance (``dlm.io.provenance``: seed, the sampler's settings, the
    model's fingerprint)}. A sampler that records its draws (``record_trajectory=True``) adds to each record
    ``sampler_nll`` (the sample's negative log-probability under the distributions it was drawn from) and to
    the summary ``sampler_nll_per_token`` (their sum over generated tokens: the sampler's path entropy per
    token). A model whose logits turn NaN/inf stops the job (``NonFiniteError``) and ``out`` is left as it was.
    """
    if num_samples < 1:
        raise ConfigError(f"num_samples={num_samples} must be >= 1")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    device = pick_device(device)
    # load-time context extension (NTK RoPE): sample past the training length without retraining
    loaded = load_model_dir(model_dir, device=device, rope_scaling=rope_scaling, max_seq_len=max_seq_len)
    if not loaded.family.is_denoiser:  # a classifier, policy or energy directory generates nothing
        raise ConfigError(f"model={model_dir} holds a {loaded.family.kind!r} model, not a denoiser; pass the diffusion "
                          "(or AR) model directory as model= (an EDLM energy goes to sampler.energy.path=, a "
                          "classifier to sampler.guidance.classifier.path=)")
    # the sampler refuses, before any compute, a model it cannot decode (attention, shifted logits)
    sampler.check_model(loaded.model)
    ids = prompt_ids(loaded.tokenizer, prompt, family=loaded.family,
                     bos=rows_start_with_bos(loaded.tokenizer, keep_first_token=loaded.record.keep_first_token))
    # a windowed sampler covers any length; the others are bounded by the model's context
    check_length(length, prompt_len=len(ids),
                 max_seq_len=None if sampler.extends_context else loaded.model.max_seq_len)
    prompt_t = torch.tensor(ids, dtype=torch.long, device=device) if ids else None
    generator = torch.Generator(device=device).manual_seed(seed)
    record = provenance(seed=seed, settings=sampler, model=loaded.model, source=loaded.path)
    settings = {"sampler": record["settings"], "model_fingerprint": record["model_fingerprint"],
                "num_samples": num_samples, "length": length, "batch_size": batch_size, "prompt": prompt,
                "seed": seed, "overrides": loaded.record.overrides or None}
    out = Path(out) if out is not None else Path(f"samples-{settings_digest(settings)}.jsonl")
    summary_path = out.with_name(f"{out.stem}.summary.json")
    if not overwrite:
        check_samples_path(out, summary_path, settings)
    nfe_total, seconds, aux_calls = 0, 0.0, {}
    nll_total: float | None = None  # set when the sampler records its draws' log-probs
    sizes = [min(batch_size, num_samples - s) for s in range(0, num_samples, batch_size)]
    with atomic_file(out) as f, FiniteOutputs(loaded.model) as watch:
        for k, b in enumerate(tqdm(sizes, desc=f"sample ({type(sampler).__name__})", dynamic_ncols=True)):
            res = sampler(loaded.model, batch_size=b, length=length, prompt=prompt_t, generator=generator)
            watch.check(f"dlm-sample batch {k + 1} of {len(sizes)} ({model_dir})")
            nfe_total += res.nfe * b
            for name, n in res.aux_calls.items():  # auxiliary networks' calls (EDLM: the energy)
                aux_calls[name] = aux_calls.get(name, 0) + n
            seconds += res.seconds
            nll = sampler_nll(res.info)
            if nll is not None:
                nll_total = (nll_total or 0.0) + float(nll.sum())
            for i, row in enumerate(res.tokens.tolist()):
                rec = {"text": decode_sample(row, loaded.tokenizer, len(ids)), "tokens": row,
                       "nfe": int(res.nfe), "seconds": res.seconds / b}
                if nll is not None:
                    rec["sampler_nll"] = float(nll[i])
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    summary = {
        "samples": num_samples,
        "out": str(out),
        "nfe": nfe_total / num_samples,
        "seconds": seconds,
        "seconds_per_sample": seconds / num_samples,
        "sampler": type(sampler).__name__,
        **{f"{name}_calls": n for name, n in aux_calls.items()},
        **({"sampler_nll_per_token": nll_total / (num_samples * (length - len(ids)))}
           if nll_total is not None and length > len(ids) else {}),
        "length": length,
        "generated_per_sample": length - len(ids),
        "model": str(model_dir),
        **({"overrides": loaded.record.overrides} if loaded.record.overrides else {}),
        "provenance": record,
        "settings": settings,
    }
    write_json_atomic(summary_path, summary)
    return summary


def sampler_nll(info: dict) -> Tensor | None:
    """-sum over steps of ``info["step_log_probs"]`` (B,) float64: each sample's negative log-probability under
    the distributions its tokens were drawn from, given the order they were revealed in (nats). Its mean over
    samples estimates the sampler's path entropy H(x_0 | order); None when the sampler recorded no draws
    (``record_trajectory`` off, or a sampler that keeps canvases only)."""
    steps = info.get("step_log_probs")
    if not steps:
        return None
    return -torch.stack([lp.double() for lp in steps]).sum(0).sum(-1)


def check_samples_path(out: Path, summary_path: Path, settings: dict) -> None:
    """Refuse an existing samples file unless its summary records these very settings (a rerun)."""
    if not out.exists():
        return
    fix = "pass another out=, or overwrite=true to replace it"
    try:
        old = json.loads(summary_path.read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"out={out} exists and has no readable {summary_path.name} saying what it holds; "
                          f"{fix}") from None
    if old != canonical(settings):
        raise ConfigError(f"out={out} holds samples of other settings ({settings_differences(old, canonical(settings))})"
                          f"; {fix}")
