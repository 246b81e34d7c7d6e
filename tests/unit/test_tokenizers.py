"""Tokenizers: exact ids, round trips, save/load, error messages; no network anywhere."""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import SHARED_DATA

from dlm.data.tokenizer import SPEC_FILE, Tokenizer, load_tokenizer
from dlm.data.tokenizers.bio import DNATokenizer, ProteinTokenizer
from dlm.data.tokenizers.bpe import load_or_train_bpe, train_bpe
from dlm.data.tokenizers.char import CharTokenizer
from dlm.data.tokenizers.hf import HFTokenizer
from dlm.errors import CheckpointError, ConfigError, OfflineError

ASCII_TEXT = 'Hello, world!\n\tdef f(x):  return {"k": x**2}  # 100% ~`|\\ <ok>\n\nEnd.'


# ---- char -------------------------------------------------------------------------------------


def test_char_ids_layout():
    tok = CharTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 102 and tok.mask_id == 101
    assert tok.name == "char-ascii"
    # alphabet = "\n", "\t", then chr(32..126): "\n" -> 4, "\t" -> 5, " " -> 6, chr(c) -> c - 26
    assert tok.encode("Hi\n\t ~") == [72 - 26, 105 - 26, 4, 5, 6, 126 - 26]
    assert tok.encode("") == []
    assert isinstance(tok, Tokenizer)


def test_char_unknown_characters_are_unk_not_errors():
    tok = CharTokenizer()
    assert tok.encode("é€a") == [3, 3, ord("a") - 26]
    assert tok.decode(tok.encode("aéb")) == "a\ufffdb"
    assert tok.decode(tok.encode("aéb"), skip_special=False) == "a[UNK]b"


def test_char_round_trip_and_specials():
    tok = CharTokenizer()
    assert tok.decode(tok.encode(ASCII_TEXT)) == ASCII_TEXT
    ids = [tok.bos_id, *tok.encode("ab"), tok.mask_id, tok.eos_id, tok.pad_id]
    assert tok.decode(ids) == "ab"
    assert tok.decode(ids, skip_special=False) == "[BOS]ab[MASK][EOS][PAD]"
    assert tok.encode_batch(["ab", "", "c"]) == [tok.encode("ab"), [], tok.encode("c")]
    with pytest.raises(ValueError, match="id 102 is outside"):
        tok.decode([102])


def test_char_custom_alphabet():
    tok = CharTokenizer("ab")
    assert tok.vocab_size == 7 and tok.mask_id == 6
    assert tok.encode("abc") == [4, 5, 3]
    assert tok.name.startswith("char-2-") and tok.fingerprint() != CharTokenizer().fingerprint()
    with pytest.raises(ConfigError, match=r"repeats 'a' \(second time at position 2\)"):
        CharTokenizer("aba")


# ---- DNA / protein ----------------------------------------------------------------------------


def test_dna_ids_and_case():
    tok = DNATokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.vocab_size) == (4, 5, 6, 7, 8)
    assert tok.encode("ACGTacgt") == [0, 1, 2, 3, 0, 1, 2, 3]
    assert tok.decode(tok.encode("gattaca")) == "GATTACA"
    assert tok.decode([5, 0, 7, 3, 6, 4]) == "AT"
    assert tok.decode([5, 0, 7, 3, 6, 4], skip_special=False) == "[BOS]A[MASK]T[EOS][PAD]"


def test_dna_error_names_character_and_position():
    seq = "ACGTACGTACGTACGTA" + "N" + "ACGT"  # 'N' at 0-based position 17
    with pytest.raises(ConfigError, match=re.escape("DNA sequence has 'N' at position 17; allowed: A C G T")):
        DNATokenizer().encode(seq)
    with pytest.raises(ConfigError, match=re.escape("DNA sequence has ' ' at position 2")):
        DNATokenizer().encode("AC GT")


