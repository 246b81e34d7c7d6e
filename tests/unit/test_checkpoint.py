"""Model directories (dlm.io): round trip, migration of the old layout on read, load overrides, the typed
record, the atomic writer."""

import json

import pytest
import torch

import dlm
from dlm.data.tokenizers.char import CharTokenizer
from dlm.errors import CheckpointError, ConfigError
from dlm.io.atomic import atomic_dir, atomic_file, write_json_atomic
from dlm.io.migrate import FORMAT
from dlm.io.model_dir import read_record, save_model_dir
from dlm.io.record import Family
from dlm.io.spec import build
from dlm.nn.rope import NTK, NTKAuto

SPEC = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
        "max_seq_len": 16}


def export(tmp_path, **spec_kw):
    tok = CharTokenizer()
    spec = {**SPEC, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id, **spec_kw}
    torch.manual_seed(0)
    model = build(spec)
    path = save_model_dir(tmp_path / "m", model=model, model_spec=spec, tokenizer=tok, family=Family.MASKED,
                          schedule_spec={"_target_": "dlm.diffusion.schedule.CosineSchedule"},
                          keep_first_token=True, seq_len=16)
    return model, tok, path


def test_round_trip_gives_identical_logits(tmp_path):
    model, tok, path = export(tmp_path)
    loaded = dlm.load(path)
    ids = torch.tensor([tok.encode("hello world")])
    torch.testing.assert_close(loaded.model(ids), model(ids), rtol=0, atol=0)
    assert type(loaded.schedule).__name__ == "CosineSchedule" and loaded.meta["keep_first_token"] is True
    assert loaded.tokenizer.encode("abc") == tok.encode("abc")
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())  # no temp dir left behind


def test_model_json_uses_seq_len_and_the_record_is_typed(tmp_path):
    _, _, path = export(tmp_path)
    meta = json.loads((path / "model.json").read_text())
    assert meta["format"] == FORMAT and meta["kind"] == "diffusion" and meta["seq_len"] == 16
    assert "block_size" not in meta and "shift_logits" not in meta
    record = dlm.load(path).record
    assert record.family is Family.MASKED and record.seq_len == 16 and record.keep_first_token
    assert record.overrides == {} and record.migrations == ()
    assert Family.from_kind("ar") is Family.AR and Family.of_attention("block_causal") is Family.BLOCK
    assert Family.AR.needs_prompt and not Family.MASKED.needs_prompt and not Family.CLASSIFIER.is_denoiser


def old_layout(tmp_path, *, shift_logits: bool, kind: str = "block"):
    """A model directory as dlm wrote it before format 2: top-level block_size = the data row length,
    top-level shift_logits set on the module after loading, no "format"."""
    model, tok, path = export(tmp_path, attention="block_causal", block_size=4)
    meta = json.loads((path / "model.json").read_text())
    for key in ("format", "seq_len", "step"):
        meta.pop(key)
    meta.update(kind=kind, block_size=12, shift_logits=shift_logits, data={"source": "pydoc", "block_size": 12})
    (path / "model.json").write_text(json.dumps(meta))
    return model, tok, path


def test_old_layout_is_migrated_on_read(tmp_path):
    model, tok, path = old_layout(tmp_path, shift_logits=True)
    loaded = dlm.load(path)
    assert loaded.record.family is Family.BLOCK and loaded.record.seq_len == 12
    assert loaded.model.block_size == 4 and loaded.model.shift_logits is True  # a constructor argument now
    assert loaded.record.model_spec["shift_logits"] is True and loaded.meta["data"]["seq_len"] == 12
    assert "block_size" not in loaded.meta and "shift_logits" not in loaded.meta
    assert any("block_size -> seq_len" in n for n in loaded.record.migrations)
    ids = torch.tensor([tok.encode("hello world!")])
    torch.testing.assert_close(loaded.model(ids), model(ids), rtol=0, atol=0)
    assert "format" not in json.loads((path / "model.json").read_text())  # read, never rewritten

    _, _, plain = old_layout(tmp_path / "b", shift_logits=False)
    loaded = dlm.load(plain)
    assert loaded.model.shift_logits is False and "shift_logits" not in loaded.record.model_spec


def test_old_layout_scores_with_its_row_length(tmp_path):
    """eval_ppl's default row length comes from the migrated seq_len (12 here, a multiple of block 4)."""
    from dlm.eval.model_dir import eval_ppl_model_dir

    _, _, path = old_layout(tmp_path, shift_logits=False)
    res = eval_ppl_model_dir(path, dataset="pydoc", source="pydoc", split="validation", num_samples=1,
                             max_tokens=200, device="cpu", cache_dir=tmp_path / "cache", out=tmp_path / "e.json")
    assert res["seq_len"] == 12 and res["diffusion_block_size"] == 4 and res["method"] == "nelbo_bound"


