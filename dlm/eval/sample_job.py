"""Draw samples from an exported model directory into a JSONL file (what dlm-sample runs).

One JSON object per line (``sample_to_jsonl``)::

    {"text": str, "tokens": [int, ...], "nfe": int, "seconds": float}

``tokens`` is the whole generated row (prompt included, nothing cut); ``text`` is the row decoded
up to (excluding) the first EOS after the prompt, special tokens dropped, so it holds the prompt
text followed by the continuation. ``nfe`` is the network evaluations of the row's batch,
``seconds`` the batch's sampling time divided by its size. ``dlm-eval-gen`` reads this file.
The helpers here (prompt, length check, decoding, atomic JSONL) are shared with the
sample-during-validation training callback.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch
from tqdm.auto import tqdm

from dlm.checkpoint import load_model_dir
from dlm.errors import ConfigError
from dlm.eval.model_dir import pick_device
from dlm.types import Sampler


def prompt_ids(tokenizer, prompt: str | None, *, kind: str) -> list[int]:
    """[BOS] (when the tokenizer has one) followed by ``tokenizer.encode(prompt)``.

    Training rows start with BOS, so BOS is the natural unconditional prompt for both kinds; an AR
    model cannot start from nothing, so an empty prompt is refused for it.
    """
    ids = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    if prompt:
        ids += tokenizer.encode(prompt)
    if kind == "ar" and not ids:
        raise ConfigError(f"an autoregressive model needs a prompt of at least one token and tokenizer "
                          f"{tokenizer.name} has no BOS; pass prompt=<text>")
    return ids


def check_length(length: int, *, prompt_len: int, max_seq_len: int | None, key: str = "length") -> None:
    """Refuse a sample length the model cannot attend over, or one the prompt already fills."""
    if length < 1:
        raise ConfigError(f"{key}={length} must be >= 1")
    if max_seq_len is not None and length > max_seq_len:
        raise ConfigError(
            f"{key}={length} exceeds the model's context model.max_seq_len={max_seq_len}; lower {key}, use a "
            "sampler that generates in strides/blocks, or extend the context with NTK RoPE scaling "
            "(model.rope_scaling)"
        )
    if prompt_len >= length:
        raise ConfigError(f"the prompt is {prompt_len} tokens (BOS included), which leaves nothing to generate "
                          f"at {key}={length}; raise {key} or shorten the prompt")


def decode_sample(row: Sequence[int], tokenizer, prompt_len: int) -> str:
    """Decode one generated row, cut before the first EOS after the prompt; special tokens dropped."""
    row = list(row)
    eos = tokenizer.eos_id
    if eos is not None and eos in row[prompt_len:]:
        row = row[: row.index(eos, prompt_len)]
    return tokenizer.decode(row)


@contextmanager
def atomic_text_file(path: str | Path) -> Iterator[IO[str]]:
    """A text handle on a temp file beside ``path``, renamed onto it on success, deleted on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl_atomic(path: str | Path, records: Sequence[dict]) -> None:
    """One JSON object per line, written atomically."""
    with atomic_text_file(path) as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


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
    out: str | Path,
) -> dict:
    """Draw ``num_samples`` rows of ``length`` tokens with ``sampler`` and write them to ``out`` (JSONL).

    One generator seeded with ``seed`` serves the whole job, so the same arguments give the same
    file. Returns {samples, out, nfe (mean over samples of their batch's nfe), seconds (total
    sampling time), seconds_per_sample, sampler (class name), length, model}.
    """
    if num_samples < 1:
        raise ConfigError(f"num_samples={num_samples} must be >= 1")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    device = pick_device(device)
    loaded = load_model_dir(model_dir, device=device)
    if loaded.meta.get("shift_logits") and not getattr(sampler, "reads_shifted_logits", False):
        # token i is read from output i-1 (Dream / Fast-dLLM v2): only the block sampler reads it so
        raise ConfigError(f"{model_dir} was trained with objective.shift_logits=true; {type(sampler).__name__} "
                          "reads unshifted logits and would decode it wrongly: use a block sampler "
                          "(sampler=block_static / block_threshold / ...)")
    ids = prompt_ids(loaded.tokenizer, prompt, kind=loaded.kind)
    check_length(length, prompt_len=len(ids), max_seq_len=getattr(loaded.model, "max_seq_len", None))
    prompt_t = torch.tensor(ids, dtype=torch.long, device=device) if ids else None
    generator = torch.Generator(device=device).manual_seed(seed)
    out = Path(out)
    nfe_total, seconds = 0, 0.0
    sizes = [min(batch_size, num_samples - s) for s in range(0, num_samples, batch_size)]
    with atomic_text_file(out) as f:
        for b in tqdm(sizes, desc=f"sample ({type(sampler).__name__})", dynamic_ncols=True):
            res = sampler(loaded.model, batch_size=b, length=length, prompt=prompt_t, generator=generator)
            nfe_total += res.nfe * b
            seconds += res.seconds
            for row in res.tokens.tolist():
                rec = {"text": decode_sample(row, loaded.tokenizer, len(ids)), "tokens": row,
                       "nfe": int(res.nfe), "seconds": res.seconds / b}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return {
        "samples": num_samples,
        "out": str(out),
        "nfe": nfe_total / num_samples,
        "seconds": seconds,
        "seconds_per_sample": seconds / num_samples,
        "sampler": type(sampler).__name__,
        "length": length,
        "model": str(model_dir),
    }
