"""Compose dlm's Hydra configs from tests."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from dlm.cli import CONF_DIR


def compose_config(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(name, overrides=overrides)
