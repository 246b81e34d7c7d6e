"""dlm: training and sampling of masked (absorbing) discrete diffusion language models."""

from __future__ import annotations

__version__ = "0.1.0"


def load(path, *, device: str = "cpu"):
    """Load an exported model directory: returns a ``dlm.checkpoint.LoadedModel``.

    Imported lazily so ``import dlm`` stays cheap and free of torch-side effects.
    """
    from dlm.checkpoint import load_model_dir

    return load_model_dir(path, device=device)
