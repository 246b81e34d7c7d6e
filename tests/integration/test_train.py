"""End-to-end training on CPU: learning, exact resume, DDP (gloo), NaN guard, export round trip."""

import csv
from pathlib import Path

import pytest
import torch
from hydra_helpers import compose_config

import dlm
from dlm.io.record import Family
from dlm.train.module import NonFiniteLossError
from dlm.train.run import run

pytestmark = pytest.mark.slow


def metrics(run_dir: Path) -> dict[int, float]:
    """step -> train/loss from the CSV logger."""
    out = {}
    with open(run_dir / "logs" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                out[int(row["step"])] = float(row["train/loss"])
    return out


def test_loss_falls_over_50_steps_and_model_dir_round_trips(tmp_path):
    cfg = compose_config("train", ["debug=tiny", f"run_dir={tmp_path}/run", "trainer.max_steps=50",
                                   "trainer.val_check_interval=50", "optim.lr=3e-3", "optim.warmup_steps=5",
                                   "batch_size=16"])
    summary = run(cfg)
    assert summary["step"] == 50
    losses = metrics(tmp_path / "run")
    steps = sorted(losses)
    first = sum(losses[s] for s in steps[:5]) / 5
    last = sum(losses[s] for s in steps[-5:]) / 5
    assert last < 0.75 * first, (first, last)
    loaded = dlm.load(summary["model_dir"])
    assert loaded.family is Family.MASKED and loaded.record.step == loaded.meta["step"] == 50
    assert loaded.record.seq_len == cfg.data.seq_len and loaded.meta["data"]["seq_len"] == cfg.data.seq_len
    assert (Path(summary["model_dir"]) / "config.yaml").exists()
    ids = torch.tensor([loaded.tokenizer.encode("def f(x): return x")])
    assert loaded.model(ids).shape == (1, ids.shape[1], loaded.tokenizer.vocab_size)


def test_resume_continues_at_same_step_with_same_next_batch_loss(tmp_path):
    common = ["debug=tiny", "trainer.max_steps=6", "trainer.val_check_interval=3",
              "+callbacks.periodic._target_=lightning.pytorch.callbacks.ModelCheckpoint",
              f"+callbacks.periodic.dirpath={tmp_path}/periodic", "+callbacks.periodic.every_n_train_steps=3",
              "+callbacks.periodic.save_top_k=-1", "+callbacks.periodic.filename='{step}'"]
    run(compose_config("train", [*common, f"run_dir={tmp_path}/a"]))
    full = metrics(tmp_path / "a")
    ckpt = tmp_path / "periodic" / "step=3.ckpt"
    assert ckpt.exists(), sorted(p.name for p in (tmp_path / "periodic").iterdir())
    run(compose_config("train", [*common[:3], f"run_dir={tmp_path}/b", f"ckpt_path='{ckpt}'"]))
    resumed = metrics(tmp_path / "b")
    assert min(resumed) == 3
    for step in (3, 4, 5):
        assert resumed[step] == pytest.approx(full[step], rel=1e-6, abs=1e-7), (step, resumed, full)


def test_ddp_two_cpu_processes_gloo(tmp_path):
    summary = run(compose_config("train", ["debug=tiny", "trainer=ddp_cpu", f"run_dir={tmp_path}/ddp",
                                           "trainer.max_steps=3", "global_batch_size=16", "batch_size=4"]))
    loaded = dlm.load(summary["model_dir"])
    assert loaded.meta["step"] == 3
    assert summary["step"] == 3  # the launching process of ddp_spawn never steps its own trainer (read 0)
    cfg = compose_config("train", ["debug=tiny", "trainer=ddp_cpu", "global_batch_size=12", "batch_size=4"])
    from dlm.errors import ConfigError
    from dlm.train.run import accumulation, world_size

    assert world_size(cfg.trainer) == 2 and accumulation(16, 4, 2) == 2
    with pytest.raises(ConfigError, match="global_batch_size=12"):
        accumulation(cfg.global_batch_size, cfg.batch_size, world_size(cfg.trainer))


def test_nan_loss_stops_the_run_and_keeps_last_good_checkpoint(tmp_path):
    cfg = compose_config("train", ["debug=tiny", f"run_dir={tmp_path}/nan", "trainer.max_steps=10",
                                   "trainer.val_check_interval=2"])
    inner = dict(cfg.objective)
    cfg.objective = {"_target_": "mocks.NaNAfter", "n": 4, "objective": inner}
    with pytest.raises(NonFiniteLossError, match="step 3"):
        run(cfg)
    last = tmp_path / "nan" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "model").exists()


def test_refuses_to_overwrite_a_run_without_ckpt_path(tmp_path):
    from dlm.errors import ConfigError

    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    (tmp_path / "r" / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match="ckpt_path=last"):
        run(compose_config("train", ["debug=tiny", f"run_dir={tmp_path}/r"]))
