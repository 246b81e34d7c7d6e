"""Synthetic needle-in-a-haystack documents: key -> value pairs in filler text, a query at the end.

A document of ``length`` characters is ``context + query + answer``:

    context   ``length - len(query) - value_len`` characters of filler (a fixed passage of lower-case words
              from a random word on) with
              ``num_pairs`` pairs `` KEY=VALUE `` written over it at non-overlapping offsets. Keys are
              distinct upper-case strings of ``key_len`` letters, values distinct strings of
              ``value_len`` digits, so no value occurs anywhere else in the context (the filler has no
              digits and every digit run is one whole value).
    queries   ``num_queries - 1`` answered queries `` ?KEY=VALUE`` about distinct distractor pairs, then
              `` ?KEY=`` naming the *needle* pair (``num_queries = 1``: the needle's query alone);
    answer    the needle's VALUE: the last ``value_len`` characters of the document.

Answered queries are a training aid: every one is a retrieval example whose answer is visible, so a
document teaches ``num_queries`` retrievals instead of one, while the scored answer is still the last.
They never name the needle, so its value occurs exactly once before the answer.

Depth: the needle pair starts at offset ``round(depth * (context_len - pair_len))`` of the context, so
depth 0 is the start of the document and depth 1 ends just before the query (the closest the needle
gets to the question). ``depth=None`` draws it uniformly per document (training). The other
``num_pairs - 1`` pairs (distractors: a model must match the key, not copy the only number) are
placed at random non-overlapping offsets around it.

Everything is a function of ``seed`` (an int or a string, e.g. ``"0:train:17"``, fed to
``random.Random``, which hashes strings with SHA-512: the same document on every machine and run).
A model reads a document as one row ``[BOS] document [EOS]`` of ``length + 2`` tokens under a
character tokenizer (``needle_row``): ``seq_len`` of the data and ``lengths=`` of ``dlm-eval-needle``
are these row lengths.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from dlm.errors import ConfigError

FILLER_WORDS = (
    "the", "grass", "is", "green", "sky", "blue", "sun", "warm", "and", "river", "runs", "past", "old", "mill",
    "a", "bird", "sings", "over", "quiet", "hills", "while", "wind", "moves", "slow", "clouds", "in", "late",
    "summer", "light", "falls", "on", "stone",
)
ROW_SPECIALS = 2  # [BOS] and [EOS] around the document in a row
_QUERY = re.compile(r"\?([A-Z]+)=$")


@dataclass(frozen=True)
class NeedleTask:
    """The shape of a needle document; ``length`` in characters (a row is ``length + 2`` tokens)."""

    length: int
    num_pairs: int = 4
    key_len: int = 2
    value_len: int = 3
    num_queries: int = 1

    def __post_init__(self) -> None:
        for key in ("length", "num_pairs", "key_len", "value_len", "num_queries"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"needle {key}={value!r} must be a positive integer")
        if 26 ** self.key_len < self.num_pairs or 10 ** self.value_len < self.num_pairs:
            raise ConfigError(f"needle num_pairs={self.num_pairs} needs more distinct keys/values than key_len="
                              f"{self.key_len} letters / value_len={self.value_len} digits give; raise them")
        if self.num_queries > self.num_pairs:
            raise ConfigError(f"needle num_queries={self.num_queries} exceeds num_pairs={self.num_pairs}: the answered "
                              "queries name distinct distractor pairs; lower num_queries")
        if self.context_len < self.min_context_len:
            raise ConfigError(
                f"needle length={self.length} (seq_len={self.length + ROW_SPECIALS} with BOS/EOS) is too short for "
                f"num_pairs={self.num_pairs} key-value pairs of {self.pair_len} characters plus the queries and answer "
                f"({self.queries_len}); raise the length to at least "
                f"{self.min_context_len + self.queries_len + ROW_SPECIALS} (seq_len) or lower num_pairs")

    @classmethod
    def for_row(cls, seq_len: int, **kwargs: int) -> NeedleTask:
        """The task whose documents fill rows of ``seq_len`` tokens (``[BOS] document [EOS]``)."""
        return cls(length=seq_len - ROW_SPECIALS, **kwargs)

    @property
    def pair_len(self) -> int:
        return len(" = ") + self.key_len + self.value_len  # " KEY=VALUE "

    @property
    def query_len(self) -> int:
        return len(" ?=") + self.key_len  # " ?KEY="

    @property
    def queries_len(self) -> int:
        """Characters after the context: every query and its value (the last value is the answer)."""
        return self.num_queries * (self.query_len + self.value_len)

    @property
    def context_len(self) -> int:
        return self.length - self.queries_len

    @property
    def min_context_len(self) -> int:
        """Room for the pairs at any needle depth: the needle splits the rest of the context into two
        segments whose whole-pair capacities lose less than one pair each to rounding, so one spare
        pair's room always suffices."""
        return (self.num_pairs + 1) * self.pair_len

    def value_spans(self) -> list[tuple[int, int]]:
        """Document offsets [start, stop) of every query's value, in order; the last is the answer."""
        first = self.context_len + self.query_len
        step = self.query_len + self.value_len
        return [(first + i * step, first + i * step + self.value_len) for i in range(self.num_queries)]

    @property
    def answer_start(self) -> int:
        """Offset of the answer in the document (it is always the last ``value_len`` characters)."""
        return self.length - self.value_len


