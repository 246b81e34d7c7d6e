"""Guidance classifiers as model directories (family ``CLASSIFIER``): export and the sampler-side loader.

``load_classifier`` is the Hydra target of ``conf/sampler/block_guided.yaml``
(``sampler.guidance.classifier.path=<dir>``); ``dlm-train objective=noisy_classifier`` writes such a
directory too (its exported model directory has kind "classifier").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlm.errors import CheckpointError
from dlm.io.model_dir import load_model_dir, save_model_dir
from dlm.io.record import Family


def save_classifier(path: str | Path, *, classifier: nn.Module, model_spec: dict, tokenizer: Any,
                    config_yaml: str | None = None) -> Path:
    """Export a classifier as a model directory of family ``CLASSIFIER``.

    ``model_spec``: the ``{"_target_": "dlm.models.classifier.SequenceClassifier", **kwargs}`` that rebuilds it.
    """
    return save_model_dir(path, model=classifier, model_spec=model_spec, tokenizer=tokenizer,
                          family=Family.CLASSIFIER, config_yaml=config_yaml)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The classifier (eval mode) of a directory written by ``save_classifier`` or a classifier run."""
    loaded = load_model_dir(path, device=device)
    if loaded.family is not Family.CLASSIFIER:
        raise CheckpointError(f"{path} holds a {loaded.family.kind!r} model, not a classifier; point "
                              "sampler.guidance.classifier.path at a directory written by save_classifier "
                              "(or dlm-train objective=noisy_classifier)")
    return loaded.model
