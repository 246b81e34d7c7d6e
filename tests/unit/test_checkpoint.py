import pytest
import torch

import dlm
from dlm.checkpoint import build, save_model_dir
from dlm.data.tokenizers.char import CharTokenizer
from dlm.errors import CheckpointError

SPEC = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
        "max_seq_len": 16}


def export(tmp_path):
    tok = CharTokenizer()
    spec = {**SPEC, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id}
    model = build(spec)
    path = save_model_dir(tmp_path / "m", model=model, model_spec=spec, tokenizer=tok, kind="diffusion",
                          schedule_spec={"_target_": "dlm.diffusion.schedule.CosineSchedule"},
                          extra={"keep_first_token": True, "block_size": 16})
    return model, tok, path


def test_round_trip_gives_identical_logits(tmp_path):
    model, tok, path = export(tmp_path)
    loaded = dlm.load(path)
    ids = torch.tensor([tok.encode("hello world")])
    torch.testing.assert_close(loaded.model(ids), model(ids), rtol=0, atol=0)
    assert type(loaded.schedule).__name__ == "CosineSchedule" and loaded.meta["keep_first_token"] is True
    assert loaded.tokenizer.encode("abc") == tok.encode("abc")
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())  # no temp dir left behind


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


def test_only_dlm_targets_are_built():
    with pytest.raises(CheckpointError, match="dlm"):
        build({"_target_": "os.system", "command": "echo pwned"})