def test_missing_and_corrupt_files_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        dlm.load(tmp_path / "nothing")
    _, _, path = export(tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        dlm.load(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        dlm.load(path)


def test_unknown_kind_and_future_format_are_refused(tmp_path):
    _, _, path = export(tmp_path)
    meta = json.loads((path / "model.json").read_text())
    (path / "model.json").write_text(json.dumps({**meta, "kind": "gan"}))
    with pytest.raises(CheckpointError, match="kind='gan'; valid kinds: ar, diffusion, block"):
        dlm.load(path)
    (path / "model.json").write_text(json.dumps({**meta, "format": FORMAT + 1}))
    with pytest.raises(CheckpointError, match="upgrade dlm"):
        dlm.load(path)


def test_only_dlm_targets_are_built():
    with pytest.raises(CheckpointError, match="dlm"):
        build({"_target_": "os.system", "command": "echo pwned"})


def test_max_seq_len_override_lets_a_longer_input_through_and_is_recorded(tmp_path):
    model, tok, path = export(tmp_path)
    ids = torch.randint(0, tok.vocab_size - 1, (1, 24), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="max_seq_len=16"):
        dlm.load(path).model(ids)
    longer = dlm.load(path, max_seq_len=32)
    assert longer.model.max_seq_len == 32 and longer.record.overrides == {"max_seq_len": 32}
    assert longer.meta["overrides"] == {"max_seq_len": 32} and longer.record.model_spec["max_seq_len"] == 32
    torch.testing.assert_close(longer.model(ids[:, :16]), model(ids[:, :16]), rtol=0, atol=0)  # same weights
    assert longer.model(ids).shape == (1, 24, tok.vocab_size)


def test_rope_scaling_overrides_from_strings_and_values(tmp_path):
    _, tok, path = export(tmp_path)
    ntk = dlm.load(path, rope_scaling="ntk:4", max_seq_len=64)
    assert ntk.model.rope_scaling == NTK(factor=4.0)
    assert ntk.record.overrides == {"rope_scaling": {"_target_": "dlm.nn.rope.NTK", "factor": 4.0}, "max_seq_len": 64}
    auto = dlm.load(path, rope_scaling="ntk_auto:64")  # the context follows the target length
    assert auto.model.rope_scaling == NTKAuto(train_len=16, target_len=64) and auto.model.max_seq_len == 64
    assert auto.record.overrides["max_seq_len"] == 64
    same = dlm.load(path, rope_scaling=NTK(factor=4.0), max_seq_len=64)
    ids = torch.randint(0, tok.vocab_size - 1, (1, 40), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(same.model(ids), ntk.model(ids), rtol=0, atol=0)
    assert not torch.allclose(ntk.model(ids[:, :16]), dlm.load(path).model(ids[:, :16]))  # the base changed
    assert dlm.load(path, rope_scaling="none").model.rope_scaling is None
    with pytest.raises(ConfigError, match="ntk_auto:<target_len>"):
        dlm.load(path, rope_scaling="yarn:4")


def test_dtype_device_backend_overrides_and_unknown_names(tmp_path):
    _, _, path = export(tmp_path)
    half = dlm.load(path, dtype="bfloat16", device="cpu", attn_backend="dense")
    assert half.model.embed_tokens.weight.dtype == torch.bfloat16
    assert half.model.inv_freq.dtype == torch.float32  # RoPE tables stay float32
    assert half.record.overrides == {"dtype": "bfloat16", "device": "cpu", "attn_backend": "dense"}
    with pytest.raises(ConfigError, match="unknown load override.*'dim'.*rope_scaling, max_seq_len, attn_backend"):
        dlm.load(path, dim=64)
    with pytest.raises(ConfigError, match="dtype='int8'"):
        dlm.load(path, dtype="int8")
    record, _ = read_record(path, max_seq_len=20)
    assert record.model_spec["max_seq_len"] == 20  # nothing built


def test_override_the_model_does_not_take_is_refused(tmp_path):
    from dlm.io.classifier_dir import save_classifier

    tok = CharTokenizer()
    spec = {"_target_": "dlm.models.classifier.SequenceClassifier", "vocab_size": tok.vocab_size,
            "mask_id": tok.mask_id, "n_classes": 2, "dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16}
    path = save_classifier(tmp_path / "clf", classifier=build(spec), model_spec=spec, tokenizer=tok)
    assert dlm.load(path, max_seq_len=32).model.max_seq_len == 32
    with pytest.raises(ConfigError, match="takes no rope_scaling"):
        dlm.load(path, rope_scaling="ntk:2")


def test_atomic_writers_leave_nothing_half_written(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"b": 1, "a": 2})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}'
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "a.json") as f:
        f.write("half")
        raise RuntimeError
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": 2, "b": 1}  # the old file survives
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old").write_text("x")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "new").write_text("y")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["new"]
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "partial").write_text("z")
        raise RuntimeError
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "d"]  # no temporaries left
    with pytest.raises(IsADirectoryError), atomic_file(tmp_path / "d") as f:  # a file never replaces a dir
        f.write("x")
    assert (tmp_path / "d" / "new").is_file()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename_aside"])
def test_a_directory_replaces_an_existing_one_whole(tmp_path, monkeypatch, exchange):
    """Both ways of swapping a directory in (one exchange call; the fallback that renames the old one
    aside first) leave the new directory complete and no temporary or old copy behind."""
    import dlm.io.atomic as atomic

    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    elif atomic._renameat2() is None:
        pytest.skip("this C library has no renameat2")
    for version in ("old", "new"):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "weights").write_text(version)
            (tmp / version).write_text("")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["new", "weights"]
    assert (tmp_path / "d" / "weights").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_extra_may_not_shadow_typed_fields(tmp_path):
    tok = CharTokenizer()
    spec = {**SPEC, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id}
    with pytest.raises(ValueError, match="seq_len="):
        save_model_dir(tmp_path / "x", model=build(spec), model_spec=spec, tokenizer=tok, family=Family.MASKED,
                       extra={"block_size": 16})
    assert not (tmp_path / "x").exists()
