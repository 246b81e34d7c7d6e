"""DESIGN.md §1: imports only point down the layers; nothing below dlm/train knows Lightning or Hydra.

The contract is checked by *parsing* every ``.py`` file under ``dlm/`` with ``ast``: every import at
any depth (module level, inside functions and methods, under ``if TYPE_CHECKING:``, in ``try``
blocks), relative imports resolved against the file's package, and ``importlib.import_module`` /
``__import__`` calls with a literal module name. Importing the modules instead (the old test) never
sees an import inside a function, which is where many of dlm's imports live. Each rule is its own
test and every failure lists ``file:line -> module``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------- the layer table, as data
# DESIGN §1, top to bottom. A package may import its own modules and anything on a lower rank;
# same-rank imports between different packages are refused unless listed in PEERS.
LAYERS: dict[int, tuple[str, ...]] = {
    7: ("dlm.cli", "dlm.bench", "dlm.__main__"),  # thin entry points (dlm-train, dlm-eval-ppl, dlm-bench, ...)
    6: ("dlm.train",),  # Lightning only here
    # The package root is a facade (``dlm.load``): it may re-export algorithms and I/O, but never
    # dlm.train, so ``import dlm`` can never pull in Lightning.
    5: ("dlm.objectives", "dlm.samplers", "dlm.eval", "dlm"),
    4: ("dlm.io",),  # model directories (save, load, migrate), the one atomic writer, tokenizer files
    3: ("dlm.diffusion", "dlm.cache", "dlm.convert", "dlm.rewards", "dlm.data"),
    2: ("dlm.models",),  # backbones; never import io, data or algorithms
    1: ("dlm.nn",),  # layers
    0: ("dlm.types", "dlm.errors"),  # the house vocabulary (protocols, result types, exceptions)
}
RANK = {pkg: rank for rank, pkgs in LAYERS.items() for pkg in pkgs}

# Same-rank imports that are part of the design (importer -> allowed peers):
PEERS: dict[str, frozenset[str]] = {
    # evaluation scores with an objective's public pieces (target sets, per-token NLL) and samples
    # with samplers (generative perplexity); it never reaches into their private names (see below)
    "dlm.eval": frozenset({"dlm.objectives", "dlm.samplers"}),
    # LSD trains a sampler's schedule, DRAKES backpropagates through a sampler's rollout
    "dlm.objectives": frozenset({"dlm.samplers"}),
    # samplers import no objectives (DESIGN/issue 9) and no evaluation
    "dlm.samplers": frozenset(),
    # the root facade may re-export any algorithm
    "dlm": frozenset({"dlm.objectives", "dlm.samplers", "dlm.eval"}),
    # rank 3: diffusion (maths) and data (tokenizers, corpora) are the base the other three build on;
    # they themselves import no peer
    "dlm.cache": frozenset({"dlm.diffusion", "dlm.data"}),
    "dlm.convert": frozenset({"dlm.diffusion", "dlm.data", "dlm.cache"}),
    "dlm.rewards": frozenset({"dlm.diffusion", "dlm.data"}),
    "dlm.cli": frozenset({"dlm.bench"}),
    "dlm.__main__": frozenset({"dlm.cli"}),  # python -m dlm is the dlm command
}

FRAMEWORKS = ("lightning", "lightning_fabric", "pytorch_lightning", "hydra", "omegaconf")
FRAMEWORK_HOMES = ("dlm.train", "dlm.cli", "dlm.__main__")  # the only places that may import FRAMEWORKS
IO = ("dlm.io", "dlm.data")
ALGORITHMS = ("dlm.objectives", "dlm.samplers", "dlm.eval", "dlm.train")


# ---------------------------------------------------------------- the checker
@dataclass(frozen=True)
class Import:
    file: str  # path relative to the scanned root
    line: int
    importer: str  # dotted module name of the file
    module: str  # dotted module imported (a submodule when ``from pkg import submodule``)
    name: str | None = None  # the imported name for ``from module import name``

    def __str__(self) -> str:
        what = self.module if self.name is None else f"{self.module}.{self.name}"
        return f"{self.file}:{self.line} -> {what}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str, root: Path) -> bool:
    base = root.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def resolve_from(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, root: Path) -> list[Import]:
    """Every import in one file, at any depth, with relative imports resolved."""
    importer = module_name(path, root)
    is_package = path.name == "__init__.py"
    rel = path.relative_to(root).as_posix()
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
        if isinstance(node, ast.Import):
            found += [Import(rel, node.lineno, importer, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(node, importer, is_package)
            for a in node.names:
                sub = f"{base}.{a.name}" if base else a.name
                if a.name != "*" and is_module(sub, root):  # ``from dlm.models import transformer``
                    found.append(Import(rel, node.lineno, importer, sub))
                else:
                    found.append(Import(rel, node.lineno, importer, base, a.name))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append(Import(rel, node.lineno, importer, node.args[0].value))
    found += private_attribute_uses(path, root, rel, importer, is_package)
    return found


def private_attribute_uses(path: Path, root: Path, rel: str, importer: str, is_package: bool) -> list[Import]:
    """``mod._name`` where ``mod`` is a dlm module bound by an import in this file (reported as an import)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name.split(".")[0] == "dlm":
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(node, importer, is_package)
            for a in node.names:
                sub = f"{base}.{a.name}"
                if base.split(".")[0] == "dlm" and is_module(sub, root):
                    aliases[a.asname or a.name] = sub
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and is_private(node.attr)):
            found.append(Import(rel, node.lineno, importer, aliases[node.value.id], node.attr))
    return found


