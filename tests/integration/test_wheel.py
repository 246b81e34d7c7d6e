"""A wheel built from the repository ships the Hydra configs (dlm/conf): installed outside the
repository, without DLM_CONF_DIR, every command still composes its config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "dlm", "conf")


def test_wheel_installed_outside_the_repository_finds_its_configs(tmp_path):
    src = tmp_path / "src"  # build from a copy: an in-tree build would leave build/ in the checkout
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    run = dict(capture_output=True, text=True, timeout=300)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(tmp_path / "dist"), str(src)], **run)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("dlm-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
                                str(site), str(wheel)], **run)
    assert installed.returncode == 0, installed.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "DLM_CONF_DIR"}
    env["PYTHONPATH"] = str(site)  # ahead of the editable install of the checkout
    where = subprocess.run([sys.executable, "-c", "import dlm, dlm.cli; print(dlm.__file__); print(dlm.cli.CONF_DIR)"],
                           cwd=elsewhere, env=env, **run)
    assert where.returncode == 0, where.stderr
    module, conf = where.stdout.split()
    assert Path(module).is_relative_to(site) and Path(conf) == site / "dlm" / "conf"
    for command, override, shown in (("train", "debug=tiny", "_target_: dlm.models.transformer.Transformer"),
                                     ("eval-ppl", "model=m", "method: "),
                                     ("sample", "sampler=first_hitting", "_target_: dlm.samplers.first_hitting.")):
        composed = subprocess.run([sys.executable, "-m", "dlm", command, "--cfg", "job", override], cwd=elsewhere,
                                  env=env, **run)
        assert composed.returncode == 0 and shown in composed.stdout, (command, composed.stderr[-2000:])
