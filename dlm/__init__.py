"""dlm: training and sampling of masked (absorbing) discrete diffusion language models."""

from __future__ import annotations

__version__ = "0.1.0"


def load(path, revision=None, **overrides):
    """Load an exported model directory: returns a ``dlm.io.model_dir.LoadedModel`` (model in eval mode,
    tokenizer, schedule, typed ``record``, ``meta``).

    ``path`` may be a Hugging Face Hub repo id, ``"org/name"`` or ``"org/name@<revision>"`` (or
    ``revision=`` a branch, tag or commit): its snapshot is fetched into the HF cache (or read from it
    offline) and loaded the same way; an existing local directory of that name always wins
    (``dlm.io.hub.resolve_model_path``).

    ``overrides`` are the settings that are safe after training (``dlm.io.overrides``): ``rope_scaling``
    ("none", "ntk:<factor>", "ntk_auto:<target_len>" or a ``dlm.nn.rope`` value), ``max_seq_len``,
    ``attn_backend``, ``dtype``, ``device``; they are recorded in ``record.overrides`` and
    ``meta["overrides"]``. Any other name is refused with the list of valid ones. Imported lazily so
    ``import dlm`` stays cheap and free of torch-side effects.
    """
    from dlm.io.model_dir import load_model_dir
    from dlm.io.overrides import check_override_names

    check_override_names(overrides)
    return load_model_dir(path, revision=revision, **overrides)
