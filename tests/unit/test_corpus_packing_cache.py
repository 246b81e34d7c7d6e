"""Corpora, packing and the on-disk token cache: exact documents, exact rows, cache reuse."""

from __future__ import annotations

import itertools
import json
import os
import pickle
import re

import numpy as np
import pytest
import torch

from dlm.data.corpus import HF_DATASETS, corpus_key, load_documents
from dlm.data.packing import iter_wrapped_blocks, pad, wrap
from dlm.data.token_cache import META_FILE, TokenBlocks, _NpyRowWriter, build_or_load_blocks
from dlm.data.tokenizers.char import CharTokenizer
from dlm.errors import CheckpointError, ConfigError, OfflineError

# ---- corpus -----------------------------------------------------------------------------------


def test_pydoc_splits_are_deterministic_and_disjoint():
    from pydoc_data.topics import topics

    train = list(load_documents("pydoc", "train"))
    val = list(load_documents("pydoc", "validation"))
    assert len(train) + len(val) == len(topics) and len(val) == len(range(0, len(topics), 20))
    keys = sorted(topics)
    assert val == [topics[k] for k in keys[::20]] == list(load_documents("pydoc", "test"))
    assert train[0] == topics[keys[1]] and not set(train) & set(val)
    assert val[0].startswith('The "assert" statement')


def test_unknown_source_and_split_fail_eagerly():
    with pytest.raises(
        ConfigError,
        match=r"data\.source='owt' is not a known corpus; valid names: pydoc, openwebtext.*local \.txt or \.jsonl",
    ):
        load_documents("owt", "train")
    with pytest.raises(
        ConfigError, match=r"pydoc has no split 'valid'; valid splits: train, validation, test"
    ):
        load_documents("pydoc", "valid")
    with pytest.raises(ConfigError, match=r"lambada has no split 'train'; valid splits: validation, test"):
        load_documents("lambada", "train")  # before any network access


