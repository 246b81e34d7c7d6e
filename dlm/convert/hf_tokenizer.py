"""Tokenizers of converted checkpoints: where the mask token goes, and how it travels.

Absorbing diffusion needs a [MASK] id. ``choose_mask_id`` decides it from three numbers: the
tokenizer's length ``n``, the checkpoint's embedding rows ``vocab_size`` and an optional
user choice. The default is ``n``: the first spare (never trained) row when the checkpoint has
more rows than tokens (Qwen3: 151,669 tokens, 151,936 rows; SDAR's mask is 151,669), otherwise a
new row appended to the embedding and head. ``register_mask`` then writes the mask token into
the HF tokenizer *at that id*, so the tokenizer files, dlm's ``HFTokenizer`` and, after export,
``AutoTokenizer`` all agree with the model's ``mask_id``.

A dlm tokenizer (characters, DNA, a dlm-trained BPE) has no HF form; ``dlm_to_hf`` writes it to
``dlm_tokenizer/`` beside the HF weights and ``hf_to_dlm`` reads it back from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlm.errors import ConfigError

MASK_TOKEN = "<|mask|>"
DLM_TOKENIZER_DIR = "dlm_tokenizer"  # a dlm (non-HF) tokenizer beside exported HF weights


def choose_mask_id(n_tokens: int, vocab_size: int, mask_id: int | None = None,
                   existing: int | None = None) -> tuple[int, bool]:
    """``(mask_id, grow)``: the mask id for a tokenizer of ``n_tokens`` over ``vocab_size`` rows.

    ``existing`` is the tokenizer's own mask id (used when ``mask_id`` is None). Valid choices
    are an existing token id (< n_tokens) or ``n_tokens``, the next id the tokenizer can name;
    ``grow`` is True when that id is one past the embedding (a row must be appended).
    """
    if n_tokens > vocab_size:
        raise ConfigError(f"the tokenizer has {n_tokens} tokens but the checkpoint only {vocab_size} embedding rows "
                          "(config.json vocab_size); tokenizer and weights do not belong together")
    if mask_id is None:
        mask_id = n_tokens if existing is None else int(existing)
    mask_id = int(mask_id)
    if not 0 <= mask_id <= vocab_size:
        raise ConfigError(f"mask_id={mask_id} lies outside the vocabulary (vocab_size={vocab_size}: ids 0.."
                          f"{vocab_size - 1}); leave mask_id unset to use id {n_tokens} "
                          f"({'a spare row' if n_tokens < vocab_size else 'a new row'})")
    if mask_id > n_tokens:
        raise ConfigError(f"mask_id={mask_id} is beyond the tokenizer's {n_tokens} tokens, so no token can name it; "
                          f"use mask_id={n_tokens} (the first free id) or an existing token id")
    return mask_id, mask_id == vocab_size


def register_mask(hf_tokenizer: Any, mask_id: int, mask_token: str = MASK_TOKEN) -> None:
    """Make ``hf_tokenizer.mask_token_id == mask_id`` without touching any other id (in place)."""
    if hf_tokenizer.mask_token_id == mask_id:
        return
    if mask_id < len(hf_tokenizer):  # an existing token becomes the mask
        hf_tokenizer.mask_token = hf_tokenizer.convert_ids_to_tokens(mask_id)
    else:  # the next id: a special token appended after the vocabulary
        hf_tokenizer.add_special_tokens({"mask_token": mask_token})
    if hf_tokenizer.mask_token_id != mask_id:
        raise ConfigError(f"mask_token={mask_token!r} is already token {hf_tokenizer.mask_token_id} of this tokenizer, "
                          f"so it cannot become mask_id={mask_id}; pass another mask_token string")


def load_hf_tokenizer(directory: str | Path) -> Any:
    """The transformers tokenizer saved in ``directory`` (local files only)."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    if not any((directory / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise ConfigError(f"{directory} has no tokenizer files (tokenizer.json / tokenizer_config.json); the "
                          "converted model needs its tokenizer")
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def source_tokenizer(src: Path, vocab_size: int, *, mask_id: int | None, mask_token: str) -> tuple[Any, int, bool]:
    """``(dlm tokenizer, mask_id, grow)`` for the HF directory ``src`` whose embedding has ``vocab_size`` rows."""
    from dlm.data.tokenizer import load_tokenizer
    from dlm.data.tokenizers.hf import HFTokenizer

    if (src / DLM_TOKENIZER_DIR).is_dir():  # written by dlm_to_hf: its mask id is part of the tokenizer
        tok = load_tokenizer(src / DLM_TOKENIZER_DIR)
        if mask_id is not None and int(mask_id) != tok.mask_id:
            raise ConfigError(f"mask_id={mask_id}: the dlm tokenizer in {src / DLM_TOKENIZER_DIR} fixes its mask id "
                              f"at {tok.mask_id}; leave mask_id unset")
        chosen, grow = choose_mask_id(tok.vocab_size, vocab_size, None, existing=tok.mask_id)
        return tok, chosen, grow
    hf = load_hf_tokenizer(src)
    chosen, grow = choose_mask_id(len(hf), vocab_size, mask_id, existing=hf.mask_token_id)
    register_mask(hf, chosen, mask_token)
    return HFTokenizer.from_transformers(hf, name=src.resolve().name), chosen, grow


def export_tokenizer(tokenizer: Any, tokenizer_dir: Path, dst: Path, *, mask_id: int,
                     mask_token: str = MASK_TOKEN) -> bool:
    """Write ``tokenizer`` (saved in the dlm dir at ``tokenizer_dir``) into the HF dir ``dst``.

    Returns True when ``AutoTokenizer`` can read the result (an HF tokenizer, mask token included).
    """
    from dlm.data.tokenizers.hf import HFTokenizer

    if isinstance(tokenizer, HFTokenizer):
        hf = load_hf_tokenizer(tokenizer_dir)
        register_mask(hf, mask_id, mask_token)
        hf.save_pretrained(str(dst))
        return True
    tokenizer.save(dst / DLM_TOKENIZER_DIR)  # characters, DNA, ...: AutoTokenizer cannot read it
    return False
