"""A Hugging Face fast tokenizer (GPT-2 BPE and friends) behind the dlm ``Tokenizer`` protocol.

Three ways in: a hub name (``"gpt2"``), a local tokenizer directory (``save_pretrained`` output),
or GPT-2-style ``vocab.json`` + ``merges.txt``. Absorbing diffusion needs a mask id: when the
tokenizer has no mask token it is appended after the vocabulary, ``mask_id = len(tokenizer)``
(GPT-2: 50257, ``vocab_size`` 50258), as MDLM and RADD do; the HF tokenizer itself is left
untouched, so ids 0..50256 mean exactly what they mean to GPT-2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dlm.data.tokenizer import fingerprint_of, write_tokenizer_spec
from dlm.errors import ConfigError, OfflineError

MASK_TEXT = "[MASK]"
GPT2_EOT = "<|endoftext|>"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the hub could not serve this" (requests/httpx/hub errors)."""
    # requests' ConnectionError and the errors transformers re-raises are OSErrors
    errors: list[type[BaseException]] = [OSError]
    try:
        import httpx

        errors.append(httpx.HTTPError)
    except ImportError:
        pass
    return tuple(errors)


def bpe_tokenizer_from_files(vocab_file: str, merges_file: str):
    """GPT-2 byte-level BPE from ``vocab.json`` + ``merges.txt``.

    Built with the ``tokenizers`` library and then wrapped: transformers 5 silently ignores the
    ``vocab_file=`` keyword of ``GPT2TokenizerFast`` (it returns an empty tokenizer), 4.x honours it.
    """
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    for key, path in (("vocab_file", vocab_file), ("merges_file", merges_file)):
        if not Path(path).is_file():
            raise ConfigError(
                f"tokenizer.{key}={path} does not exist; point it at the GPT-2 {Path(path).name or key} "
                "(or set DLM_GPT2_DIR to the directory holding vocab.json and merges.txt)"
            )
    rust = RustTokenizer(models.BPE.from_file(vocab_file, merges_file))
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    eot = GPT2_EOT if rust.token_to_id(GPT2_EOT) is not None else None
    return PreTrainedTokenizerFast(tokenizer_object=rust, bos_token=eot, eos_token=eot, unk_token=eot)


def _from_pretrained(name_or_path: str):
    """A local tokenizer directory, or a hub name; hub failures become an ``OfflineError``."""
    from transformers import AutoTokenizer

    local = Path(name_or_path).expanduser()
    if local.exists():
        return AutoTokenizer.from_pretrained(str(local), local_files_only=True)
    if name_or_path.startswith(("/", "./", "../", "~")):
        raise ConfigError(
            f"tokenizer.name_or_path={name_or_path} looks like a local path but does not exist; "
            "give an existing tokenizer directory or a hub name such as 'gpt2'"
        )
    # huggingface_hub reads HF_HUB_OFFLINE once at import; reading it here as well makes a setting
    # made later in the process (tests, notebooks) fail fast instead of retrying the network for a minute
    offline = _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE")
    try:
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=offline)
    except _hub_errors() as err:
        raise OfflineError(
            f"could not load tokenizer {name_or_path!r} from the Hugging Face hub: the hub is unreachable "
            f"(offline?) or has no such repository, and it is not in the local HF cache ({err}). "
            "Use local files instead: tokenizer=gpt2_local tokenizer.vocab_file=/path/to/vocab.json "
            "tokenizer.merges_file=/path/to/merges.txt, or tokenizer.name_or_path=/path/to/tokenizer_dir "
            "(a save_pretrained directory). Set HF_HUB_OFFLINE=1 to skip network retries and use the HF cache only."
        ) from err


