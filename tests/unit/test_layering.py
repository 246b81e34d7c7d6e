"""Nothing below dlm/train imports Lightning, Hydra or OmegaConf (DESIGN.md section 1)."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("lightning", "pytorch_lightning", "hydra", "omegaconf")
SKIP = ("dlm.train", "dlm.cli")

SCRIPT = textwrap.dedent(
    f"""
    import importlib, pkgutil, sys

    SKIP = {SKIP!r}

    def skipped(name):
        return any(name == s or name.startswith(s + ".") for s in SKIP)

    def walk(package):
        # Hand-rolled instead of pkgutil.walk_packages, which would import dlm.train to find its children.
        mod = importlib.import_module(package)
        yield package
        for info in pkgutil.iter_modules(getattr(mod, "__path__", []), package + "."):
            if skipped(info.name):
                continue
            if info.ispkg:
                yield from walk(info.name)
            else:
                importlib.import_module(info.name)
                yield info.name

    imported = list(walk("dlm"))
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})
    print(len(imported), "modules")
    if leaked:
        raise SystemExit("forbidden imports below dlm/train: " + ", ".join(leaked))
    """
)


def test_core_layers_do_not_import_lightning_hydra_or_omegaconf():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
