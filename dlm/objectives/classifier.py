"""Noisy classifier loss: train p_φ(y | x_t) on absorbing-diffusion corruptions of labelled sequences.

    t ~ U[t_min, 1) per sequence,  x_t ~ q(x_t | x0) (each token masked w.p. 1 - α(t)),
    L(φ) = E_{x0, y, t, x_t} [ -log p_φ(y | x_t) ]

Classifier guidance (research note §4.4, Nisonoff et al.) evaluates p_φ(y | z_t) on the sampler's
partially masked canvas, so the classifier must have seen every mask ratio during training; a
classifier trained on clean text only is meaningless on z_t.
Batch keys: ``input_ids`` (B, L) long, ``labels`` (B,) long, optional ``attention_mask`` (B, L).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlm.diffusion.forward import TimeSampling, mask_tokens, sample_t
from dlm.io.record import Family
from dlm.types import LossOutput, NoiseSchedule


class NoisyClassifierLoss:
    """Objective(classifier, batch) -> LossOutput: mean cross-entropy of p_φ(y | x_t).

    ``schedule``: mask probability 1 - α(t); None = linear (mask probability t), which makes the mask
    ratio itself uniform on [t_min, 1). ``keep_first_token``: never mask position 0 (a BOS the sampler
    always shows the classifier). ``random_prefix``: score each row on a uniformly drawn prefix
    (length in [1, n], n = its real tokens), because the guided block sampler shows the classifier
    only [prompt ; committed blocks ; current block], never the full sequence.
    ``num_tokens`` in the output counts labelled sequences.
    """

    family = Family.CLASSIFIER  # what it trains: read by the runner, written to the exported model.json
    shift_logits = False

    def __init__(self, *, schedule: NoiseSchedule | None = None, t_min: float = 0.0,
                 t_sampling: TimeSampling = "antithetic", keep_first_token: bool = False,
                 random_prefix: bool = False) -> None:
        if not 0.0 <= t_min < 1.0:
            raise ValueError(f"objective.t_min={t_min} must be in [0, 1)")
        self.schedule, self.t_min, self.t_sampling = schedule, t_min, t_sampling
        self.keep_first_token, self.random_prefix = keep_first_token, random_prefix

    @staticmethod
    def prefix_mask(attention_mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, L) mask keeping a uniform prefix of each row's real tokens: length ~ U{1, ..., n_b}."""
        n = attention_mask.sum(-1).clamp(min=1)  # (B,)
        u = torch.rand(n.shape, device=n.device, generator=generator)
        keep = (u * n).long() + 1  # in [1, n]
        pos = torch.arange(attention_mask.shape[1], device=n.device)
        return (pos[None, :] < keep[:, None]).to(attention_mask.dtype) * attention_mask

    def corrupt(self, model: nn.Module, x0: Tensor, attention_mask: Tensor | None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """x_t (B, L) and t (B,) for clean x0 (B, L); padding (and a kept BOS) is never masked."""
        t = sample_t(x0.shape[0], t_min=self.t_min, sampling=self.t_sampling, device=x0.device, generator=generator)
        mask_prob = t if self.schedule is None else 1.0 - self.schedule.alpha(t)
        eligible = torch.ones_like(x0, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if self.keep_first_token:
            eligible[:, 0] = False
        xt, _ = mask_tokens(x0, mask_prob, model.mask_id, eligible=eligible, generator=generator)
        return xt, t

    def __call__(self, model: nn.Module, batch: dict[str, Tensor],
                 generator: torch.Generator | None = None) -> LossOutput:
        x0, labels = batch["input_ids"], batch["labels"]
        attention_mask = batch.get("attention_mask")
        if self.random_prefix:
            full = attention_mask if attention_mask is not None else torch.ones_like(x0)
            attention_mask = self.prefix_mask(full, generator)
        xt, _ = self.corrupt(model, x0, attention_mask, generator)
        logits = model(xt, attention_mask=attention_mask) if attention_mask is not None else model(xt)
        nll = F.cross_entropy(logits.float(), labels, reduction="none")  # (B,)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        n = torch.tensor(labels.numel(), device=labels.device)
        return LossOutput(loss=nll.mean(), nll_sum=nll.sum().detach(), num_tokens=n,
                          metrics={"accuracy": accuracy.detach()})
