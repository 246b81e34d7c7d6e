"""The step every masked-diffusion sampler shares: p_theta(x0 | x_t) where it is needed, and the commit.

A sampler is a loop (over a time grid, hitting times or confidence rounds) that decides *which*
masked positions are revealed; the step does the rest:

    logits(model, x, t, rows=, at=)   one network call on the rows ``rows`` (B,) bool of the canvas x
                                      (B, L), logits (R, K, V) at the positions ``at`` (R, K) only, or
                                      (R, L, V) everywhere; ``logit_scale`` multiplies them (a per-step
                                      temperature c_n, LSD).
    x0_log_probs(model, x, t, rows=)  the x0 distribution (R, L, V) at every position, filtered and
                                      tempered as the sampler draws (whole-x0 proposals: EDLM, SVDD).
    commit(model, x, t, rows, at, valid, generator)
                                      draws x0 at the valid positions of ``at`` from p_theta(x0 | x_t)
                                      (``TokenSampling``: float64 Gumbel-max by default) and writes them
                                      into x in place; with a ``Trajectory`` it records the canvas and the
                                      log-probability of every committed token.

Nothing here runs under ``no_grad``: each sampler's ``__call__`` does, so a differentiable relaxed
rollout (DRAKES) reuses ``logits`` / ``x0_log_probs`` with gradients on.
Shapes: B batch, R rows evaluated, L length, K positions per row, V vocabulary (mask included).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dlm.samplers.categorical import TokenSampling
from dlm.samplers.row_generators import Generator, RowGenerators
from dlm.types import Denoiser


@dataclass
class Trajectory:
    """Per-step record of a rollout: the canvas (B, L) after each step and the log-probability (B, L)
    of each token committed at that step under the distribution it was drawn from (0 elsewhere)."""

    canvases: list[Tensor] = field(default_factory=list)
    log_probs: list[Tensor] = field(default_factory=list)

    def add(self, x: Tensor, log_probs: Tensor) -> None:
        self.canvases.append(x.clone())
        self.log_probs.append(log_probs)


class DenoiseStep:
    """p_theta(x0 | x_t) at chosen positions, and the commit of draws from it (see module docstring)."""

    def __init__(self, tokens: TokenSampling) -> None:
        self.tokens = tokens

    def logits(self, model: Denoiser, x: Tensor, t: Tensor | None, *, rows: Tensor | None = None,
               at: Tensor | None = None, logit_scale: float | Tensor | None = None) -> Tensor:
        """Logits of x[rows] (all rows when None) at ``at`` (R, K) -> (R, K, V), else (R, L, V).

        t (B,) is sliced alike and reaches the network only when it is time-conditioned.
        """
        if rows is not None:
            x = x[rows]
            t = t[rows] if t is not None else None
        t = t.float() if (t is not None and model.time_conditioned) else None
        out = model(x, t) if at is None else model(x, t, logits_at=at)
        return out if logit_scale is None else out * logit_scale

    def x0_log_probs(self, model: Denoiser, x: Tensor, t: Tensor | None, *, rows: Tensor | None = None,
                     logit_scale: float | Tensor | None = None) -> Tensor:
        """log p_theta(x0 | x_t) (R, L, V) at every position, as the sampler would draw it (mask column
        -inf, temperature / top-k / top-p applied); only masked positions are meaningful."""
        logits = self.logits(model, x, t, rows=rows, logit_scale=logit_scale)
        return self.tokens.log_probs(logits.flatten(0, 1), model.mask_id).view(logits.shape)

    def draw_rows(self, logits: Tensor, valid: Tensor, mask_id: int, generator: Generator, rows: Tensor) -> Tensor:
        """Draws at the ``valid`` (R, K) entries of logits (R, K, V), row-major -> (N,). With
        ``RowGenerators`` each evaluated row (``rows`` (B,) bool) draws from its own stream."""
        picked = logits[valid]
        if not isinstance(generator, RowGenerators):
            return self.tokens.draw(picked, mask_id, generator)
        chunks = picked.split(valid.sum(-1).tolist())
        return torch.cat([self.tokens.draw(c, mask_id, g) for c, g in zip(chunks, generator.select(rows).generators, strict=True)])

    def commit(self, model: Denoiser, x: Tensor, t: Tensor | None, rows: Tensor, at: Tensor, valid: Tensor,
               generator: Generator, *, logit_scale: float | Tensor | None = None,
               trajectory: Trajectory | None = None) -> None:
        """One network call on x[rows] at ``at`` (R, K); draw x0 at the ``valid`` (R, K) entries and write
        them into x (B, L) in place. Draws are made in row-major order of ``valid``."""
        logits = self.logits(model, x, t, rows=rows, at=at, logit_scale=logit_scale)
        picked = logits[valid]
        draws = self.draw_rows(logits, valid, model.mask_id, generator, rows)
        row_ids = rows.nonzero()[:, 0][:, None].expand_as(at)[valid]
        x[row_ids, at[valid]] = draws
        if trajectory is not None:
            log_p = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
            log_p[row_ids, at[valid]] = self.tokens.log_probs(picked, model.mask_id).gather(-1, draws[:, None])[:, 0]
            trajectory.add(x, log_p)
