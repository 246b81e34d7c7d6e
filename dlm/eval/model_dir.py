"""Perplexity of an exported model directory on one split of a corpus (what dlm-eval-ppl runs)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dlm.checkpoint import load_model_dir
from dlm.data.blocks import corpus_blocks
from dlm.errors import ConfigError
from dlm.eval.block_perplexity import evaluate_block_perplexity
from dlm.eval.perplexity import Method, evaluate_perplexity


def pick_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write JSON to a temp file in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def eval_ppl_model_dir(
    model_dir: str | Path,
    *,
    dataset: str,
    source: str,
    split: str,
    block_size: int | None = None,
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
) -> dict:
    """NELBO bound (diffusion; per-block NELBO for kind "block") or exact perplexity (AR); returns the JSON
    record it also writes. A block model is scored with its own ``model.block_size`` and the
    ``shift_logits`` flag recorded in model.json."""
    device = pick_device(device)
    loaded = load_model_dir(model_dir, device=device)
    block_size = int(block_size or loaded.meta.get("block_size") or 0)
    if block_size <= 0:
        raise ConfigError("block_size is unknown for this model directory; pass block_size=<tokens>")
    max_len = getattr(loaded.model, "max_seq_len", block_size)
    if block_size > max_len:
        raise ConfigError(f"block_size={block_size} exceeds the model's context model.max_seq_len={max_len}; "
                          "pass a smaller block_size or extend the context with NTK RoPE scaling")
    blocks = corpus_blocks(source=source, split=split, tokenizer=loaded.tokenizer, block_size=block_size,
                           mode=mode, text_field=text_field, streaming=streaming, detokenizer=detokenizer,
                           cache_dir=cache_dir, max_tokens=max_tokens)
    if len(blocks) == 0:
        raise ConfigError(f"{dataset} ({split}) gives no block of {block_size} tokens; pass a smaller block_size")
    loader = DataLoader(blocks, batch_size=batch_size)
    keep_first_token = bool(loaded.meta.get("keep_first_token", False))
    if loaded.kind == "block":
        diffusion_block = int(getattr(loaded.model, "block_size", None) or 0)
        if diffusion_block <= 0 or block_size % diffusion_block:
            raise ConfigError(f"block_size={block_size} must be a multiple of the model's diffusion block size "
                              f"model.block_size={diffusion_block}; pass a block_size that it divides")
        result = evaluate_block_perplexity(
            loaded.model, loader, block_size=diffusion_block, num_samples=num_samples, method=method,
            schedule=loaded.schedule, keep_first_token=keep_first_token,
            shift_logits=bool(loaded.meta.get("shift_logits", False)), seed=seed, device=device, total=len(loader),
        )
    else:
        result = evaluate_perplexity(
            loaded.model, loader, kind="ar" if loaded.kind == "ar" else "diffusion", num_samples=num_samples,
            method=method, schedule=loaded.schedule, keep_first_token=keep_first_token,
            seed=seed, device=device, total=len(loader),
        )
    result = {"dataset": dataset, "split": split, "block_size": block_size, "model": str(model_dir),
              "detokenizer": detokenizer, **result}
    path = Path(out) if out else Path(model_dir) / "eval" / f"{Path(str(dataset)).stem}-{split}.json"
    write_json_atomic(path, result)
    result["out"] = str(path)
    return result
