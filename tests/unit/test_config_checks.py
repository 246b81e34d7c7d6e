"""Cross-key checks of the train config (dlm.train.config_checks), refused by run(cfg) before any compute."""

from pathlib import Path

import pytest
from hydra_helpers import compose_config

from dlm.cli import CONF_DIR
from dlm.errors import ConfigError
from dlm.train.config_checks import TRAIN_KEYS, check_train_config
from dlm.train.run import run

BLOCK = ["debug=tiny", "objective=block", "model.attention=block_causal"]


def test_train_keys_are_the_top_level_of_every_composed_train_config():
    assert set(compose_config("train", []).keys()) == TRAIN_KEYS
    for group in ("experiment", "debug"):
        for f in sorted((Path(CONF_DIR) / group).glob("*.yaml")):
            assert set(compose_config("train", [f"{group}={f.stem}"]).keys()) <= TRAIN_KEYS, f


def test_a_key_added_with_plus_is_refused_naming_close_valid_keys(tmp_path):
    cfg = compose_config("train", ["debug=tiny", f"run_dir={tmp_path}/r", "+batchsize=8"])
    with pytest.raises(ConfigError, match=r"unknown top-level key 'batchsize'.*did you mean batch_size"):
        run(cfg)
    assert not (tmp_path / "r").exists()
    cfg = compose_config("train", ["+sampler=ancestral"])  # a group the train config does not read
    with pytest.raises(ConfigError, match="'sampler'"):
        check_train_config(cfg)


@pytest.mark.parametrize(("override", "key"), [("batch_size=0", "batch_size=0"), ("batch_size=-2", "batch_size=-2"),
                                               ("data.seq_len=0", "data.seq_len=0"),
                                               ("eval_batch_size=0", "eval_batch_size=0"),
                                               ("global_batch_size=-8", "global_batch_size=-8")])
def test_non_positive_counts_are_refused(override, key):
    with pytest.raises(ConfigError, match=f"{key} must be a positive integer"):
        check_train_config(compose_config("train", ["debug=tiny", override]))


def test_inconsistent_block_sizes_are_refused_naming_both_keys(tmp_path):
    cfg = compose_config("train", [*BLOCK, "objective.block_size=8", "+model.block_size=4", f"run_dir={tmp_path}/r"])
    with pytest.raises(ConfigError, match=r"objective.block_size=8 but model.block_size=4"):
        run(cfg)
    assert not (tmp_path / "r").exists()
    cfg = compose_config("train", [*BLOCK, "objective.block_sizes=[2,8]", "+model.block_size=4", f"run_dir={tmp_path}/r"])
    with pytest.raises(ConfigError, match=r"model.block_size=4 is not one of objective.block_sizes=\[2, 8\]"):
        run(cfg)


def test_answer_only_rows_without_an_sft_objective_are_refused():
    """data.answer_only_fraction > 0 with objective.sft=false would train those rows like any other: refused."""
    base = ["experiment=needle_demo", "objective=block", "data.answer_only_fraction=0.5"]
    with pytest.raises(ConfigError, match=r"data.answer_only_fraction=0.5 needs objective.sft=true"):
        check_train_config(compose_config("train", base))
    check_train_config(compose_config("train", [*base, "objective.sft=true"]))  # the consistent pair passes


def test_an_sft_objective_without_answer_only_rows_is_refused_before_training():
    """objective.sft=true on rows without prompt_mask failed only at the first step, after the run started."""
    with pytest.raises(ConfigError, match=r"objective.sft=true needs rows that carry prompt_mask"):
        check_train_config(compose_config("train", ["experiment=needle_demo", "data.answer_only_fraction=0"]))
    with pytest.raises(ConfigError, match=r"objective.sft=true needs rows"):
        check_train_config(compose_config("train", ["experiment=needle_demo", "objective=ar", "objective.sft=true",
                                                    "model.attention=causal", "data.answer_only_fraction=0"]))
    check_train_config(compose_config("train", ["experiment=needle_demo"]))  # the recipe itself passes


def test_a_curriculum_that_outlasts_the_run_is_refused():
    """data.curriculum_steps >= trainer.max_steps: the run would never train (or validate what it trained)
    on the task itself."""
    with pytest.raises(ConfigError, match=r"data.curriculum_steps=3000 >= trainer.max_steps=3000"):
        check_train_config(compose_config("train", ["experiment=needle_demo", "trainer.max_steps=3000"]))
    check_train_config(compose_config("train", ["experiment=needle_demo", "trainer.max_steps=3001"]))
