"""``dlm-convert``: a Hugging Face causal-LM directory <-> a dlm model directory, both written atomically.

``hf_to_dlm`` reads ``config.json``, the weights and the tokenizer of a local HF directory (never the
network) and writes a dlm model directory whose family follows the attention asked for: ``causal``
reproduces the HF logits (``AR``), ``block_causal`` reuses the weights for block diffusion (``BLOCK``,
SDAR), ``bidirectional`` for masked diffusion (``MASKED``). ``dlm_to_hf`` writes ``config.json``
(architecture class, ``mask_token_id``), ``model.safetensors`` with HF names, the tokenizer (a dlm
tokenizer without an HF form goes to ``dst/dlm_tokenizer/``, which ``hf_to_dlm`` reads back) and
``dlm_conversion.json``. The translation itself (names, configs, mask row) is ``dlm.convert.hf``.

An AR (``causal``) conversion records how the HF model normalises its next-token softmax
(``ar_softmax``), so dlm's exact perplexity equals ``transformers``': "full" (every row) when the mask
sits on one of the checkpoint's rows, "without_mask" when the mask row was appended (the HF model has
no such row); a HF directory written by ``dlm_to_hf`` keeps the dlm model's own normalisation, carried
in ``dlm_conversion.json``. An existing non-empty ``dst`` is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch

from dlm.convert.hf import check_target, dlm_model_from_hf, hf_model_from_dlm, model_kwargs_from_hf
from dlm.convert.hf_tokenizer import MASK_TOKEN, export_tokenizer, source_tokenizer
from dlm.errors import ConfigError
from dlm.io.atomic import atomic_dir
from dlm.io.model_dir import load_model_dir, save_model_dir
from dlm.io.record import Family, checked_ar_softmax
from dlm.types import ArSoftmax

SCHEDULE = {"_target_": "dlm.diffusion.schedule.LogLinearSchedule"}  # the default of objective=block
CONVERSION_FILE = "dlm_conversion.json"  # written by dlm_to_hf beside the HF weights


def check_destination(src: Path, dst: Path, *, overwrite: bool) -> None:
    """Refuse, before reading any weights, a ``dst`` that would destroy something: a file, the source
    itself, or a non-empty directory unless ``overwrite`` (dlm-convert ``overwrite=true``)."""
    if dst.exists() and dst.resolve() == src.resolve():
        raise ConfigError(f"dst={dst} is the source directory src={src}; pass another dst")
    if dst.is_file():
        raise ConfigError(f"dst={dst} is a file; dlm-convert writes a directory: pass another dst")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise ConfigError(f"dst={dst} exists and is not empty; pass overwrite=true to replace it, or another dst")


def converted_ar_softmax(src: Path, *, resized: bool) -> ArSoftmax:
    """How the converted AR model's softmax is normalised (``dlm.io.record.ArSoftmax``): as the HF causal
    LM does, over its own rows: "full" when the mask is one of them, "without_mask" when the mask row was
    appended (``resized``); a dlm model exported by ``dlm_to_hf`` keeps the normalisation it was trained
    with (recorded in its ``dlm_conversion.json``)."""
    info = src / CONVERSION_FILE
    if info.is_file():
        recorded = json.loads(info.read_text()).get("ar_softmax")
        if recorded is not None:
            return checked_ar_softmax(Family.AR, recorded, where=str(info))
    return "without_mask" if resized else "full"


def hf_to_dlm(src: str | Path, dst: str | Path, *, attention: str = "causal", block_size: int | None = None,
              mask_id: int | None = None, mask_token: str = MASK_TOKEN, overwrite: bool = False) -> dict:
    """Convert a local HF causal-LM directory into a dlm model directory; returns a summary dict.

    ``attention="causal"`` reproduces the HF logits (kind ``ar``); ``"block_causal"`` (needs
    ``block_size`` dividing the context) gives a block-diffusion model (kind ``block``, SDAR);
    ``"bidirectional"`` a masked-diffusion model. ``mask_id`` defaults to len(tokenizer): a spare
    row, or a new mean row when the embedding has none (``resized`` in the summary). An existing
    non-empty ``dst`` is refused unless ``overwrite``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    start, src, dst = time.perf_counter(), Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise ConfigError(f"src={src} is not a Hugging Face model directory (no config.json)")
    check_destination(src, dst, overwrite=overwrite)
    if attention not in ("causal", "block_causal", "bidirectional"):
        raise ConfigError(f"attention={attention!r}; choose causal, block_causal or bidirectional")
    cfg = AutoConfig.from_pretrained(str(src), local_files_only=True)
    check_target(attention, block_size, model_kwargs_from_hf(cfg)["max_seq_len"])  # before reading the weights
    tokenizer, mask_id, resized = source_tokenizer(src, cfg.vocab_size, mask_id=mask_id, mask_token=mask_token)
    hf = AutoModelForCausalLM.from_pretrained(str(src), local_files_only=True, dtype=torch.float32)
    model, spec = dlm_model_from_hf(hf.state_dict(), cfg, attention=attention, block_size=block_size,
                                    mask_id=mask_id, resized=resized)
    del hf
    family = Family.of_attention(attention)
    extra = {"converted_from": {"path": str(src), "model_type": cfg.model_type, "mask_row_appended": resized}}
    if family is Family.AR:  # scored with the softmax the HF model defines (dlm.io.record.ArSoftmax)
        extra["ar_softmax"] = converted_ar_softmax(src, resized=resized)
    save_model_dir(dst, model=model, model_spec=spec, tokenizer=tokenizer, family=family,
                   schedule_spec=None if family is Family.AR else SCHEDULE, extra=extra)
    return {"src": str(src), "dst": str(dst), "direction": "to_dlm", "model_type": cfg.model_type, "mask_id": mask_id,
            "vocab_size": spec["vocab_size"], "resized": resized, "kind": family.kind,
            "seconds": time.perf_counter() - start}