def test_protein_ids_and_errors():
    tok = ProteinTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.vocab_size) == (20, 21, 22, 23, 24)
    assert tok.encode("ACDEFGHIKLMNPQRSTVWY") == list(range(20))
    assert tok.encode("mkv") == [10, 8, 17]
    gb1 = "MQYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE"
    assert tok.decode(tok.encode(gb1)) == gb1
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "protein sequence has 'X' at position 3; allowed: A C D E F G H I K L M N P Q R S T V W Y"
        ),
    ):
        tok.encode("MKVXA")


# ---- save / load ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [CharTokenizer, lambda: CharTokenizer("xyz\n"), DNATokenizer, ProteinTokenizer]
)
def test_save_load_round_trip(tmp_path, make):
    tok = make()
    tok.save(tmp_path / "tok")
    back = load_tokenizer(tmp_path / "tok")
    assert type(back) is type(tok)
    assert back.fingerprint() == tok.fingerprint() and back.name == tok.name
    assert (back.vocab_size, back.mask_id, back.bos_id, back.eos_id, back.pad_id) == (
        tok.vocab_size, tok.mask_id, tok.bos_id, tok.eos_id, tok.pad_id,
    )  # fmt: skip
    text = "ACGT" if isinstance(tok, DNATokenizer | ProteinTokenizer) else "xyz\nxy"
    assert back.encode(text) == tok.encode(text)


def test_load_tokenizer_errors_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "nope" / SPEC_FILE))):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / SPEC_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(tmp_path / SPEC_FILE))} is corrupt"):
        load_tokenizer(tmp_path)
    (tmp_path / SPEC_FILE).write_text(json.dumps({"target": "os:system", "kwargs": {"command": "true"}}))
    with pytest.raises(CheckpointError, match=r"'os:system'; only 'dlm\.<module>:<Class>'"):
        load_tokenizer(tmp_path)
    (tmp_path / SPEC_FILE).write_text(json.dumps({"target": "dlm.data.tokenizers.char:Nope", "kwargs": {}}))
    with pytest.raises(CheckpointError, match="does not exist in this dlm version"):
        load_tokenizer(tmp_path)


# ---- HF: GPT-2 from local files ---------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2() -> HFTokenizer:
    d = SHARED_DATA / "tokenizers" / "gpt2"
    if not (d / "vocab.json").is_file():
        pytest.skip(f"GPT-2 tokenizer files not found at {d} (set DLM_SHARED_DATA)")
    return HFTokenizer(vocab_file=str(d / "vocab.json"), merges_file=str(d / "merges.txt"))


def test_gpt2_local_files_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" Hello world") == [18435, 995]
    assert gpt2.mask_id == 50257 and gpt2.vocab_size == 50258
    assert gpt2.bos_id == gpt2.eos_id == 50256 and gpt2.pad_id is None
    assert gpt2.name == "gpt2"
    assert gpt2.encode_batch(["Hello world", ""]) == [[15496, 995], []]


def test_gpt2_decode_round_trip_and_mask(gpt2):
    assert gpt2.decode(gpt2.encode(ASCII_TEXT)) == ASCII_TEXT
    assert gpt2.decode(gpt2.encode("naïve café — ok")) == "naïve café — ok"
    ids = [15496, 50257, 995, 50256]
    assert gpt2.decode(ids) == "Hello world"
    assert gpt2.decode(ids, skip_special=False) == "Hello[MASK] world<|endoftext|>"


def test_gpt2_save_load_offline(gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gpt2.save(tmp_path / "tok")
    spec = json.loads((tmp_path / "tok" / SPEC_FILE).read_text())
    assert spec["target"] == "dlm.data.tokenizers.hf:HFTokenizer" and spec["kwargs"]["name_or_path"] == "."
    moved = tmp_path / "moved"
    (tmp_path / "tok").rename(moved)  # the spec is relative: a moved directory still loads
    back = load_tokenizer(moved)
    assert isinstance(back, HFTokenizer) and back.name == "gpt2"
    assert back.encode("Hello world") == [15496, 995]
    assert (back.mask_id, back.vocab_size, back.bos_id, back.eos_id) == (50257, 50258, 50256, 50256)
    assert back.fingerprint() == gpt2.fingerprint()


def test_hf_offline_hub_name_raises_offline_error_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OfflineError) as info:
        HFTokenizer("dlm-test/does-not-exist")
    assert time.perf_counter() - start < 30  # no network retries
    msg = str(info.value)
    assert "'dlm-test/does-not-exist'" in msg and "unreachable" in msg
    assert "tokenizer=gpt2_local tokenizer.vocab_file=" in msg and "tokenizer.merges_file=" in msg
    assert "HF_HUB_OFFLINE" in msg


