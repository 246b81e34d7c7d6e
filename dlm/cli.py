"""Console entry points: thin Hydra wrappers around dlm.train.run and dlm.eval.

Configs are found in ``$DLM_CONF_DIR``, else in the installed package (``dlm/conf``, shipped in the
wheel), else in the repository's ``conf/``. Every command takes Hydra overrides (``key=value``) and
prints one JSON object as its last stdout line.

The console contract (``command``): an input dlm refuses (any ``DlmError``: ConfigError,
CheckpointError, OfflineError, ...) and a config Hydra cannot compose (unknown option, misspelled
key) print one line on stderr, ``<command>: error: <message>``, and exit with status 2, without a
traceback; ``DLM_DEBUG=1`` shows the traceback instead. ``--version`` prints dlm's version.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from dlm import __version__
from dlm.errors import DlmError


def conf_dir() -> Path:
    """$DLM_CONF_DIR, else the configs inside the installed package (a wheel), else the repository's conf/."""
    if os.environ.get("DLM_CONF_DIR"):
        return Path(os.environ["DLM_CONF_DIR"]).resolve()
    packaged = Path(__file__).resolve().parent / "conf"  # written there by setup.py's build step
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "conf"


CONF_DIR = str(conf_dir())
REFUSED = 2  # exit status of a refused input (1 stays for crashes)


def one_line(error: BaseException) -> str:
    """A refusal's message on one line: Hydra's multi-line reports joined, option lists comma-separated."""
    if isinstance(error.__cause__, DlmError):  # a dlm refusal raised inside a constructor Hydra called
        return one_line(error.__cause__)
    text = str(error).split("Config search path:")[0]  # Hydra appends its search path to a missing option
    out, listing = "", False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if listing and raw[:1].isspace():  # an indented item under "Available options in 'x':"
            out += (" " if out.endswith(":") else ", ") + line
            continue
        listing = line.endswith(":")
        out += ("" if not out else " " if out[-1] in ".!?:" else ". ") + line
    cause = str(error.__cause__ or "").strip()
    if cause and cause.splitlines()[0] not in out:  # OmegaConf's reason, e.g. "Key 'x' is not in struct"
        out += f" ({cause.splitlines()[0]})"
    return out