def dlm_to_hf(src: str | Path, dst: str | Path, *, model_type: str | None = None,
              mask_token: str = MASK_TOKEN, overwrite: bool = False) -> dict:
    """Write a dlm model directory as a HF causal-LM directory; returns a summary dict.

    ``dst`` gets ``config.json`` (``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` / ``Qwen3ForCausalLM``,
    ``mask_token_id``), ``model.safetensors`` with HF names, the tokenizer with its mask token (or
    ``dlm_tokenizer/`` for a dlm tokenizer, which ``AutoTokenizer`` cannot read) and
    ``dlm_conversion.json``. ``model_type`` defaults from the weights: q/k-norm -> qwen3, q/k/v
    bias -> qwen2, else llama. Written atomically (a temp dir renamed when complete); an existing
    non-empty ``dst`` is refused unless ``overwrite``.
    """
    start, dst = time.perf_counter(), Path(dst)
    check_destination(Path(src), dst, overwrite=overwrite)
    loaded = load_model_dir(src)
    model = loaded.model
    hf, model_type = hf_model_from_dlm(model, loaded.tokenizer, model_type=model_type)
    if model.attention != "causal":
        warnings.warn(f"{src} is a {model.attention} ({loaded.family.kind}) model; as a HF causal LM it runs with "
                      "causal attention, so its logits differ from the dlm model's", stacklevel=2)
    with atomic_dir(dst) as tmp:
        hf.save_pretrained(str(tmp))
        hf_tokenizer = export_tokenizer(loaded.tokenizer, Path(src) / "tokenizer", tmp, mask_id=model.mask_id,
                                        mask_token=mask_token)
        (tmp / CONVERSION_FILE).write_text(json.dumps(
            {"from": str(src), "mask_id": model.mask_id, "kind": loaded.family.kind, "attention": model.attention,
             "block_size": model.block_size, "hf_tokenizer": hf_tokenizer,
             "ar_softmax": loaded.record.ar_softmax}, indent=2))
    return {"src": str(src), "dst": str(dst), "direction": "to_hf", "model_type": model_type,
            "mask_id": model.mask_id, "vocab_size": model.vocab_size, "resized": False,
            "hf_tokenizer": hf_tokenizer, "seconds": time.perf_counter() - start}


def convert(src: str, dst: str, *, direction: str | None = None, attention: str = "causal",
            block_size: int | None = None, mask_id: int | None = None, model_type: str | None = None,
            mask_token: str = MASK_TOKEN, overwrite: bool = False) -> dict:
    """Either direction; ``direction`` defaults from what ``src`` holds (config.json vs model.json);
    ``overwrite``: replace an existing non-empty ``dst`` (refused otherwise)."""
    path = Path(src)
    if direction is None:
        if not (path / "model.json").is_file() and not (path / "config.json").is_file():
            raise ConfigError(f"src={src} holds neither model.json (a dlm model directory) nor config.json (a HF "
                              "causal-LM directory); point src at one of them")
        direction = "to_hf" if (path / "model.json").is_file() else "to_dlm"
    if direction == "to_dlm":
        return hf_to_dlm(src, dst, attention=attention, block_size=block_size, mask_id=mask_id,
                         mask_token=mask_token, overwrite=overwrite)
    if direction == "to_hf":
        if mask_id is not None or attention != "causal" or block_size is not None:
            raise ConfigError("mask_id / attention / block_size apply to direction=to_dlm; a dlm model directory "
                              "keeps its own (leave them unset with direction=to_hf)")
        return dlm_to_hf(src, dst, model_type=model_type, mask_token=mask_token, overwrite=overwrite)
    raise ConfigError(f"direction={direction!r}; choose to_dlm or to_hf")
