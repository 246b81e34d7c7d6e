"""Labelled rows for classifier training and the classifier loss's random-prefix crop."""

import json

import pytest
import torch

from dlm.data.labelled import labelled_rows, load_labelled
from dlm.data.tokenizers.char import CharTokenizer
from dlm.errors import ConfigError
from dlm.objectives.classifier import NoisyClassifierLoss


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_names_and_indices_map_to_classes(tmp_path):
    src = write(tmp_path / "a.jsonl", [{"text": "hi", "label": "pos"}, {"text": "yo", "label": "neg"}])
    assert load_labelled(src, "train", classes=["neg", "pos"]) == (["hi", "yo"], [1, 0])
    src = write(tmp_path / "b.jsonl", [{"t": "hi", "y": 2}])
    assert load_labelled(src, "train", text_field="t", label_field="y", n_classes=3) == (["hi"], [2])


@pytest.mark.parametrize("rows, kwargs, match", [
    ([{"text": "a", "label": "maybe"}], {"classes": ["neg", "pos"]}, "not one of data.classes"),
    ([{"text": "a", "label": "pos"}], {}, "data.classes"),
    ([{"text": "a", "label": 3}], {"n_classes": 2}, r"outside \[0, 2\)"),
    ([{"body": "a", "label": 0}], {}, "data.text_field"),
])
def test_bad_labels_name_the_line_and_the_fix(tmp_path, rows, kwargs, match):
    src = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ConfigError, match=match) as err:
        load_labelled(src, "train", **kwargs)
    assert "bad.jsonl:1" in str(err.value)


def test_rows_are_bos_text_then_masked_padding():
    tok = CharTokenizer()
    rows = labelled_rows(["ab", "abcdefgh"], [0, 1], tokenizer=tok, length=5)
    assert rows["input_ids"].shape == (2, 5) and rows["labels"].tolist() == [0, 1]
    assert rows["input_ids"][0, :3].tolist() == [tok.bos_id, *tok.encode("ab")]
    assert rows["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert rows["input_ids"][1, 1:].tolist() == tok.encode("abcd")  # cut to length


def test_random_prefix_lengths_are_uniform_over_real_tokens():
    attention = torch.zeros(20000, 8, dtype=torch.long)
    attention[:, :5] = 1  # 5 real tokens, 3 padding
    kept = NoisyClassifierLoss.prefix_mask(attention, torch.Generator().manual_seed(0))
    lengths = kept.sum(-1)
    assert (kept[:, 5:] == 0).all() and lengths.min() == 1 and lengths.max() == 5
    freq = torch.bincount(lengths, minlength=6)[1:].float() / len(lengths)
    assert torch.allclose(freq, torch.full((5,), 0.2), atol=0.015)
    # a prefix: no kept position after a dropped one
    assert (kept[:, 1:] <= kept[:, :-1]).all()
