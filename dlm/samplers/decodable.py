"""Which models a sampler can decode, checked from the declared model contract before any compute.

Every sampler declares the attentions it decodes (``decodes``) and whether it reads shifted logits
(``reads_shifted_logits``); ``check_decodable`` refuses anything else with one line naming the
sampler that can. A full-canvas masked-diffusion sampler run on an AR model would otherwise return
garbage with exit code 0 (it never sees the causal mask it was given).
"""

from __future__ import annotations

from dlm.errors import ConfigError
from dlm.types import DENOISER_ATTRIBUTES, Attention, Denoiser

# the samplers that do decode each kind of model, for the refusal message
SUGGESTION: dict[Attention, str] = {
    "bidirectional": "a masked-diffusion sampler (sampler=first_hitting / ancestral_cached / confidence / ...; "
                     "sampler/cache=dkv_decode caches its keys and values)",
    "causal": "sampler=autoregressive",
    "block_causal": "a block sampler (sampler=block_static / block_threshold / ...)",
}

MASKED: frozenset[Attention] = frozenset({"bidirectional"})


def check_decodable(sampler: object, model: Denoiser, *, decodes: frozenset[Attention],
                    reads_shifted_logits: bool = False) -> None:
    """Raise ConfigError unless ``model`` declares the contract and is a kind ``sampler`` decodes."""
    missing = [a for a in DENOISER_ATTRIBUTES if not hasattr(model, a)]
    if missing:
        raise ConfigError(f"{type(model).__name__} does not declare the denoiser contract attributes {missing} "
                          "(dlm.types.Denoiser); set them on the model")
    name = type(sampler).__name__
    if model.attention not in decodes:
        raise ConfigError(f"{name} cannot decode a model with attention={model.attention!r} (it decodes "
                          f"{', '.join(sorted(decodes))}); use {SUGGESTION[model.attention]}")
    if model.shift_logits and not reads_shifted_logits:
        raise ConfigError(f"this model was trained with shift_logits=true (token i read from output i - 1); "
                          f"{name} reads unshifted logits and would decode it wrongly: use a block sampler "
                          "(sampler=block_static / block_threshold / ...)")
