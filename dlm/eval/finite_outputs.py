"""Stop a job whose model outputs NaN or inf, without a GPU synchronisation inside the sampling loop.

A sampler's loop belongs to the sampler and must not synchronise per step (DESIGN §8), yet a NaN
logit silently becomes a garbage token (argmax / Gumbel-max of NaN) and an empty decoded text.
``FiniteOutputs`` watches the model's forward outputs through a hook that only accumulates a
device-side flag; the caller reads the flag once per batch, after the sampler returns.
"""

from __future__ import annotations

from types import TracebackType

import torch
from torch import Tensor, nn

from dlm.errors import NonFiniteError


class FiniteOutputs:
    """Context manager: ``with FiniteOutputs(model) as watch: ...; watch.check(where)``.

    Every forward output of ``model`` (logits (B, L, V), (B, K, V) or hidden states) is reduced to
    one boolean "held a NaN/inf" on its own device and ORed into a flag; ``check`` reads the flag
    (one synchronisation) and raises ``NonFiniteError`` naming ``where``, then resets it.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._bad: Tensor | None = None
        self._calls = 0
        self._handle = None

    def _hook(self, module: nn.Module, args: tuple, output: object) -> None:
        if isinstance(output, Tensor) and output.is_floating_point():
            bad = ~torch.isfinite(output).all()
            self._bad = bad if self._bad is None else self._bad | bad
            self._calls += 1

    def __enter__(self) -> FiniteOutputs:
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def check(self, where: str) -> None:
        """Raise if any output since the last check held NaN/inf (``where``: e.g. "batch 3 of dlm-sample")."""
        bad, calls = self._bad, self._calls
        self._bad, self._calls = None, 0
        if bad is not None and bool(bad):
            raise NonFiniteError(f"{where}: the model's logits hold NaN/inf (in at least one of its {calls} network "
                                 "calls: corrupt weights or an overflow in low precision), so the tokens drawn from "
                                 "them are meaningless; stopped, nothing was written")