class HFTokenizer:
    """Wrap a HF fast tokenizer. Give ``name_or_path`` *or* ``vocab_file`` + ``merges_file``.

    ``name`` overrides the short description (default: the hub name, or the name of the folder
    holding the vocab files). ``bos_id``/``eos_id`` fall back to CLS/SEP (BERT-style tokenizers).
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        *,
        vocab_file: str | None = None,
        merges_file: str | None = None,
        add_mask_token: bool = True,
        name: str | None = None,
    ) -> None:
        files = vocab_file is not None or merges_file is not None
        if (name_or_path is None) == (not files):
            raise ConfigError(
                "give either tokenizer.name_or_path (hub name or local directory) or tokenizer.vocab_file + "
                f"tokenizer.merges_file, not {'both' if files else 'neither'} "
                f"(got name_or_path={name_or_path!r}, vocab_file={vocab_file!r}, merges_file={merges_file!r})"
            )
        if name_or_path is not None:
            hf = _from_pretrained(name_or_path)
            local = Path(name_or_path).expanduser()
            default_name = local.resolve().name if local.exists() else name_or_path
        else:
            if vocab_file is None or merges_file is None:
                missing = "vocab_file" if vocab_file is None else "merges_file"
                raise ConfigError(
                    f"tokenizer.{missing} is missing; BPE files need both vocab_file and merges_file"
                )
            hf = bpe_tokenizer_from_files(vocab_file, merges_file)
            default_name = Path(vocab_file).resolve().parent.name or "bpe"
        self._attach(hf, name=name or default_name, add_mask_token=add_mask_token)

    @classmethod
    def from_transformers(cls, hf_tokenizer: Any, *, name: str, add_mask_token: bool = True) -> HFTokenizer:
        """Wrap an already-built transformers fast tokenizer (e.g. a freshly trained BPE)."""
        self = cls.__new__(cls)
        self._attach(hf_tokenizer, name=name, add_mask_token=add_mask_token)
        return self

    def _attach(self, hf: Any, *, name: str, add_mask_token: bool) -> None:
        self._hf = hf
        self._backend = hf.backend_tokenizer  # Rust tokenizer: fast encode, no Python-side cleanup on decode
        self._add_mask_token = add_mask_token
        self.name = name
        n = len(hf)
        self._mask_appended = hf.mask_token_id is None
        if self._mask_appended:
            if not add_mask_token:
                raise ConfigError(
                    f"tokenizer {name!r} has no mask token and add_mask_token=False; set "
                    f"tokenizer.add_mask_token=true to append [MASK] as id {n}"
                )
            self.mask_id, self.vocab_size = n, n + 1
        else:
            self.mask_id, self.vocab_size = int(hf.mask_token_id), n

        def first(*ids: int | None) -> int | None:
            return next((int(i) for i in ids if i is not None), None)

        self.bos_id = first(hf.bos_token_id, hf.cls_token_id)
        self.eos_id = first(hf.eos_token_id, hf.sep_token_id)
        self.pad_id = first(hf.pad_token_id)
        self._fingerprint: str | None = None

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            return self._backend.decode([i for i in ids if i != self.mask_id], skip_special_tokens=True)
        if not self._mask_appended:
            return self._backend.decode(ids, skip_special_tokens=False)
        # the appended mask id is unknown to the HF tokenizer (it would drop it): splice its text in
        pieces: list[str] = []
        run: list[int] = []
        for i in ids:
            if i == self.mask_id:
                pieces += [self._backend.decode(run, skip_special_tokens=False), MASK_TEXT]
                run = []
            else:
                run.append(i)
        pieces.append(self._backend.decode(run, skip_special_tokens=False))
        return "".join(pieces)

    def save(self, directory: str | Path) -> None:
        """HF files (``save_pretrained``) plus a spec pointing at this same directory (relative)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._hf.save_pretrained(str(directory))
        write_tokenizer_spec(
            directory,
            self,
            kwargs={"name_or_path": ".", "add_mask_token": self._add_mask_token, "name": self.name},
            path_kwargs=["name_or_path"],
        )

    def fingerprint(self) -> str:
        """sha1 over the model (vocab + merges), normalizer, pre-tokenizer, added tokens, special ids.

        Post-processor, decoder and padding settings are left out: they do not change which ids
        ``encode`` produces, so a hub tokenizer and the same one built from files share caches.
        """
        if self._fingerprint is None:
            spec = json.loads(self._backend.to_str())
            model = spec["model"]
            merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])]
            payload = {
                "model": {k: v for k, v in model.items() if k != "merges"},
                "merges": merges,
                "normalizer": spec.get("normalizer"),
                "pre_tokenizer": spec.get("pre_tokenizer"),
                "added": sorted((t["id"], t["content"]) for t in spec.get("added_tokens", [])),
                "ids": [self.vocab_size, self.mask_id, self.bos_id, self.eos_id, self.pad_id],
            }
            self._fingerprint = fingerprint_of(payload)
        return self._fingerprint