@dataclass(frozen=True)
class NeedleDoc:
    """One document: ``text`` (``task.length`` characters), the queried ``key`` and its ``answer``,
    ``needle_start`` (offset of the needle pair `` KEY=VALUE `` in ``text``) and its ``depth``
    (``needle_start / (context_len - pair_len)``, in [0, 1])."""

    text: str
    key: str
    answer: str
    needle_start: int
    depth: float


def _filler(rng: random.Random, n: int) -> list[str]:
    """``n`` characters of the filler passage (``FILLER_WORDS`` in order, cycled) from a random word on.

    A predictable haystack, as the essays of the usual needle benchmarks are: its tokens are learnt
    early, so what is left to learn is the retrieval (random filler words would keep an irreducible
    loss on every haystack token whose noise drowns the few answer tokens' gradient)."""
    out: list[str] = []
    i = rng.randrange(len(FILLER_WORDS))
    while len(out) < n:
        out.extend(FILLER_WORDS[i % len(FILLER_WORDS)] + " ")
        i += 1
    return out[:n]


def _distinct(rng: random.Random, alphabet: str, size: int, count: int) -> list[str]:
    seen: list[str] = []
    while len(seen) < count:
        s = "".join(rng.choice(alphabet) for _ in range(size))
        if s not in seen:
            seen.append(s)
    return seen


def _spread(rng: random.Random, count: int, width: int, origin: int, size: int) -> list[int]:
    """``count`` non-overlapping offsets of ``width``-character pairs in [origin, origin + size): the free
    room (size - count * width) cut at ``count`` random points, a pair after each cut."""
    cuts = sorted(rng.randint(0, size - count * width) for _ in range(count))
    return [origin + c + i * width for i, c in enumerate(cuts)]


def _place(rng: random.Random, task: NeedleTask, needle: int) -> list[int]:
    """Start offsets of every pair, the needle's (given) first: the distractors go left or right of it in
    a random feasible split, at random non-overlapping offsets within each side."""
    p, left, right = task.pair_len, needle, task.context_len - needle - task.pair_len
    splits = [k for k in range(task.num_pairs) if k * p <= left and (task.num_pairs - 1 - k) * p <= right]
    k = rng.choice(splits)  # never empty: context_len >= min_context_len
    return [needle, *_spread(rng, k, p, 0, left), *_spread(rng, task.num_pairs - 1 - k, p, needle + p, right)]


def needle_document(task: NeedleTask, *, seed: int | str, depth: float | None = None) -> NeedleDoc:
    """The document of ``task`` for ``seed`` with the needle at ``depth`` (None: uniform; module docstring)."""
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ConfigError(f"needle depth={depth!r} must lie in [0, 1] (0 = start of the document, 1 = just "
                          "before the query), or null for a random depth per document")
    rng = random.Random(seed)
    keys = _distinct(rng, string.ascii_uppercase, task.key_len, task.num_pairs)
    values = _distinct(rng, string.digits, task.value_len, task.num_pairs)
    span = task.context_len - task.pair_len  # last start offset of a pair
    depth = rng.random() if depth is None else depth
    starts = _place(rng, task, round(depth * span))
    context = _filler(rng, task.context_len)
    for start, key, value in zip(starts, keys, values, strict=True):
        context[start : start + task.pair_len] = list(f" {key}={value} ")  # same length: written over the filler
    asked = rng.sample(range(1, task.num_pairs), task.num_queries - 1)  # distractors only: never the needle
    text = "".join(context) + "".join(f" ?{keys[i]}={values[i]}" for i in asked) + f" ?{keys[0]}=" + values[0]
    return NeedleDoc(text=text, key=keys[0], answer=values[0], needle_start=starts[0],
                     depth=starts[0] / span if span else 0.0)