def test_hf_argument_errors(tmp_path):
    with pytest.raises(ConfigError, match="not neither"):
        HFTokenizer()
    with pytest.raises(ConfigError, match="not both"):
        HFTokenizer("gpt2", vocab_file="v.json", merges_file="m.txt")
    with pytest.raises(ConfigError, match=r"tokenizer\.merges_file is missing"):
        HFTokenizer(vocab_file="v.json")
    with pytest.raises(
        ConfigError, match=re.escape(f"tokenizer.vocab_file={tmp_path / 'vocab.json'} does not exist")
    ):
        HFTokenizer(vocab_file=str(tmp_path / "vocab.json"), merges_file=str(tmp_path / "merges.txt"))
    with pytest.raises(ConfigError, match="looks like a local path but does not exist"):
        HFTokenizer(str(tmp_path / "missing_dir"))


# ---- BPE trained locally ----------------------------------------------------------------------

CORPUS = [
    "the quick brown fox jumps over the lazy dog. " * 20,
    "def add(a, b):\n    return a + b\n\n" * 20,
    "To be, or not to be, that is the question:\n" * 20,
]


@pytest.fixture(scope="module")
def bpe() -> HFTokenizer:
    return train_bpe(CORPUS, 300)


def test_bpe_specials_come_from_the_vocabulary(bpe):
    assert bpe.bos_id == bpe.eos_id == 0  # <|endoftext|>
    assert bpe.mask_id == 1 and bpe.decode([1], skip_special=False) == "[MASK]"
    assert 259 <= bpe.vocab_size <= 300 and bpe.mask_id < bpe.vocab_size
    assert bpe.name == "bpe-300"
    assert len(bpe.encode("the quick brown fox")) < len("the quick brown fox")  # merges were learned


def test_bpe_round_trip_and_save_load(bpe, tmp_path):
    for text in [ASCII_TEXT, "unseen words: zyzzyva, qwerty!", "  leading and trailing  ", "\n\n"]:
        assert bpe.decode(bpe.encode(text)) == text
    bpe.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert back.fingerprint() == bpe.fingerprint()
    assert (back.mask_id, back.bos_id, back.vocab_size) == (bpe.mask_id, bpe.bos_id, bpe.vocab_size)
    assert back.encode(ASCII_TEXT) == bpe.encode(ASCII_TEXT)


def test_bpe_vocab_size_too_small():
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_size=100 is too small.*use >= 259"):
        train_bpe(CORPUS, 100)


def test_load_or_train_bpe_trains_once(tmp_path, monkeypatch):
    first = load_or_train_bpe(source="pydoc", vocab_size=400, cache_dir=tmp_path, max_documents=20)
    assert first.vocab_size == 400 and first.name == "bpe-400-pydoc"
    (cached,) = (tmp_path / "tokenizers").iterdir()
    assert cached.name.startswith("bpe-400-") and (cached / SPEC_FILE).is_file()

    def boom(*args, **kwargs):
        raise AssertionError("retrained although the tokenizer is cached")

    monkeypatch.setattr("dlm.data.tokenizers.bpe.train_bpe", boom)
    again = load_or_train_bpe(source="pydoc", vocab_size=400, cache_dir=tmp_path, max_documents=20)
    assert again.fingerprint() == first.fingerprint()
    assert again.decode(again.encode(ASCII_TEXT)) == ASCII_TEXT
