"""Character tokenizer for natural text: one id per character, unknown characters -> [UNK].

Ids: ``[PAD]=0, [BOS]=1, [EOS]=2, [UNK]=3``, then the alphabet in order, then ``[MASK]`` last
(``mask_id = vocab_size - 1``). The default alphabet is newline, tab and printable ASCII 32..126,
so ``vocab_size = 4 + 97 + 1 = 102``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dlm.data.tokenizer import fingerprint_of, write_tokenizer_spec
from dlm.errors import ConfigError

DEFAULT_ALPHABET = "\n\t" + "".join(chr(c) for c in range(32, 127))
SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
MASK = "[MASK]"
# shown for [UNK] even when specials are skipped: it stands for a character that was in the text
UNK_TEXT = "\ufffd"


class CharTokenizer:
    """Characters of ``alphabet`` (default: newline, tab, printable ASCII); others become [UNK]."""

    def __init__(self, alphabet: str | None = None) -> None:
        chars = DEFAULT_ALPHABET if alphabet is None else alphabet
        if not chars:
            raise ConfigError("tokenizer.alphabet is empty; give the characters to model, or null for ASCII")
        seen: set[str] = set()
        for pos, ch in enumerate(chars):
            if ch in seen:
                raise ConfigError(
                    f"tokenizer.alphabet repeats {ch!r} (second time at position {pos}); list each character once"
                )
            seen.add(ch)
        self.alphabet = chars
        self._tokens = [*SPECIALS, *chars, MASK]
        self._ids = {ch: i + len(SPECIALS) for i, ch in enumerate(chars)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3
        self.vocab_size = len(self._tokens)
        self.mask_id = self.vocab_size - 1
        self._fingerprint = fingerprint_of({"type": "char", "tokens": self._tokens})
        self.name = (
            "char-ascii" if chars == DEFAULT_ALPHABET else f"char-{len(chars)}-{self._fingerprint[:8]}"
        )

    def encode(self, text: str) -> list[int]:
        get, unk = self._ids.get, self.unk_id
        return [get(ch, unk) for ch in text]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        first_char, out = len(SPECIALS), []
        for i in map(int, ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size}) of {self.name}")
            if first_char <= i < self.mask_id:
                out.append(self._tokens[i])
            elif i == self.unk_id:
                out.append(self._tokens[i] if not skip_special else UNK_TEXT)
            elif not skip_special:
                out.append(self._tokens[i])
        return "".join(out)

    def save(self, directory: str | Path) -> None:
        alphabet = None if self.alphabet == DEFAULT_ALPHABET else self.alphabet
        write_tokenizer_spec(directory, self, kwargs={"alphabet": alphabet})

    def fingerprint(self) -> str:
        return self._fingerprint