def read_answer(prefix: str, value_len: int) -> str | None:
    """The answer a perfect reader gives: the value paired with the query's key in ``prefix`` (a document
    without its answer, ending in `` ?KEY=``); None when the prefix holds no such pair (an ill-posed
    document). Shows the task is well posed, and is the oracle of the tests."""
    query = _QUERY.search(prefix)
    if query is None:
        return None
    found = re.findall(rf" {query.group(1)}=(\d{{{value_len}}}) ", prefix[: query.start()])
    return found[0] if len(found) == 1 else None


def needle_row(doc: NeedleDoc, tokenizer) -> list[int]:
    """``[BOS] text [EOS]`` as token ids; the tokenizer must give one token per character (``tokenizer=char``),
    which is what makes a row ``length + 2`` tokens and the answer's positions known."""
    ids = tokenizer.encode(doc.text)
    if len(ids) != len(doc.text) or getattr(tokenizer, "unk_id", None) in ids:
        raise ConfigError(f"needle documents need one token per character; tokenizer {tokenizer.name} gives "
                          f"{len(ids)} tokens (or [UNK]) for {len(doc.text)} characters: use tokenizer=char")
    return [tokenizer.bos_id, *ids, tokenizer.eos_id]


def document_seed(seed: int, split: str, index: int) -> str:
    """The seed of document ``index`` of ``split`` (train / eval / a grid cell): disjoint streams per split."""
    return f"{seed}:{split}:{index}"


def check_answer_only_fraction(fraction: float) -> float:
    """``answer_only_fraction`` must lie in [0, 1]; returned as is."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"needle answer_only_fraction={fraction!r} must lie in [0, 1] (the share of rows whose "
                          "only masked and scored tokens are the queries' values; 0 = none)")
    return fraction


class NeedleRows(Dataset):
    """Documents ``0 .. num_docs - 1`` of one split as rows ``{"input_ids": (length + 2,) long}``, generated on
    demand (deterministic per index, so a training stream of any size costs no memory).

    ``answer_only_fraction`` > 0 adds ``prompt_mask`` (length + 2,) bool to every row: in that fraction of
    rows (drawn per index from the seed) it marks every token except the queries' values, so a loss with
    ``objective.sft=true`` masks and scores only those values given the whole clean context (a retrieval
    example per query, the conditional NELBO of LLaDA's SFT); in the other rows it is all False (ordinary
    unconditional rows: the model still learns the whole document, so it can be sampled and scored)."""

    def __init__(self, task: NeedleTask, tokenizer, *, split: str, num_docs: int, seed: int = 0,
                 depth: float | None = None, answer_only_fraction: float = 0.0) -> None:
        if num_docs < 1:
            raise ConfigError(f"needle num_docs={num_docs} must be >= 1 (documents of the {split} split)")
        check_answer_only_fraction(answer_only_fraction)
        self.task, self.tokenizer, self.split, self.num_docs = task, tokenizer, split, num_docs
        self.seed, self.depth, self.answer_only_fraction = seed, depth, answer_only_fraction
        needle_row(self.document(0), tokenizer)  # refuse a tokenizer that is not one token per character now

    def __len__(self) -> int:
        return self.num_docs

    def document(self, i: int) -> NeedleDoc:
        return needle_document(self.task, seed=document_seed(self.seed, self.split, i), depth=self.depth)

    def answer_only(self, i: int) -> bool:
        """Whether row ``i`` is an answer-only (SFT) row: a seeded draw of its own, apart from the document's."""
        seed = document_seed(self.seed, self.split, i) + ":answer_only"
        return self.answer_only_fraction > 0 and random.Random(seed).random() < self.answer_only_fraction

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = {"input_ids": torch.tensor(needle_row(self.document(i), self.tokenizer), dtype=torch.long)}
        if self.answer_only_fraction > 0:
            prompt = torch.zeros(self.task.length + ROW_SPECIALS, dtype=torch.bool)
            if self.answer_only(i):
                prompt[:] = True
                for start, stop in self.task.value_spans():
                    prompt[1 + start : 1 + stop] = False  # +1: the row's BOS
            row["prompt_mask"] = prompt
        return row