@contextmanager
def refusals_reported() -> Iterator[None]:
    """A refused input (DlmError) or a config Hydra cannot compose or instantiate: one line on stderr and
    exit 2. ``DLM_DEBUG=1`` re-raises instead (full traceback); any other error propagates unchanged."""
    try:
        yield
    except (DlmError, HydraException, OmegaConfBaseException) as e:
        if os.environ.get("DLM_DEBUG", "") not in ("", "0"):
            raise
        sys.stdout.flush()
        print(f"{Path(sys.argv[0]).name or 'dlm'}: error: {one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(REFUSED)


@contextmanager
def hydra_errors_raised() -> Iterator[None]:
    """Hydra prints a multi-line report of a composition error (and a HYDRA_FULL_ERROR hint) unless
    HYDRA_FULL_ERROR is set, in which case it raises the error for ``refusals_reported`` to shorten."""
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


def command(config_name: str, config_path: str = CONF_DIR) -> Callable[[Callable[[DictConfig], None]], Callable[[], None]]:
    """``hydra.main`` with dlm's console contract: ``--version`` and one-line refusals."""

    def wrap(task: Callable[[DictConfig], None]) -> Callable[[], None]:
        @functools.wraps(task)
        def reported_task(cfg: DictConfig) -> None:
            # caught inside the task: an exception leaving it makes Hydra print "Error executing job ..."
            with refusals_reported():
                task(cfg)

        hydra_main = hydra.main(config_path=config_path, config_name=config_name, version_base="1.3")(reported_task)

        @functools.wraps(task)
        def main() -> None:
            if "--version" in sys.argv[1:]:  # Hydra's own --version would print Hydra's
                print(f"dlm {__version__}")
                return
            with refusals_reported(), hydra_errors_raised():  # composition errors, before the task runs
                hydra_main()

        return main

    return wrap


def _print_json(obj: dict) -> None:
    sys.stdout.flush()
    print(json.dumps(obj, sort_keys=True), flush=True)


@command("train")
def train(cfg: DictConfig) -> None:
    """dlm-train experiment=<name> key=value ..."""
    from dlm.train.run import run

    summary = run(cfg)
    if summary is not None:  # None on the non-zero ranks of a multi-process run
        _print_json(summary)


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


@command("eval_ppl", CONF_DIR + "/eval")
def eval_ppl(cfg: DictConfig) -> None:
    """dlm-eval-ppl model=<model dir> data=<conf/data name or local .txt/.jsonl> [energy=<dir>] [lengths=[L1,L2]]"""
    from dlm.eval.model_dir import eval_ppl_model_dir

    d = data_settings(str(cfg.data))
    if "source" not in d:  # a data config with its own DataModule (data=needle, gb1, ...), not a corpus
        from dlm.errors import ConfigError

        raise ConfigError(f"data={cfg.data} is generated by its own data module, not a corpus dlm-eval-ppl reads; "
                          "pass a corpus name or a local .txt/.jsonl file (dlm-bench long writes needle documents "
                          "to one)")
    kwargs = dict(
        dataset=d["dataset"], source=d["source"], split=cfg.split or d.get("eval_split", "test"),
        mode=cfg.mode or d.get("mode", "wrap"), text_field=d.get("text_field"),
        streaming=bool(d.get("streaming", False)), detokenizer=cfg.detokenizer or d.get("detokenizer"), batch_size=cfg.batch_size,
        num_samples=cfg.num_samples, method=cfg.method, max_tokens=cfg.max_tokens, seed=cfg.seed,
        device=cfg.device, cache_dir=cfg.cache_dir, out=cfg.out, rope_scaling=cfg.rope_scaling,
        max_seq_len=cfg.max_seq_len, energy=cfg.energy, energy_carry_over=bool(cfg.energy_carry_over),
        log_z_samples=cfg.log_z_samples,
    )
    lengths = cfg.get("lengths")
    if lengths is None:
        _print_json(eval_ppl_model_dir(cfg.model, seq_len=cfg.seq_len, **kwargs))
        return
    from omegaconf import OmegaConf

    from dlm.errors import ConfigError
    from dlm.eval.lengths import eval_ppl_lengths

    if not OmegaConf.is_list(lengths):
        raise ConfigError(f"lengths={lengths} must be a list of row lengths, e.g. lengths=[512,1024] (one length: "
                          "seq_len=<tokens>)")
    if cfg.seq_len is not None:
        raise ConfigError(f"seq_len={cfg.seq_len} and lengths={list(lengths)} both give the row length; pass one")
    # one JSON line per length as it is scored, then the summary (the last line)
    _print_json(eval_ppl_lengths(cfg.model, lengths=list(lengths), report=_print_json, **kwargs))


@command("needle", CONF_DIR + "/eval")
def eval_needle(cfg: DictConfig) -> None:
    """dlm-eval-needle model=<model dir> lengths=[128,256] depths=[0,0.5,1] [rope_scaling=ntk_auto:256]"""
    from omegaconf import OmegaConf

    from dlm.eval.needle_job import eval_needle_model_dir
    from dlm.eval.needle_plot import needle_table

    spec = OmegaConf.to_container(cfg, resolve=True)
    result = eval_needle_model_dir(
        cfg.model, lengths=list(spec["lengths"]), depths=[float(d) for d in spec["depths"]], num_docs=cfg.num_docs,
        num_pairs=cfg.num_pairs, key_len=cfg.key_len, value_len=cfg.value_len, num_queries=cfg.num_queries, seed=cfg.seed,
        batch_size=cfg.batch_size, device=cfg.device, rope_scaling=cfg.rope_scaling, max_seq_len=cfg.max_seq_len,
        out=cfg.out, plot=cfg.plot)
    print(needle_table(result), flush=True)
    _print_json(result)


@command("sample", CONF_DIR + "/eval")
def sample(cfg: DictConfig) -> None:
    """dlm-sample model=<dir> sampler=<name> num_samples=<n> length=<L> out=<file.jsonl>"""

    from dlm.eval.sample_job import sample_to_jsonl
    from dlm.io.model_dir import load_model_dir

    if cfg.get("info", False):  # sampler=lsd(_plus) sampler.schedule.path=<dir> info=true: the schedule, no sampling
        print_schedule_info(cfg)
        return
    # the sampler follows the schedule the model was trained with unless one is given
    loaded = load_model_dir(cfg.model)
    sampler = instantiate_sampler(cfg.sampler, loaded.schedule)
    summary = sample_to_jsonl(cfg.model, sampler, num_samples=cfg.num_samples, length=cfg.length,
                              batch_size=cfg.batch_size, prompt=cfg.prompt, seed=cfg.seed, device=cfg.device,
                              out=cfg.out, rope_scaling=cfg.rope_scaling, max_seq_len=cfg.max_seq_len,
                              overwrite=bool(cfg.overwrite))
    from dlm.samplers.learned_schedule import LearnedScheduleSampler

    if isinstance(sampler, LearnedScheduleSampler):  # LSD: the learned grid and per-step scalars it sampled with
        summary["learned_schedule"] = sampler.learned
    _print_json(summary)


def print_schedule_info(cfg: DictConfig) -> None:
    """``dlm-sample ... info=true``: the learned grid and per-step scalars of ``sampler.schedule.path`` as a
    table, then its JSON line; the model (when given) is only loaded to compare fingerprints."""
    from omegaconf import OmegaConf

    from dlm.errors import ConfigError
    from dlm.eval.schedule_info import schedule_info, schedule_table
    from dlm.io.model_dir import load_model_dir

    path = OmegaConf.select(cfg, "sampler.schedule.path", default=None)
    if not isinstance(path, str) or OmegaConf.is_missing(cfg.sampler.schedule, "path"):
        raise ConfigError("info=true prints a learned sampler schedule: pass sampler=lsd (or lsd_plus) "
                          "sampler.schedule.path=<schedule dir>")
    model = None if OmegaConf.is_missing(cfg, "model") else load_model_dir(cfg.model).model
    info = schedule_info(path, model)
    print(schedule_table(info), flush=True)
    _print_json(info)


@command("eval_gen", CONF_DIR + "/eval")
def eval_gen(cfg: DictConfig) -> None:
    """dlm-eval-gen samples=<file.jsonl> judge=<dlm AR model dir or HF causal-LM dir>"""
    from dlm.eval.gen_job import eval_gen_file

    _print_json(eval_gen_file(cfg.samples, cfg.judge, batch_size=cfg.batch_size, max_len=cfg.max_len,
                              device=cfg.device, out=cfg.out))


@command("convert", CONF_DIR + "/eval")
def convert(cfg: DictConfig) -> None:
    """dlm-convert src=<HF causal-LM dir or dlm model dir> dst=<dir> [attention=block_causal block_size=4]"""
    from dlm.io.hf_dir import convert as run_convert

    _print_json(run_convert(str(cfg.src), str(cfg.dst), direction=cfg.direction, attention=cfg.attention,
                            block_size=cfg.block_size, mask_id=cfg.mask_id, model_type=cfg.model_type,
                            mask_token=cfg.mask_token, overwrite=bool(cfg.overwrite)))


@command("push", CONF_DIR + "/eval")
def push(cfg: DictConfig) -> None:
    """dlm-push model=<model dir> repo=<org/name> [private=true revision=<branch> dry_run=true]"""
    from dlm.io.push import push_model_dir

    _print_json(push_model_dir(cfg.model, cfg.repo, private=bool(cfg.private), revision=cfg.revision,
                               commit_message=cfg.commit_message, dry_run=bool(cfg.dry_run)))


@command("demo")
def demo(cfg: DictConfig) -> None:
    """dlm-demo: RADD vs AR on the embedded corpus, both evaluated and sampled."""
    from dlm.train.demo import run_demo

    _print_json(run_demo(cfg, conf_dir=Path(CONF_DIR)))


def reward_from(value: str | None, key: str, conf_dir: Path = Path(CONF_DIR)) -> tuple[object, str | None]:
    """``key=<value>``: a saved reward directory (returned with its path) or a conf/reward name (path None)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from dlm.errors import ConfigError
    from dlm.rewards.reward_dir import REWARD_FILE, load_reward

    if Path(value).expanduser().is_dir():
        if not (Path(value).expanduser() / REWARD_FILE).is_file():
            raise ConfigError(f"{key}={value} is a directory without {REWARD_FILE}; pass a reward directory "
                              "(dlm-fit-oracle, dlm.io.reward_dir.save_reward) or a conf/reward name")
        return load_reward(value), str(value)
    named = conf_dir / "reward" / f"{value}.yaml"
    if not named.is_file():
        names = sorted(p.stem for p in (conf_dir / "reward").glob("*.yaml"))
        raise ConfigError(f"{key}={value!r} is neither a reward directory nor a conf/reward name ({', '.join(names)})")
    spec = OmegaConf.load(named)
    if OmegaConf.missing_keys(spec):
        raise ConfigError(f"{key}={value} needs {sorted(OmegaConf.missing_keys(spec))}: pass {key}=<reward directory> "
                          "instead")
    return instantiate(spec), None


@command("design", CONF_DIR + "/design")
def design(cfg: DictConfig) -> None:
    """dlm-design model=<dir> reward=<dir|name> method=<base|drakes|svdd|smc|cg|best_of_n> num_samples=<n> out=designs.csv"""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict

    from dlm.errors import ConfigError
    from dlm.eval.design_job import (
        check_design_reward,
        design_space,
        design_to_file,
        output_format,
        pretrained_dir,
        recorded_reward,
    )
    from dlm.eval.model_dir import pick_device
    from dlm.io.model_dir import load_model_dir

    method = cfg.method
    loaded = load_model_dir(cfg.model, device=pick_device(cfg.device))
    drakes = loaded.meta.get("drakes") if isinstance(loaded.meta.get("drakes"), dict) else {}
    alphabet = design_space(loaded, cfg.length)[0]  # refuses a text model
    output_format(Path(cfg.out))  # cheap refusals first: the extension, a DRAKES model for method=drakes
    pretrained_dir(loaded, str(method.name), cfg.pretrained)
    if cfg.reward is None and method.uses_reward:
        raise ConfigError(f"method={method.name} steers with a reward: pass reward=<reward dir | conf/reward name>")
    # a DRAKES model's own fine-tuning reward (its model.json records it) is the reward unless one is given:
    # the evaluation oracle is then checked against it
    if cfg.reward is not None:
        reward_label = str(cfg.reward)
        reward, reward_path = reward_from(reward_label, "reward")
    else:
        reward, reward_path, reward_label = recorded_reward(drakes, model=str(cfg.model))
    # refused before the evaluation oracle and the measured data are read (GB1's table takes seconds)
    check_design_reward(loaded, reward, key="reward", method=str(method.name), needs_gradient=bool(method.needs_gradient),
                        length=cfg.length)
    space = cfg.design_spaces.get(alphabet) or {}
    eval_name = cfg.eval_reward if cfg.eval_reward is not None else space.get("eval_reward")
    if eval_name is None:
        raise ConfigError(f"no default evaluation oracle for the alphabet {alphabet!r}: pass eval_reward=<dir | name>")
    eval_reward, eval_path = reward_from(str(eval_name), "eval_reward")
    with open_dict(cfg):
        cfg.num_steps = cfg.num_steps or drakes.get("num_steps") or cfg.default_num_steps
    sampler_cfg = OmegaConf.create(OmegaConf.to_container(method.sampler, resolve=True))
    sampler_cfg.pop("reward", None)  # given built, below
    sampler = instantiate_sampler(sampler_cfg, loaded.schedule, **({"reward": reward} if method.uses_reward else {}))
    target_alpha = cfg.target_alpha if cfg.target_alpha is not None else sampler_cfg.get("alpha", drakes.get("alpha"))
    measured_cfg = space.get("measured")
    _print_json(design_to_file(
        loaded=loaded, sampler=sampler, method=str(method.name), needs_gradient=bool(method.needs_gradient),
        reward=reward, reward_label=reward_label, reward_path=reward_path,
        eval_reward=eval_reward, eval_label=str(eval_name), eval_path=eval_path, num_samples=cfg.num_samples,
        length=cfg.length, batch_size=cfg.batch_size, seed=cfg.seed, out=cfg.out, pretrained=cfg.pretrained,
        allow_same_oracle=bool(cfg.allow_same_oracle),
        threshold=cfg.threshold if cfg.threshold is not None else space.get("threshold"),
        log_lik_samples=cfg.log_lik_samples, measured=None if measured_cfg is None else lambda: instantiate(measured_cfg),
        top_fraction=cfg.top_fraction,
        target_alpha=target_alpha if target_alpha else None, overwrite=bool(cfg.overwrite)))


@command("fit_oracle")
def fit_oracle(cfg: DictConfig) -> None:
    """dlm-fit-oracle out=<dir> [oracle_table=gb1|mpra oracle_network=mlp|cnn]: train a sequence -> value oracle."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from dlm.io.reward_dir import fit_oracle_dir

    torch.set_num_threads(int(cfg.threads))
    spec = OmegaConf.to_container(cfg, resolve=True)
    table = cfg.oracle_table
    _print_json(fit_oracle_dir(cfg.out, train=instantiate(table.train), test=instantiate(table.test),
                               network=spec["oracle_network"], steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                               weight_decay=cfg.weight_decay, seed=cfg.seed, shuffle_labels=bool(cfg.shuffle_labels),
                               request={"train": spec["oracle_table"]["train"], "test": spec["oracle_table"]["test"]}))


@command("bench")
def _bench(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    _print_json(instantiate(cfg.task))


def bench() -> None:
    """dlm-bench <task> key=value ...  (``dlm-bench train`` is ``dlm-bench task=train``).

    Overrides address the task's own keys (``model.dim=16`` means ``task.model.dim=16``).
    """
    if len(sys.argv) > 1 and "=" not in sys.argv[1] and not sys.argv[1].startswith("-"):
        sys.argv[1] = f"task={sys.argv[1]}"
    sys.argv[1:] = ["quick=true" if a == "--quick" else a for a in sys.argv[1:]]  # dlm-bench all --quick
    sys.argv[1:] = [_task_override(a) for a in sys.argv[1:]]
    _bench()


def _task_override(arg: str) -> str:
    key = arg.split("=", 1)[0].lstrip("+~")
    if "=" not in arg or arg.startswith("-") or key == "task" or key.startswith(("task.", "hydra")):
        return arg
    prefix = arg[: len(arg.split("=", 1)[0]) - len(key)]  # keep a leading + or ~
    return f"{prefix}task.{arg[len(prefix):]}"


@command("train_policy", CONF_DIR + "/eval")
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


def sampler_from_conf(name: str, keys: dict, schedule) -> object:
    """conf/sampler/<name>.yaml with ``keys`` (sampler.<key>=value) applied, built; a ``schedule: null``
    becomes the schedule the model was trained with (as dlm-sample does)."""
    from hydra import compose, initialize_config_dir

    def value(v: object) -> str:  # lm-eval has already typed model_args values; Hydra reads them back
        return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    overrides = [f"sampler={name}", *(f"sampler.{k}={value(v)}" for k, v in keys.items())]
    with initialize_config_dir(config_dir=CONF_DIR + "/eval", version_base="1.3"):
        cfg = compose(config_name="sample", overrides=overrides)
    return instantiate_sampler(cfg.sampler, schedule)


def instantiate_sampler(sampler_cfg: DictConfig, schedule, **given: object) -> object:
    """The sampler of ``sampler_cfg``; ``schedule: null`` becomes ``schedule`` (the model's own); ``given``:
    further built arguments (dlm-design's ``reward=``), passed to the sampler itself, not to a wrapper's base.

    The schedule goes to the built partial, not to ``instantiate``: Hydra turns a dataclass argument
    into an empty config, which reads as "no schedule" and silently samples on the log-linear one.
    """
    from hydra.utils import instantiate

    extra = {"schedule": schedule} if sampler_cfg.get("schedule", "absent") is None else {}
    base_cfg = sampler_cfg.get("base")
    if isinstance(base_cfg, DictConfig) and "_target_" in base_cfg:  # a wrapper (best_of_n): its base gets it too
        extra["base"] = instantiate_sampler(base_cfg, schedule)
    return instantiate(sampler_cfg, _partial_=True)(**extra, **given)


def option_value(args: list[str], name: str) -> str | None:
    """The value of ``name v`` or ``name=v`` among command-line ``args`` (None when absent)."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def lm_eval_main() -> None:
    """dlm-lm-eval --model dlm --model_args model=<dir>,mc_samples=32 --tasks <t> [--include_path <dir>]

    lm-eval's own command line (every lm-eval argument works) with the ``dlm`` model registered and
    ``sampler=<conf/sampler name>`` resolved by Hydra; ``--model`` defaults to dlm."""
    with refusals_reported(), hydra_errors_raised():
        try:
            from lm_eval.__main__ import cli_evaluate

            from dlm.eval.harness import DlmLM, unknown_tasks
        except ImportError as e:
            from dlm.errors import ConfigError

            raise ConfigError(f"dlm-lm-eval needs lm-eval ({e}); install it with: pip install -e '.[eval]'") from e
        args = sys.argv[1:]
        if args and args[0] not in ("ls", "validate", "-h", "--help") and option_value(args, "--model") is None:
            at = 1 if args[0] == "run" else 0  # after lm-eval's subcommand, when given
            sys.argv[1:] = [*args[:at], "--model", "dlm", *args[at:]]
        saved, DlmLM.sampler_builder = DlmLM.sampler_builder, staticmethod(sampler_from_conf)
        try:
            cli_evaluate()
        except ValueError as e:  # lm-eval's own wording, with the dlm fix
            if not str(e).startswith("Tasks not found:"):
                raise
            missing = str(e).split(":", 1)[1].strip().split(", ")
            raise unknown_tasks(missing, option_value(sys.argv[1:], "--include_path")) from e
        finally:  # only this command resolves sampler names (an in-process caller gets the class back as it was)
            DlmLM.sampler_builder = saved


COMMANDS: dict[str, Callable[[], None]] = {
    "train": train, "eval-ppl": eval_ppl, "eval-needle": eval_needle, "sample": sample, "eval-gen": eval_gen, "convert": convert,
    "demo": demo, "bench": bench, "train-policy": train_policy, "lm-eval": lm_eval_main, "push": push, "fit-oracle": fit_oracle,
    "design": design,
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"dlm {__version__}: discrete diffusion language models", "",
             "usage: dlm <command> key=value ...   (each command is also installed as dlm-<command>)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {(fn.__doc__ or '').strip().splitlines()[0]}" for name, fn in COMMANDS.items()]
    lines += ["", "dlm --version prints the version; DLM_DEBUG=1 shows tracebacks of refused inputs."]
    return "\n".join(lines)


def main() -> None:
    """dlm <command> key=value ...: every dlm-<command> under one name; no command lists them."""
    args = sys.argv[1:]
    if args[:1] in (["--version"], ["-V"]):
        print(f"dlm {__version__}")
        return
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if args[0] not in COMMANDS:
        print(f"dlm: error: unknown command {args[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(REFUSED)
    # Run the installed dlm-<command> script itself when there is one: Lightning's multi-process
    # launchers (trainer=ddp on one machine) start each rank by re-running sys.argv, which must name it.
    for folder in (Path(sys.argv[0]).parent, Path(sys.executable).parent):
        script = folder / f"dlm-{args[0]}"
        if script.is_file() and os.access(script, os.X_OK):
            os.execv(script, [str(script), *args[1:]])
    sys.argv = [f"dlm-{args[0]}", *args[1:]]
    COMMANDS[args[0]]()