def scan(root: Path = ROOT) -> list[Import]:
    """Every import of every .py file under ``root / 'dlm'``."""
    return [imp for path in sorted((root / "dlm").rglob("*.py")) for imp in imports_of(path, root)]


def package_of(module: str) -> str | None:
    """The layer-table entry owning a dlm module (longest prefix), or None for a non-dlm module."""
    if module.split(".")[0] != "dlm":
        return None
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANK:
            return ".".join(parts[:n])
    return None


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def in_any(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def report(found: list[Import]) -> str:
    return "\n  " + "\n  ".join(sorted({str(i) for i in found}))


def framework_imports(imports: list[Import]) -> list[Import]:
    return [i for i in imports if i.module.split(".")[0] in FRAMEWORKS and not in_any(i.importer, FRAMEWORK_HOMES)]


def forbidden(imports: list[Import], importers: tuple[str, ...], targets: tuple[str, ...]) -> list[Import]:
    return [i for i in imports if in_any(i.importer, importers) and in_any(i.module, targets)]


def private_imports(imports: list[Import], importers: tuple[str, ...] = ("dlm",)) -> list[Import]:
    """Imports of a private name (``_x``: a module or an attribute) of a dlm package other than the importer's."""
    found = []
    for i in imports:
        if not in_any(i.importer, importers) or package_of(i.module) is None:
            continue
        if package_of(i.module) == package_of(i.importer):
            continue
        if any(is_private(part) for part in i.module.split(".")) or (i.name is not None and is_private(i.name)):
            found.append(i)
    return found


def upward_imports(imports: list[Import]) -> list[Import]:
    """dlm-internal imports that point up the layer table or sideways to a peer not in PEERS."""
    found = []
    for i in imports:
        src, dst = package_of(i.importer), package_of(i.module)
        if dst is None or src is None or src == dst:
            continue
        if RANK[dst] > RANK[src] or (RANK[dst] == RANK[src] and dst not in PEERS.get(src, frozenset())):
            found.append(i)
    return found


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    found = scan()
    assert len({i.file for i in found}) > 50, "the scan found too few files: is ROOT right?"
    return found


# ---------------------------------------------------------------- the rules
def test_every_dlm_module_has_a_place_in_the_layer_table():
    modules = [module_name(p, ROOT) for p in (ROOT / "dlm").rglob("*.py")]
    unplaced = sorted(m for m in modules if m != "dlm" and package_of(m) == "dlm")
    assert not unplaced, f"place these in LAYERS (DESIGN §1) before using them: {unplaced}"


def test_nothing_below_train_imports_lightning_hydra_or_omegaconf(imports):
    bad = framework_imports(imports)
    assert not bad, "only dlm/train and dlm/cli.py may import Lightning, Hydra or OmegaConf:" + report(bad)


def test_models_import_neither_algorithms_nor_io(imports):
    bad = forbidden(imports, ("dlm.models",), ALGORITHMS + IO + ("dlm.cli", "dlm.bench"))
    assert not bad, "dlm/models never imports objectives, samplers, eval, train or I/O (io, data):" + report(bad)


def test_nn_imports_only_nn_and_the_house_vocabulary(imports):
    bad = [i for i in imports if in_any(i.importer, ("dlm.nn",)) and package_of(i.module) is not None
           and not in_any(i.module, ("dlm.nn", "dlm.types", "dlm.errors"))]
    assert not bad, "dlm/nn imports no models (nor anything above them):" + report(bad)


def test_diffusion_imports_no_models(imports):
    bad = forbidden(imports, ("dlm.diffusion",), ("dlm.models",))
    assert not bad, "dlm/diffusion is maths on tensors; it imports no backbone:" + report(bad)


def test_samplers_import_no_objectives(imports):
    bad = forbidden(imports, ("dlm.samplers",), ("dlm.objectives",))
    assert not bad, "dlm/samplers imports no objectives:" + report(bad)


def test_eval_imports_no_private_names_of_other_packages(imports):
    bad = private_imports(imports, ("dlm.eval",))
    assert not bad, "dlm/eval reaches into private names of another package (make them public or move them):" + report(bad)


def test_no_package_imports_private_names_of_another(imports):
    bad = private_imports(imports)
    assert not bad, "private names (_x) stay inside their package:" + report(bad)


def test_imports_only_point_down(imports):
    bad = upward_imports(imports)
    ranks = "; ".join(f"{r}: {', '.join(p)}" for r, p in LAYERS.items())
    assert not bad, f"imports must point down the layer table ({ranks}); same-rank peers per PEERS:" + report(bad)


# ---------------------------------------------------------------- negative control
def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_checker_sees_imports_at_every_depth(tmp_path):
    """A synthetic dlm tree with one violation per rule, each hidden where an import-based check is blind."""
    write_tree(tmp_path, {
        "dlm/__init__.py": "",
        "dlm/io/__init__.py": "",
        "dlm/io/model_dir.py": "",
        "dlm/models/__init__.py": "",
        "dlm/models/net.py": """\
            from __future__ import annotations
            from typing import TYPE_CHECKING
            import torch

            if TYPE_CHECKING:
                import lightning


            def save(model):
                from dlm.io.model_dir import save_model_dir

                return save_model_dir


            class Net:
                def sample(self):
                    from ..samplers import ancestral

                    return ancestral
            """,
        "dlm/nn/__init__.py": "",
        "dlm/nn/layer.py": """\
            def f():
                import importlib
                return importlib.import_module("dlm.models.net")
            """,
        "dlm/samplers/__init__.py": "",
        "dlm/samplers/ancestral.py": """\
            try:
                from dlm.objectives import masked
            except ImportError:
                masked = None
            """,
        "dlm/objectives/__init__.py": "",
        "dlm/objectives/masked.py": "def _strata(): ...\n",
        "dlm/eval/__init__.py": "",
        "dlm/eval/ppl.py": """\
            from dlm.objectives.masked import _strata
            from . import helpers
            from .helpers import _local
            import dlm.objectives.masked as masked


            def g():
                return masked._strata, helpers._local
            """,
        "dlm/eval/helpers.py": "_local = 1\n",
    })
    found = scan(tmp_path)
    strs = lambda xs: sorted(str(i) for i in xs)  # noqa: E731
    assert strs(framework_imports(found)) == ["dlm/models/net.py:6 -> lightning"]
    assert strs(forbidden(found, ("dlm.models",), ALGORITHMS + IO)) == [
        "dlm/models/net.py:10 -> dlm.io.model_dir.save_model_dir",
        "dlm/models/net.py:17 -> dlm.samplers.ancestral",
    ]
    assert strs(forbidden(found, ("dlm.nn",), ("dlm.models",))) == ["dlm/nn/layer.py:3 -> dlm.models.net"]
    assert strs(forbidden(found, ("dlm.samplers",), ("dlm.objectives",))) == ["dlm/samplers/ancestral.py:2 -> dlm.objectives.masked"]
    # own-package private names (helpers._local) are fine; another package's are not, however reached
    assert strs(private_imports(found, ("dlm.eval",))) == [
        "dlm/eval/ppl.py:1 -> dlm.objectives.masked._strata",
        "dlm/eval/ppl.py:8 -> dlm.objectives.masked._strata",
    ]
    assert strs(upward_imports(found)) == [
        "dlm/models/net.py:10 -> dlm.io.model_dir.save_model_dir",
        "dlm/models/net.py:17 -> dlm.samplers.ancestral",
        "dlm/nn/layer.py:3 -> dlm.models.net",
        "dlm/samplers/ancestral.py:2 -> dlm.objectives.masked",
    ]


def test_checker_on_a_clean_tree_reports_nothing(tmp_path):
    write_tree(tmp_path, {
        "dlm/__init__.py": "",
        "dlm/nn/__init__.py": "from .attention import attend\n",
        "dlm/nn/attention.py": "from dlm.errors import ConfigError\ndef attend(): ...\n",
        "dlm/errors.py": "class ConfigError(Exception): ...\n",
        "dlm/models/__init__.py": "",
        "dlm/models/net.py": "def f():\n    from dlm.nn.attention import attend\n    from dlm.types import LossOutput\n",
        "dlm/eval/__init__.py": "",
        "dlm/eval/ppl.py": "from dlm.objectives.masked import target_positions\nfrom dlm.samplers import ancestral\n",
    })
    found = scan(tmp_path)
    assert len(found) == 6
    assert not (framework_imports(found) + upward_imports(found) + private_imports(found))


# ---------------------------------------------------------------- runtime check (cheap complement)
SCRIPT = textwrap.dedent(
    f"""
    import importlib, pkgutil, sys

    SKIP = {FRAMEWORK_HOMES!r}

    def walk(package):
        # Hand-rolled instead of pkgutil.walk_packages, which would import dlm.train to find its children.
        mod = importlib.import_module(package)
        yield package
        for info in pkgutil.iter_modules(getattr(mod, "__path__", []), package + "."):
            if any(info.name == s or info.name.startswith(s + ".") for s in SKIP):
                continue
            if info.ispkg:
                yield from walk(info.name)
            else:
                importlib.import_module(info.name)
                yield info.name

    imported = list(walk("dlm"))
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in {FRAMEWORKS!r})
    if leaked:
        raise SystemExit("importing dlm below dlm/train loads: " + ", ".join(leaked))
    """
)


def test_importing_everything_below_train_loads_no_framework():
    """Transitive imports too (through a third-party package): what the ast check cannot follow."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
