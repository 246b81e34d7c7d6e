"""Every command's config directory: a plain key of a command's config is never shadowed by a config group of
the same name in that directory (Hydra would read `key=value` as a group choice and refuse it), so every
documented `key=value` of every command parses."""

from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir

from dlm.cli import CONF_DIR


def _defaults_groups(defaults: list) -> set[str]:
    names = set()
    for entry in defaults or []:
        if isinstance(entry, dict):
            for key in entry:
                names.add(key.split("@")[0].split(" ")[-1].lstrip("/"))
    return names


def _command_dirs() -> list[Path]:
    root = Path(CONF_DIR)
    return [root, *(d for d in sorted(root.iterdir()) if d.is_dir() and not d.is_symlink()
                    and any(p.suffix == ".yaml" and "defaults" in (yaml.safe_load(p.read_text()) or {})
                            and "_global_" not in p.read_text().splitlines()[0] for p in d.glob("*.yaml"))
                    and any(c.is_dir() for c in d.iterdir()))]


def test_no_plain_key_is_shadowed_by_a_config_group():
    checked = 0
    for folder in _command_dirs():
        groups = {d.name for d in folder.iterdir() if d.is_dir()}
        for path in sorted(folder.glob("*.yaml")):
            config = yaml.safe_load(path.read_text()) or {}
            if not isinstance(config, dict) or "defaults" not in config:
                continue
            plain = set(config) - {"defaults"} - _defaults_groups(config["defaults"])
            assert not plain & groups, (f"{path}: plain key(s) {sorted(plain & groups)} share their name with a config "
                                        f"group of {folder}; move the group's command into a directory of its own")
            checked += 1
    assert checked >= 8  # train, demo, bench, fit_oracle, eval_ppl, sample, design, ...


def test_eval_ppl_method_is_a_plain_value():
    with initialize_config_dir(config_dir=CONF_DIR + "/eval", version_base="1.3"):
        cfg = compose(config_name="eval_ppl", overrides=["model=m", "method=quadrature"])
    assert cfg.method == "quadrature"
    with initialize_config_dir(config_dir=CONF_DIR + "/design", version_base="1.3"):
        cfg = compose(config_name="design", overrides=["model=m", "method=svdd"])
    assert cfg.method.name == "svdd" and cfg.method.sampler.num_candidates == 15
