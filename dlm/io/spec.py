"""JSON specs of components: ``{"_target_": "dlm.<module>.<callable>", **kwargs}``, built recursively.

Model directories store the model and schedule this way (``model.json``), so a directory rebuilds
its model without Hydra. Only ``dlm.*`` targets are built: a spec is data, and an arbitrary target
in a downloaded directory would be code execution.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from dlm.errors import CheckpointError


def _resolve(target: Any) -> Any:
    if not isinstance(target, str) or not target.startswith("dlm."):
        raise CheckpointError(f"refusing to build {target!r}: model directories may only name dlm.* targets")
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(f"target {target!r} does not exist in this dlm version") from e


def build(spec: Any) -> Any:
    """Instantiate a JSON spec: dicts with ``_target_`` (a ``dlm.*`` callable) are built recursively."""
    if isinstance(spec, list):
        return [build(v) for v in spec]
    if not isinstance(spec, dict):
        return spec
    kwargs = {k: build(v) for k, v in spec.items() if k != "_target_"}
    if "_target_" not in spec:
        return kwargs
    return _resolve(spec["_target_"])(**kwargs)


def accepted_arguments(spec: dict) -> frozenset[str]:
    """The keyword arguments the spec's target accepts (its constructor's signature)."""
    params = inspect.signature(_resolve(spec.get("_target_"))).parameters.values()
    return frozenset(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