def test_txt_documents_split_on_two_empty_lines(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("first doc\nline two\n\nsame doc\n\n\nsecond doc\n\n\n\nthird\n")
    assert list(load_documents(str(path), "train")) == [
        "first doc\nline two\n\nsame doc",
        "second doc",
        "third",
    ]
    # the file is the split: any split name gives the same documents
    assert list(load_documents(str(path), "validation")) == list(load_documents(str(path), "train"))


def test_txt_documents_one_per_line_without_separators(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("alpha beta\n\n   \ngamma\n delta \n")
    assert list(load_documents(str(path), "train")) == ["alpha beta", "gamma", " delta "]


def test_jsonl_documents(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "one", "id": 1}\n\n{"text": "two"}\n')
    assert list(load_documents(str(path), "test")) == ["one", "two"]
    other = tmp_path / "other.jsonl"
    other.write_text('{"body": "x"}\n{"title": "y"}\n')
    assert list(itertools.islice(load_documents(str(other), "test", text_field="body"), 1)) == ["x"]
    with pytest.raises(
        ConfigError, match=r"other\.jsonl:2 has no string field 'body' \(fields: \['title'\]\)"
    ):
        list(load_documents(str(other), "test", text_field="body"))


def test_local_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.txt does not exist"):
        load_documents(str(tmp_path / "missing.txt"), "train")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ConfigError, match=r"has suffix '\.csv'; local files must be \.txt or \.jsonl"):
        load_documents(str(tmp_path / "data.csv"), "train")


def test_hub_corpus_offline_raises_offline_error(monkeypatch):
    import datasets

    # datasets reads HF_HUB_OFFLINE at import; set both so this never touches the network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineError) as info:
        load_documents("wikitext2", "test")
    msg = str(info.value)
    assert "'wikitext2'" in msg and "Salesforce/wikitext" in msg and "unreachable" in msg
    assert "data.source=/path/to/file.txt" in msg and "HF_HUB_OFFLINE" in msg


def test_streaming_slices_count_from_the_end():
    from types import SimpleNamespace

    from dlm.data.corpus import _SLICE, _slice_stream

    class FakeStream:
        def __init__(self, rows, n=None):
            self.rows = rows
            self.info = SimpleNamespace(splits={"train": SimpleNamespace(num_examples=n)} if n else None)

        def skip(self, k):
            return FakeStream(self.rows[k:])

        def take(self, k):
            return FakeStream(self.rows[:k])

    ds = FakeStream(list(range(10)), n=10)
    assert _slice_stream(ds, "owt", "train[:-3]", _SLICE.match("train[:-3]")).rows == list(range(7))
    assert _slice_stream(ds, "owt", "train[-3:]", _SLICE.match("train[-3:]")).rows == [7, 8, 9]
    assert _slice_stream(ds, "owt", "train[2:4]", _SLICE.match("train[2:4]")).rows == [2, 3]
    with pytest.raises(
        ConfigError, match=r"owt split 'train\[-3:\]' counts from the end.*data\.streaming=false"
    ):
        _slice_stream(FakeStream(list(range(10))), "owt", "train[-3:]", _SLICE.match("train[-3:]"))


def test_hf_dataset_table():
    assert set(HF_DATASETS) == {"openwebtext", "wikitext2", "wikitext103", "lm1b", "text8", "ptb", "lambada"}
    assert HF_DATASETS["openwebtext"].splits["validation"] == "train[-100000:]"
    assert HF_DATASETS["ptb"].text_column == "sentence"


def test_corpus_key_tracks_local_file_changes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\n")
    before = corpus_key(str(path), "train")
    path.write_text("one two\n")
    assert corpus_key(str(path), "train") != before
    assert corpus_key("pydoc", "train")["python"][0] == 3


def test_shakespeare_is_three_plays(shared_data):
    path = shared_data / "text" / "tinyshakespeare.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    docs = list(load_documents(str(path), "train"))
    assert len(docs) == 3 and docs[0].startswith("First Citizen:\nBefore we proceed any further")
    assert docs[1].startswith("SAMPSON:")


# ---- packing ----------------------------------------------------------------------------------

DOCS = [[10, 11, 12], [13, 14], [15, 16, 17, 18], [19]]


def test_wrap_mdlm_rows():
    # stream with EOS=2: 10 11 12 2 13 14 2 15 16 17 18 2 19 2 -> pieces of 6 - 2 = 4, remainder [19 2] dropped
    rows = wrap(DOCS, 6, bos_id=1, eos_id=2)
    np.testing.assert_array_equal(rows, [[1, 10, 11, 12, 2, 2], [1, 13, 14, 2, 15, 2], [1, 16, 17, 18, 2, 2]])
    assert rows.dtype == np.int64


def test_wrap_without_bos_is_plain_chunks():
    np.testing.assert_array_equal(
        wrap(DOCS, 5, bos_id=None, eos_id=2), [[10, 11, 12, 2, 13], [14, 2, 15, 16, 17]]
    )
    np.testing.assert_array_equal(
        wrap(DOCS, 4, bos_id=None, eos_id=None), [[10, 11, 12, 13], [14, 15, 16, 17]]
    )
    # BOS but no EOS: [BOS] + piece of seq_len - 1
    np.testing.assert_array_equal(
        wrap(DOCS, 4, bos_id=1, eos_id=None), [[1, 10, 11, 12], [1, 13, 14, 15], [1, 16, 17, 18]]
    )


def test_wrap_edge_cases():
    assert wrap([[1, 2]], 8, bos_id=0, eos_id=9).shape == (0, 8)
    with pytest.raises(ConfigError, match=r"data\.seq_len=2 leaves no room"):
        wrap(DOCS, 2, bos_id=1, eos_id=2)


def test_iter_wrapped_blocks_is_lazy():
    def docs():
        yield [10, 11, 12]
        yield [13, 14, 15]
        raise AssertionError("consumed more documents than the first row needs")

    first = next(iter_wrapped_blocks(docs(), 5, bos_id=1, eos_id=2))
    np.testing.assert_array_equal(first, [1, 10, 11, 12, 2])


def test_pad_rows_and_masks():
    ids, mask = pad([[10, 11], [12, 13, 14, 15, 16, 17], []], 6, bos_id=1, eos_id=2, pad_id=0)
    np.testing.assert_array_equal(ids, [[1, 10, 11, 2, 0, 0], [1, 12, 13, 14, 15, 2], [1, 2, 0, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    with pytest.raises(ConfigError, match="needs a tokenizer with a pad token"):
        pad([[1]], 4, bos_id=1, eos_id=2, pad_id=None)


# ---- token cache ------------------------------------------------------------------------------

TEXTS = ["hello world", "the cat sat on the mat", "abc", "diffusion language models"]


class OneShot:
    """A documents_fn that may be called once; a second call means the cache was not reused."""

    def __init__(self, texts):
        self.texts, self.calls = texts, 0

    def __call__(self):
        self.calls += 1
        if self.calls > 1:
            raise AssertionError("documents_fn called again: the cache was not reused")
        return iter(self.texts)


def _build(tmp_path, fn, **kw):
    args = dict(tokenizer=CharTokenizer(), seq_len=8, mode="wrap", cache_dir=tmp_path, key_parts={"corpus": "toy"},
                show_progress=False)  # fmt: skip
    return build_or_load_blocks(documents_fn=fn, **{**args, **kw})


def test_cache_rows_equal_wrap_and_are_reused(tmp_path):
    tok = CharTokenizer()
    fn = OneShot(TEXTS)
    blocks = _build(tmp_path, fn)
    expected = wrap([tok.encode(t) for t in TEXTS], 8, bos_id=tok.bos_id, eos_id=tok.eos_id)
    # 61 characters + 4 EOS = 65 tokens -> 10 pieces of 8 - 2
    assert len(blocks) == len(expected) == 10 and blocks.seq_len == 8 and blocks.num_tokens == 80
    np.testing.assert_array_equal(blocks.ids, expected)
    item = blocks[1]
    assert item["input_ids"].dtype == torch.long and item["input_ids"].tolist() == expected[1].tolist()
    assert "attention_mask" not in item  # wrap rows are all real tokens
    assert tok.decode(blocks[0]["input_ids"]) == "hello "

    (key,) = os.listdir(tmp_path)  # no temp dir left behind
    assert sorted(os.listdir(tmp_path / key)) == ["ids.u16.npy", META_FILE]
    meta = json.loads((tmp_path / key / META_FILE).read_text())
    assert (
        meta["key_parts"] == {"corpus": "toy"}
        and meta["num_blocks"] == 10
        and meta["tokenizer"] == "char-ascii"
    )

    again = _build(tmp_path, fn)  # fn raises if called
    assert fn.calls == 1 and again.directory == blocks.directory
    np.testing.assert_array_equal(again.ids, expected)


def test_cache_key_changes_with_settings(tmp_path):
    a = _build(tmp_path, lambda: iter(TEXTS))
    b = _build(tmp_path, lambda: iter(TEXTS), seq_len=6)
    c = _build(tmp_path, lambda: iter(TEXTS), key_parts={"corpus": "other"})
    d = _build(tmp_path, lambda: iter(TEXTS), mode="pack")
    e = _build(tmp_path, lambda: iter(TEXTS), detokenizer=str.upper)
    assert len({x.directory for x in (a, b, c, d, e)}) == 5
    assert CharTokenizer().decode(e[0]["input_ids"]) == "HELLO "
    tok = CharTokenizer()
    np.testing.assert_array_equal(
        d.ids, wrap([tok.encode(t) for t in TEXTS], 8, bos_id=None, eos_id=tok.eos_id)
    )


def test_cache_pad_mode(tmp_path):
    tok = CharTokenizer()
    blocks = _build(tmp_path, lambda: iter(["ab", "abcdefghij"]), mode="pad")
    assert len(blocks) == 2 and blocks.num_tokens == 4 + 8
    assert blocks[0]["input_ids"].tolist() == [1, *tok.encode("ab"), 2, 0, 0, 0, 0]
    assert blocks[0]["attention_mask"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert blocks[1]["input_ids"].tolist() == [1, *tok.encode("abcdef"), 2]
    (key,) = os.listdir(tmp_path)
    assert sorted(os.listdir(tmp_path / key)) == ["attention_mask.npy", "ids.u16.npy", META_FILE]


def test_cache_pad_mode_needs_a_pad_token_before_reading(tmp_path):
    tok = CharTokenizer()
    tok.pad_id = None
    with pytest.raises(ConfigError, match="data.mode=pad needs a pad token"):
        _build(tmp_path, _never, mode="pad", tokenizer=tok)
    with pytest.raises(ConfigError, match=r"data\.mode='stack' is unknown; valid: wrap, pack, pad"):
        _build(tmp_path, _never, mode="stack")


def _never():
    raise AssertionError("documents_fn called although the settings are invalid")


def test_cache_max_tokens_stops_early(tmp_path):
    def endless():
        yield from itertools.repeat("some words here")

    blocks = _build(tmp_path, endless, max_tokens=20)
    assert len(blocks) == 3 and blocks.num_tokens == 24  # ceil(20 / 8) rows


def test_cache_failure_leaves_nothing(tmp_path):
    def broken():
        yield from TEXTS * 1000
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        _build(tmp_path, broken)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ConfigError, match=r"no row of data\.seq_len=8 tokens \(2 tokens read\)"):
        _build(tmp_path, lambda: iter(["ab"]))
    assert os.listdir(tmp_path) == []
    assert len(_build(tmp_path, lambda: iter(TEXTS))) == 10


def test_cache_uses_uint32_for_large_vocabularies(tmp_path):
    class BigVocab(CharTokenizer):
        def __init__(self):
            super().__init__()
            self.vocab_size, self.mask_id = 70_000, 69_999

        def encode_batch(self, texts):
            return [[69_998] + self.encode(t) for t in texts]

    blocks = _build(tmp_path, lambda: iter(TEXTS), tokenizer=BigVocab())
    assert blocks.ids.dtype == np.uint32 and blocks.meta["ids_file"] == "ids.u32.npy"
    assert blocks[0]["input_ids"][1].item() == 69_998


def test_token_blocks_pickle_without_data_and_batch(tmp_path):
    blocks = _build(tmp_path, lambda: iter(TEXTS * 50))
    _ = blocks[0]  # opens the memory maps
    clone = pickle.loads(pickle.dumps(blocks))
    assert len(pickle.dumps(blocks)) < 2000  # the arrays are not pickled
    assert torch.equal(clone[3]["input_ids"], blocks[3]["input_ids"])
    batch = next(iter(torch.utils.data.DataLoader(blocks, batch_size=4)))
    assert batch["input_ids"].shape == (4, 8) and set(batch) == {"input_ids"}


def test_corrupt_cache_names_the_path(tmp_path):
    blocks = _build(tmp_path, lambda: iter(TEXTS))
    (blocks.directory / META_FILE).write_text("{")
    with pytest.raises(CheckpointError, match=re.escape(str(blocks.directory))):
        TokenBlocks(blocks.directory)
    (blocks.directory / META_FILE).unlink()
    with pytest.raises(CheckpointError, match="has no meta.json; delete that directory"):
        _build(tmp_path, lambda: iter(TEXTS))


def test_npy_writer_pads_a_shorter_header(tmp_path):
    class WideWriter(_NpyRowWriter):
        _PLACEHOLDER_ROWS = 10**80  # forces a 192-byte placeholder; the final header (128 bytes) is padded

    w = WideWriter(tmp_path / "x.npy", np.dtype(np.uint16), 3)
    w.append(np.arange(6).reshape(2, 3))
    w.append(np.arange(6, 9).reshape(1, 3))
    w.close()
    arr = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert arr.dtype == np.uint16 and arr.offset == 192
    np.testing.assert_array_equal(arr, np.arange(9).reshape(3, 3))


def test_end_to_end_shakespeare_char(shared_data, tmp_path):
    path = shared_data / "text" / "tinyshakespeare.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    blocks = build_or_load_blocks(
        documents_fn=lambda: load_documents(str(path), "train"), tokenizer=CharTokenizer(), seq_len=64,
        mode="wrap", cache_dir=tmp_path, key_parts=corpus_key(str(path), "train"), max_tokens=6400,
        show_progress=False,
    )  # fmt: skip
    assert len(blocks) == 100
    tok = CharTokenizer()
    assert blocks[0]["input_ids"][0].item() == tok.bos_id and blocks[0]["input_ids"][-1].item() == tok.eos_id
    assert (
        tok.decode(blocks[0]["input_ids"])
        == "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    )
    assert tok.decode(blocks[1]["input_ids"]).startswith("All:\nSpeak, speak.")


def test_caches_written_before_the_seq_len_rename_still_load_under_the_same_key(tmp_path):
    """The row length is hashed under its former name and an old meta.json ("block_size") still reads."""
    from dlm.data.token_cache import cache_key
    from dlm.data.tokenizer import fingerprint_of

    blocks = _build(tmp_path, lambda: iter(TEXTS))
    tok = CharTokenizer()
    key = cache_key(key_parts={"corpus": "toy"}, tokenizer=tok, seq_len=8, mode="wrap")
    assert key == fingerprint_of({"key_parts": {"corpus": "toy"}, "tokenizer": tok.fingerprint(), "block_size": 8,
                                  "mode": "wrap", "detokenizer": None, "max_tokens": None, "format": 1})
    assert blocks.directory.name == key
    meta_path = blocks.directory / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["block_size"] = meta.pop("seq_len")
    meta_path.write_text(json.dumps(meta))
    old = TokenBlocks(blocks.directory)
    assert old.seq_len == 8 and len(old) == len(blocks)
    np.testing.assert_array_equal(old.ids, blocks.ids)
