"""Every experiment composes and instantiates (with debug=tiny), and bad settings fail at build time."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from hydra_helpers import compose_config

from dlm.cli import CONF_DIR
from dlm.errors import ConfigError
from dlm.train.run import accumulation, check_compatible, with_objective_reading

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment):
    # hub tokenizers/corpora are swapped for offline ones: this checks the experiment's own keys
    cfg = compose_config("train", [f"experiment={experiment}", "debug=tiny", "tokenizer=char", "data=pydoc",
                                   "trainer=cpu"])
    tokenizer = instantiate(cfg.tokenizer)
    objective = instantiate(cfg.objective)
    arch = {}
    if cfg.get("init_from"):
        # the architecture comes from the (converted) directory at run time; stand in with the
        # tiny model in the attention the objective needs
        assert "init_overrides" in cfg
        # (an energy, whose family has no attention, is initialised from a bidirectional diffusion model)
        arch = {"attention": objective.family.attention or "bidirectional",
                "block_size": getattr(objective, "block_size", None)}
    model = instantiate(cfg.model, vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, **arch)
    check_compatible(model, objective, seq_len=cfg.data.seq_len)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e.endswith("_owt")])
def test_cluster_experiments_keep_their_paper_settings(experiment):
    cfg = compose_config("train", [f"experiment={experiment}"])
    assert cfg.data.seq_len == 1024 and cfg.model.dim == 768 and cfg.model.n_layers == 12
    assert cfg.trainer.precision == "bf16-mixed" and cfg.global_batch_size == 512
    assert cfg.tokenizer._target_.endswith("HFTokenizer")
    ddp = compose_config("train", [f"experiment={experiment}", "trainer=ddp", "trainer.devices=8"])
    assert ddp.trainer.strategy == "ddp" and accumulation(512, ddp.batch_size, 8) == 2


def test_misspelled_key_fails_at_instantiate():
    cfg = compose_config("train", ["debug=tiny", "+model.n_layerz=3"])
    with pytest.raises(Exception, match="n_layerz"):
        instantiate(cfg.model, vocab_size=10, mask_id=9)


def test_incompatible_model_and_objective_name_the_key():
    cfg = compose_config("train", ["experiment=demo_ar", "debug=tiny", "model.attention=bidirectional"])
    tok = instantiate(cfg.tokenizer)
    model = instantiate(cfg.model, vocab_size=tok.vocab_size, mask_id=tok.mask_id)
    with pytest.raises(ConfigError, match="model.attention=causal"):
        check_compatible(model, instantiate(cfg.objective), seq_len=32)
    causal = instantiate(cfg.model, vocab_size=tok.vocab_size, mask_id=tok.mask_id, attention="causal")
    with pytest.raises(ConfigError, match="data.seq_len=4096"):
        check_compatible(causal, instantiate(cfg.objective), seq_len=4096)


def test_shift_logits_follows_the_objective_into_the_model_spec():
    cfg = compose_config("train", ["debug=tiny", "objective=block", "objective.shift_logits=true",
                                   "model.attention=block_causal", "+model.block_size=4"])
    objective = instantiate(cfg.objective)
    spec = with_objective_reading({"_target_": "dlm.models.transformer.Transformer"}, objective)
    assert spec["shift_logits"] is True
    with pytest.raises(ConfigError, match="model.shift_logits=false but objective.shift_logits=true"):
        with_objective_reading({"shift_logits": False}, objective)
    tok = instantiate(cfg.tokenizer)
    unshifted = instantiate(cfg.model, vocab_size=tok.vocab_size, mask_id=tok.mask_id)
    with pytest.raises(ConfigError, match="model.shift_logits=False but objective.shift_logits=True"):
        check_compatible(unshifted, objective, seq_len=32)
    shifted = instantiate(cfg.model, vocab_size=tok.vocab_size, mask_id=tok.mask_id, shift_logits=True)
    check_compatible(shifted, objective, seq_len=32)


def test_the_old_row_length_key_is_refused_with_its_new_name(tmp_path):
    from dlm.train.run import run

    cfg = compose_config("train", ["debug=tiny", "+data.block_size=32", f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="data row length is data.seq_len"):
        run(cfg)
