"""DNA and protein tokenizers: one id per letter, strict alphabets.

Ids: the letters ``0..K-1`` in alphabet order, then ``[PAD]=K, [BOS]=K+1, [EOS]=K+2, [MASK]=K+3``
(DNA: K=4, vocab 8, mask 7; protein: K=20, vocab 24, mask 23). Letters come first so a one-hot
over ``0..K-1`` is directly a sequence (reward models and PWM scans read it that way).
Lower case is accepted; any other character is an error naming it and its 0-based position,
because a silently replaced base would corrupt a designed sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from dlm.data.tokenizer import fingerprint_of, write_tokenizer_spec
from dlm.errors import ConfigError

SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]")


class LetterTokenizer:
    """One id per letter of ``letters``; subclasses set ``letters``, ``kind`` and ``name``."""

    letters: ClassVar[str]
    kind: ClassVar[str]  # used in error messages: "DNA sequence has ..."
    name: ClassVar[str]

    def __init__(self) -> None:
        k = len(self.letters)
        self._tokens = [*self.letters, *SPECIALS]
        self.pad_id, self.bos_id, self.eos_id, self.mask_id = k, k + 1, k + 2, k + 3
        self.vocab_size = k + len(SPECIALS)
        self._ids = {ch: i for i, ch in enumerate(self.letters)}
        self._ids.update({ch.lower(): i for i, ch in enumerate(self.letters)})

    def encode(self, text: str) -> list[int]:
        ids = [self._ids.get(ch) for ch in text]
        if None in ids:
            pos = ids.index(None)
            raise ConfigError(
                f"{self.kind} sequence has {text[pos]!r} at position {pos}; allowed: {' '.join(self.letters)}"
            )
        return ids  # type: ignore[return-value]  # no None left

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        k, out = len(self.letters), []
        for i in map(int, ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size}) of {self.name}")
            if i < k or not skip_special:
                out.append(self._tokens[i])
        return "".join(out)

    def save(self, directory: str | Path) -> None:
        write_tokenizer_spec(directory, self, kwargs={})

    def fingerprint(self) -> str:
        return fingerprint_of({"type": self.name, "tokens": self._tokens})


class DNATokenizer(LetterTokenizer):
    """A C G T -> 0 1 2 3."""

    letters = "ACGT"
    kind = "DNA"
    name = "dna"


class ProteinTokenizer(LetterTokenizer):
    """The 20 canonical amino acids, alphabetical by one-letter code: ACDEFGHIKLMNPQRSTVWY."""

    letters = "ACDEFGHIKLMNPQRSTVWY"
    kind = "protein"
    name = "protein"
