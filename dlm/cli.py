"""Console entry points: thin Hydra wrappers around dlm.train.run and dlm.eval.

Configs live in the repository's ``conf/`` (or ``$DLM_CONF_DIR``). Every command takes Hydra
overrides (``key=value``) and prints one JSON object as its last stdout line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF_DIR = str(Path(os.environ.get("DLM_CONF_DIR", Path(__file__).resolve().parents[1] / "conf")).resolve())


def _print_json(obj: dict) -> None:
    sys.stdout.flush()
    print(json.dumps(obj, sort_keys=True), flush=True)


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def train(cfg: DictConfig) -> None:
    """dlm-train experiment=<name> key=value ..."""
    from dlm.train.run import run

    _print_json(run(cfg))


def data_settings(data: str, conf_dir: Path = Path(CONF_DIR)) -> dict:
    """A conf/data name -> its resolved settings; a local file -> wrap-mode settings for that file."""
    from omegaconf import OmegaConf

    from dlm.errors import ConfigError

    named = conf_dir / "data" / f"{data}.yaml"
    if named.exists():
        return {"dataset": data, **OmegaConf.to_container(OmegaConf.load(named), resolve=True)}
    if Path(data).exists():
        return {"dataset": str(data), "source": str(data), "mode": "wrap", "eval_split": "test"}
    names = sorted(p.stem for p in (conf_dir / "data").glob("*.yaml"))
    raise ConfigError(f"data={data!r} is neither a corpus in conf/data ({', '.join(names)}) nor an existing "
                      "local .txt/.jsonl file")


@hydra.main(config_path=CONF_DIR + "/eval", config_name="eval_ppl", version_base="1.3")
def eval_ppl(cfg: DictConfig) -> None:
    """dlm-eval-ppl model=<model dir> data=<conf/data name or local .txt/.jsonl>"""
    from dlm.eval.model_dir import eval_ppl_model_dir

    d = data_settings(str(cfg.data))
    _print_json(eval_ppl_model_dir(
        cfg.model, dataset=d["dataset"], source=d["source"], split=cfg.split or d.get("eval_split", "test"),
        seq_len=cfg.seq_len, mode=cfg.mode or d.get("mode", "wrap"), text_field=d.get("text_field"),
        streaming=bool(d.get("streaming", False)), detokenizer=cfg.detokenizer or d.get("detokenizer"), batch_size=cfg.batch_size,
        num_samples=cfg.num_samples, method=cfg.method, max_tokens=cfg.max_tokens, seed=cfg.seed,
        device=cfg.device, cache_dir=cfg.cache_dir, out=cfg.out, rope_scaling=cfg.rope_scaling,
        max_seq_len=cfg.max_seq_len,
    ))


@hydra.main(config_path=CONF_DIR + "/eval", config_name="sample", version_base="1.3")
def sample(cfg: DictConfig) -> None:
    """dlm-sample model=<dir> sampler=<name> num_samples=<n> length=<L> out=<file.jsonl>"""
    from hydra.utils import instantiate

    from dlm.eval.sample_job import sample_to_jsonl
    from dlm.io.model_dir import load_model_dir

    # the sampler follows the schedule the model was trained with unless one is given
    loaded = load_model_dir(cfg.model)
    extra = {"schedule": loaded.schedule} if cfg.sampler.get("schedule", "absent") is None else {}
    sampler = instantiate(cfg.sampler, **extra)
    _print_json(sample_to_jsonl(cfg.model, sampler, num_samples=cfg.num_samples, length=cfg.length,
                                batch_size=cfg.batch_size, prompt=cfg.prompt, seed=cfg.seed, device=cfg.device,
                                out=cfg.out))


@hydra.main(config_path=CONF_DIR + "/eval", config_name="eval_gen", version_base="1.3")
def eval_gen(cfg: DictConfig) -> None:
    """dlm-eval-gen samples=<file.jsonl> judge=<dlm AR model dir or HF causal-LM dir>"""
    from dlm.eval.gen_job import eval_gen_file

    _print_json(eval_gen_file(cfg.samples, cfg.judge, batch_size=cfg.batch_size, max_len=cfg.max_len,
                              device=cfg.device, out=cfg.out))


@hydra.main(config_path=CONF_DIR + "/eval", config_name="convert", version_base="1.3")
def convert(cfg: DictConfig) -> None:
    """dlm-convert src=<HF causal-LM dir or dlm model dir> dst=<dir> [attention=block_causal block_size=4]"""
    from dlm.io.hf_dir import convert as run_convert

    _print_json(run_convert(str(cfg.src), str(cfg.dst), direction=cfg.direction, attention=cfg.attention,
                            block_size=cfg.block_size, mask_id=cfg.mask_id, model_type=cfg.model_type,
                            mask_token=cfg.mask_token))


@hydra.main(config_path=CONF_DIR, config_name="demo", version_base="1.3")
def demo(cfg: DictConfig) -> None:
    """dlm-demo: RADD vs AR on the embedded corpus, both evaluated and sampled."""
    from dlm.train.demo import run_demo

    _print_json(run_demo(cfg, conf_dir=Path(CONF_DIR)))


@hydra.main(config_path=CONF_DIR, config_name="bench", version_base="1.3")
def _bench(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    _print_json(instantiate(cfg.task))


def bench() -> None:
    """dlm-bench <task> key=value ...  (``dlm-bench train`` is ``dlm-bench task=train``).

    Overrides address the task's own keys (``model.dim=16`` means ``task.model.dim=16``).
    """
    if len(sys.argv) > 1 and "=" not in sys.argv[1] and not sys.argv[1].startswith("-"):
        sys.argv[1] = f"task={sys.argv[1]}"
    sys.argv[1:] = [_task_override(a) for a in sys.argv[1:]]
    _bench()


def _task_override(arg: str) -> str:
    key = arg.split("=", 1)[0].lstrip("+~")
    if "=" not in arg or arg.startswith("-") or key == "task" or key.startswith(("task.", "hydra")):
        return arg
    prefix = arg[: len(arg.split("=", 1)[0]) - len(key)]  # keep a leading + or ~
    return f"{prefix}task.{arg[len(prefix):]}"


@hydra.main(config_path=CONF_DIR + "/eval", config_name="train_policy", version_base="1.3")
def train_policy(cfg: DictConfig) -> None:
    """dlm-train-policy model=<block model dir> reward_model=<AR model dir> policy.sizes=[2,4,8]"""
    from hydra.utils import instantiate

    from dlm.train.block_policy_run import train_block_policy

    make_sampler = instantiate(cfg.sampler, _partial_=True)  # block_size_policy= is given per policy
    _print_json(train_block_policy(
        model=cfg.model, reward_model=cfg.reward_model, make_sampler=lambda p: make_sampler(block_size_policy=p),
        sizes=list(cfg.policy.sizes), hidden_dim=cfg.policy.hidden_dim, step_cost=cfg.step_cost, steps=cfg.steps,
        batch_size=cfg.batch_size, length=cfg.length, prompt=cfg.prompt, num_rollouts=cfg.num_rollouts, lr=cfg.lr,
        baseline_momentum=cfg.baseline_momentum, eval_rollouts=cfg.eval_rollouts, seed=cfg.seed, device=cfg.device,
        out=cfg.out,
    ))
