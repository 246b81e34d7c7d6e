"""Detokenizers for zero-shot perplexity: undo the word-level tokenization of evaluation corpora.

SEDD, MDLM and RADD apply these string rules before GPT-2 tokenization, so perplexities are
comparable only with the same rules. They are reimplemented here as ordered rule tables (a
literal ``str.replace`` or a compiled regex each), applied in the reference order; quirks of the
reference rules are kept on purpose and marked, because changing them changes published numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from dlm.errors import ConfigError

Rule = tuple[str | re.Pattern[str], str]


def _apply(rules: Sequence[Rule], text: str) -> str:
    for old, new in rules:
        text = old.sub(new, text) if isinstance(old, re.Pattern) else text.replace(old, new)
    return text


_WIKITEXT: list[Rule] = [
    ("s '", "s'"),  # plural possessive
    # quirk kept for parity: the reference replacement is the literal text "/'[0-9]/"; it only fires on "/' <digit>/"
    (re.compile(r"/' [0-9]/"), r"/'[0-9]/"),
    (" @-@ ", "-"),  # number and compound separators
    (" @,@ ", ","),
    (" @.@ ", "."),
    (" : ", ": "),
    (" ; ", "; "),
    (" . ", ". "),
    (" ! ", "! "),
    (" ? ", "? "),
    (" , ", ", "),
    (re.compile(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"),  # no spaces inside brackets and quotes
    (re.compile(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
    (re.compile(r"{\s*([^}]*?)\s*}"), r"{\1}"),
    (re.compile(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
    (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'"),
    ("= = = =", "===="),  # section headings
    ("= = =", "==="),
    ("= =", "=="),
    (" \u00b0 ", "\u00b0"),  # degree sign
    (" \n", "\n"),
    ("\n ", "\n"),
    (" N ", " 1 "),
    (" 's", "'s"),
]

_PTB: list[Rule] = [
    (" 's", "'s"),
    ("s ' ", "s' "),
    (" n't", "n't"),
    (" \n ", "\n"),
    ("\\/", "/"),
    # the reference repeats this replace 10 times: one pass misses every second "N" of "N N N"
    *[(" N ", " 1 ")] * 10,
    ("$ 1", "$1"),
    ("# 1", "#1"),
    ("<unk>", "?"),
]

_LM1B: list[Rule] = [
    ("http : / / ", "http://"),
    ("https : / / ", "https://"),
    (re.compile(r" '(\w+)"), r"'\1"),
    (re.compile(r" (\w+) \. "), r" \1. "),
    (re.compile(r" (\w+) \.$"), r" \1."),
    (" ? ", "? "),
    (re.compile(r" \?$"), "?"),
    (" ! ", "! "),
    (re.compile(r" \!$"), "!"),
    (" , ", ", "),
    (" : ", ": "),
    (" ; ", "; "),
    (" / ", "/"),
    (re.compile(r"\" ([^\"]+) \""), r'"\1"'),
    (re.compile(r"' ([^']+) '"), r"'\1'"),
    (re.compile(r"\( ([^\(\)]+) \)"), r"(\1)"),
    (re.compile(r"\[ ([^\[\]]+) \]"), r"[\1]"),
    ("$ ", "$"),
    ("\u00a3 ", "\u00a3"),  # pound sign
]


def wt_detokenizer(text: str) -> str:
    """WikiText ``wiki.*.tokens`` -> raw text: ``" @-@ "`` -> ``"-"``, punctuation and bracket spacing."""
    return _apply(_WIKITEXT, text)


def ptb_detokenizer(text: str) -> str:
    """Penn Treebank: contractions, ``N`` -> ``1`` (PTB's number placeholder), ``<unk>`` -> ``?``."""
    return _apply(_PTB, text)


def lm1b_detokenizer(text: str) -> str:
    """One Billion Words: URLs, contractions, punctuation, quotes, brackets, currency."""
    return _apply(_LM1B, text)


def lambada_detokenizer(text: str) -> str:
    """LAMBADA (OpenAI jsonl): straight quotes, stripped, with the leading newline of the reference."""
    return "\n" + text.replace("\u201c", '"').replace("\u201d", '"').strip()


DETOKENIZERS: dict[str, Callable[[str], str]] = {
    "wikitext": wt_detokenizer,
    "ptb": ptb_detokenizer,
    "lm1b": lm1b_detokenizer,
    "lambada": lambada_detokenizer,
}


def _identity(text: str) -> str:
    return text


def get_detokenizer(name: str | None) -> Callable[[str], str]:
    """The detokenizer called ``name``; ``None`` gives the identity."""
    if name is None:
        return _identity
    if name not in DETOKENIZERS:
        raise ConfigError(
            f"data.detokenizer={name!r} is unknown; valid: {', '.join(DETOKENIZERS)}, or null for none"
        )
    return DETOKENIZERS[name]
