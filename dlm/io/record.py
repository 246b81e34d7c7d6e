"""What a model directory *is*, as a typed record read once at load (``ModelRecord``).

``Family`` says how the weights are used: an autoregressive model (causal attention, exact
perplexity), a masked-diffusion model (bidirectional, NELBO bound), a block-diffusion model
(block-causal, per-block NELBO bound), or one of the auxiliary networks a sampler loads (a
guidance classifier, a block-size policy). Code decides by the family (or the model's declared
attributes), never by comparing strings; ``model.json`` keeps the readable ``kind`` string, which
is how a family is spelled on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, get_args

from dlm.errors import CheckpointError
from dlm.types import ArSoftmax, Attention

AR_SOFTMAX: tuple[str, ...] = get_args(ArSoftmax)  # ArSoftmax: dlm.types (what each value means)


class Family(Enum):
    """(kind as written in model.json, the attention of a denoiser of this family or None)."""

    AR = ("ar", "causal")
    MASKED = ("diffusion", "bidirectional")
    BLOCK = ("block", "block_causal")
    CLASSIFIER = ("classifier", None)
    BLOCK_POLICY = ("block_policy", None)
    ENERGY = ("energy", None)  # an EDLM residual energy (dlm.models.energy.NCEEnergy)

    def __init__(self, kind: str, attention: Attention | None) -> None:
        self.kind = kind
        self.attention = attention

    @property
    def is_denoiser(self) -> bool:
        """A model that generates tokens (AR, masked or block diffusion), not an auxiliary network."""
        return self.attention is not None

    @property
    def needs_prompt(self) -> bool:
        """An AR model cannot start from nothing: its first prediction conditions on a given token."""
        return self.attention == "causal"

    @classmethod
    def from_kind(cls, kind: Any, *, where: str = "model.json") -> Family:
        """The family spelled ``kind`` on disk; an unknown kind names the valid ones."""
        by_kind = {family.kind: family for family in cls}
        if kind in by_kind:
            return by_kind[kind]
        raise CheckpointError(f"{where} has kind={kind!r}; valid kinds: {', '.join(f.kind for f in cls)}")

    @classmethod
    def of_attention(cls, attention: Attention) -> Family:
        """The denoiser family whose models have ``attention``."""
        by_attention = {family.attention: family for family in cls if family.is_denoiser}
        if attention in by_attention:
            return by_attention[attention]
        raise ValueError(f"attention={attention!r}; valid: causal, bidirectional, block_causal")


@dataclass(frozen=True)
class ModelRecord:
    """A model directory's ``model.json``, migrated to the current layout and typed.

    family          what the weights are (see ``Family``);
    model_spec      the ``{"_target_": ..., **kwargs}`` the model was built from (load overrides applied);
    schedule_spec   the noise schedule it was trained with (None: AR, classifier, policy);
    seq_len         row length of the training data in tokens (None when unknown, e.g. converted models);
    keep_first_token  position 0 was conditioned on, never scored (perplexity scores the same tokens);
    step            optimizer steps of the exported weights (None: not trained by dlm-train);
    ar_softmax      AR models: how the next-token softmax is normalised (``ArSoftmax``); None otherwise;
    overrides       load-time overrides applied (JSON-able; {} when none), see ``dlm.io.overrides``;
    migrations      what migration on read changed (empty for a directory in the current layout).
    """

    family: Family
    model_spec: dict
    schedule_spec: dict | None = None
    seq_len: int | None = None
    keep_first_token: bool = False
    step: int | None = None
    ar_softmax: ArSoftmax | None = None
    overrides: dict = field(default_factory=dict)
    migrations: tuple[str, ...] = ()

    @classmethod
    def from_meta(cls, meta: dict, *, where: str = "model.json", overrides: dict | None = None,
                  migrations: tuple[str, ...] = ()) -> ModelRecord:
        """Read a (migrated) model.json dict; a missing or wrong-typed field names the file."""
        if not isinstance(meta.get("model"), dict):
            raise CheckpointError(f"{where} has no model spec ('model': {{'_target_': ...}})")
        seq_len, step = meta.get("seq_len"), meta.get("step")
        family = Family.from_kind(meta.get("kind"), where=where)
        return cls(family=family, model_spec=dict(meta["model"]),
                   schedule_spec=meta.get("schedule") or None,
                   seq_len=None if seq_len is None else int(seq_len),
                   keep_first_token=bool(meta.get("keep_first_token", False)),
                   step=None if step is None else int(step),
                   ar_softmax=checked_ar_softmax(family, meta.get("ar_softmax"), where=where),
                   overrides=dict(overrides or {}),
                   migrations=tuple(migrations))


def checked_ar_softmax(family: Family, value: Any, *, where: str) -> ArSoftmax | None:
    """``value`` as the ``ar_softmax`` of a model of ``family``: one of ``AR_SOFTMAX`` for an AR model (it
    decides how its exact perplexity is normalised), None for every other family."""
    if family is not Family.AR:
        if value is not None:
            raise CheckpointError(f"{where} has ar_softmax={value!r} but kind={family.kind!r}; ar_softmax describes "
                                  "autoregressive models only (kind 'ar'): remove it")
        return None
    if value not in AR_SOFTMAX:
        raise CheckpointError(f"{where} has ar_softmax={value!r}; an AR model needs one of "
                              f"{', '.join(map(repr, AR_SOFTMAX))} (how its next-token softmax is normalised)")
    return value
