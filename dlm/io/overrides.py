"""The overrides that are safe after training, applied while a model directory is loaded.

``rope_scaling``, ``max_seq_len`` and ``attn_backend`` change how the saved weights are *used*, never
their shapes: the model is rebuilt from its spec with the new arguments and the same weights are
loaded into it (long-context evaluation: NTK-scaled RoPE plus a larger context). ``dtype`` and
``device`` say where the loaded weights live. Anything else (``dim``, ``attention``, ...) would not
describe the trained network, and is refused with the list of valid names.

``rope_scaling`` is one of
    "none"                    plain RoPE (the default of every dlm model)
    "ntk:<factor>"            ``dlm.nn.rope.NTK(factor)``
    "ntk_auto:<target_len>"   ``dlm.nn.rope.NTKAuto(train_len, target_len)``, train_len = the length of
                              the rows the model was trained on (model.json ``seq_len``; the positions it
                              saw), else its saved ``max_seq_len`` (a converted HF model's context); unless
                              ``max_seq_len`` is given too, the context becomes ``target_len``
    "ntk_auto_diffusion:<target_len>"  ``dlm.nn.rope.NTKAutoDiffusion`` (UltraLLaDA's diffusion-aware
                              cap: the same rule with both lengths doubled), the context as for ntk_auto
or a ``dlm.nn.rope`` value (``NoScaling()``, ``NTK(...)``, ``NTKAuto(...)``) or its JSON spec.
Applied overrides are recorded (JSON-able) in ``ModelRecord.overrides`` and ``meta["overrides"]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from dlm.errors import ConfigError
from dlm.io.spec import accepted_arguments
from dlm.nn.rope import NTK, NoScaling, NTKAuto, NTKAutoDiffusion

LOAD_OVERRIDES = ("rope_scaling", "max_seq_len", "attn_backend", "dtype", "device")
SPEC_OVERRIDES = ("rope_scaling", "max_seq_len", "attn_backend")  # rebuild the model with these
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
ROPE_TARGETS = {cls: f"dlm.nn.rope.{cls.__name__}" for cls in (NTK, NTKAuto, NTKAutoDiffusion)}
AUTO_NAMES = {"ntk_auto": NTKAuto, "ntk_auto_diffusion": NTKAutoDiffusion}  # rope_scaling=<name>:<target_len>


def check_override_names(overrides: dict[str, Any]) -> None:
    """Refuse an override that is not safe after training, naming the valid ones."""
    unknown = sorted(set(overrides) - set(LOAD_OVERRIDES))
    if unknown:
        raise ConfigError(f"unknown load override(s) {unknown}; valid after training: {', '.join(LOAD_OVERRIDES)} "
                          "(an architecture change needs retraining: dlm-train init_from=<dir> init_overrides=...)")


def rope_scaling_spec(value: Any, *, train_len: int) -> dict | None:
    """The JSON spec of a ``rope_scaling`` override (None: plain RoPE); ``train_len`` is the saved context."""
    if value is None or isinstance(value, NoScaling):
        return None
    if isinstance(value, NTK | NTKAuto | NTKAutoDiffusion):
        return {"_target_": ROPE_TARGETS[type(value)], **dataclasses.asdict(value)}
    if isinstance(value, dict) and str(value.get("_target_", "")).startswith("dlm.nn.rope."):
        return dict(value)
    if isinstance(value, str):
        name, _, arg = value.partition(":")
        try:
            if name == "none" and not arg:
                return None
            if name == "ntk":
                return {"_target_": ROPE_TARGETS[NTK], "factor": float(arg)}
            if name in AUTO_NAMES:
                return {"_target_": ROPE_TARGETS[AUTO_NAMES[name]], "train_len": int(train_len), "target_len": int(arg)}
        except ValueError:
            pass
    raise ConfigError(f"rope_scaling={value!r}; valid: 'none', 'ntk:<factor>', 'ntk_auto:<target_len>', "
                      "'ntk_auto_diffusion:<target_len>', or a dlm.nn.rope value (NoScaling(), NTK(factor), "
                      "NTKAuto(train_len, target_len), NTKAutoDiffusion(train_len, target_len))")


def parse_dtype(value: Any) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in DTYPES:
        return DTYPES[value.removeprefix("torch.")]
    raise ConfigError(f"dtype={value!r}; valid: {', '.join(DTYPES)} (or a torch.dtype)")


def apply_spec_overrides(spec: dict, overrides: dict[str, Any], *, where: str,
                         trained_len: int | None = None) -> tuple[dict, dict]:
    """(the model spec with ``rope_scaling`` / ``max_seq_len`` / ``attn_backend`` applied, the applied
    values as JSON). Refuses an override the spec's constructor does not take. ``trained_len``: the rows'
    length in training (the automatic NTK rules' train_len; default the spec's max_seq_len)."""
    given = {k: v for k, v in overrides.items() if k in SPEC_OVERRIDES and v is not None}
    if not given:
        return spec, {}
    accepted = accepted_arguments(spec)
    refused = sorted(k for k in given if k not in accepted)
    if refused:
        raise ConfigError(f"{where}: the model {spec.get('_target_')} takes no {', '.join(refused)}; "
                          f"overrides it accepts: {', '.join(k for k in SPEC_OVERRIDES if k in accepted) or 'none'}")
    spec, applied = dict(spec), {}
    if "rope_scaling" in given:
        rope = rope_scaling_spec(given["rope_scaling"], train_len=int(trained_len or spec.get("max_seq_len") or 0))
        spec["rope_scaling"] = applied["rope_scaling"] = rope
        auto = {ROPE_TARGETS[cls] for cls in AUTO_NAMES.values()}
        if rope is not None and rope["_target_"] in auto and "max_seq_len" not in given:
            given["max_seq_len"] = rope["target_len"]  # extending to target_len is what ntk_auto asks for
    if "max_seq_len" in given:
        n = given["max_seq_len"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"max_seq_len={n!r} must be a positive integer (the context in tokens)")
        spec["max_seq_len"] = applied["max_seq_len"] = n
    if "attn_backend" in given:
        spec["attn_backend"] = applied["attn_backend"] = str(given["attn_backend"])
    return spec, applied
