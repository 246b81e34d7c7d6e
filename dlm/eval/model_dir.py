"""Perplexity of an exported model directory on one split of a corpus (what dlm-eval-ppl runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from dlm.data.blocks import corpus_blocks
from dlm.errors import ConfigError
from dlm.eval.perplexity import evaluate_perplexity
from dlm.eval.scorers import scorer_for
from dlm.eval.strata import Method
from dlm.io.atomic import write_json_atomic
from dlm.io.model_dir import load_model_dir
from dlm.io.record import Family


def pick_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


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
) -> dict:
    """The perplexity of the directory's family (``dlm.eval.scorers``: exact for AR, the NELBO bound for
    masked diffusion, the per-block bound with the model's own ``block_size`` and ``shift_logits`` for
    block diffusion) on rows of ``seq_len`` tokens (default: the training rows' length); returns the
    JSON record it also writes. ``rope_scaling`` / ``max_seq_len`` are load overrides (long-context
    evaluation, ``dlm.io.overrides``), recorded under ``overrides``."""
    device = pick_device(device)
    loaded = load_model_dir(model_dir, device=device, rope_scaling=rope_scaling, max_seq_len=max_seq_len)
    model, record = loaded.model, loaded.record
    scorer = scorer_for(record.family, model, num_samples=num_samples, method=method, schedule=loaded.schedule,
                        keep_first_token=record.keep_first_token)
    seq_len = int(seq_len or record.seq_len or 0)
    if seq_len <= 0:
        raise ConfigError("seq_len is unknown for this model directory; pass seq_len=<tokens per row>")
    if model.max_seq_len is not None and seq_len > model.max_seq_len:
        raise ConfigError(f"seq_len={seq_len} exceeds the model's context model.max_seq_len={model.max_seq_len}; "
                          f"pass a smaller seq_len or extend the context with NTK RoPE scaling "
                          f"(rope_scaling=ntk_auto:{seq_len})")
    if record.family is Family.BLOCK and seq_len % model.block_size:
        raise ConfigError(f"seq_len={seq_len} must be a multiple of the model's diffusion block size "
                          f"model.block_size={model.block_size}; pass a seq_len that it divides")
    rows = corpus_blocks(source=source, split=split, tokenizer=loaded.tokenizer, seq_len=seq_len, mode=mode,
                         text_field=text_field, streaming=streaming, detokenizer=detokenizer, cache_dir=cache_dir,
                         max_tokens=max_tokens)
    if len(rows) == 0:
        raise ConfigError(f"{dataset} ({split}) gives no row of {seq_len} tokens; pass a smaller seq_len")
    loader = DataLoader(rows, batch_size=batch_size)
    result = evaluate_perplexity(model, loader, scorer, seed=seed, device=device, total=len(loader))
    context = {k: v for k, v in record.overrides.items() if k in ("rope_scaling", "max_seq_len")}
    result = {"dataset": dataset, "split": split, "seq_len": seq_len, "model": str(model_dir),
              "detokenizer": detokenizer, **({"overrides": context} if context else {}), **result}
    path = Path(out) if out else Path(model_dir) / "eval" / f"{Path(str(dataset)).stem}-{split}.json"
    write_json_atomic(path, result)
    result["out"] = str(path)
    return result
