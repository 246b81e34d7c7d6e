"""Build hook only (the project is described in pyproject.toml): ship the repository's ``conf/`` inside
the package as ``dlm/conf``.

An installed wheel has no repository around it, so the Hydra configs travel with the code;
``dlm.cli.conf_dir`` looks for ``dlm/conf`` first and falls back to ``<repo>/conf`` in a source checkout
(an editable install links the sources and needs no copy).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildPyWithConf(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        if not (CONF / "train.yaml").is_file():
            raise FileNotFoundError(f"{CONF} is missing: dlm's Hydra configs must be shipped with the package")
        shutil.copytree(CONF, Path(self.build_lib) / "dlm" / "conf", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithConf})
