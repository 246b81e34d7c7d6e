"""Classifier guidance for absorbing diffusion, restricted to the current block (CtrlDiff-style control).

Guided law (research note §4.4; Nisonoff et al., discrete-diffusion-guidance ``_cbg_denoise``): for every
masked position ℓ of the block and every candidate token v,

    log p_γ(x^ℓ = v | z) = log p_θ(x^ℓ = v | z) + γ · log p_φ(y | z^{ℓ←v}) − log Z_ℓ        (G1)

where z = [committed context ; current block] (masks at undecided positions) and z^{ℓ←v} is z with
position ℓ set to v. Already unmasked positions are returned unchanged. Two ways to get the tilt:

* ``exact``: evaluate the classifier on every single-token substitution of the block's masked
  positions (≤ Lb·V sequences, only candidates with finite log p_θ), in chunks of ``chunk_size``.
* ``first_order``: one forward + backward of log p_φ(y | onehot(z)) w.r.t. the one-hot input g = ∇_z,
  log p_φ(y | z^{ℓ←v}) ≈ log p_φ(y | z) + g[ℓ, v] − g[ℓ, z^ℓ]                              (G2)
  (exact when log p_φ(y | z) is linear in the one-hot).
Both tilts are functions of any score (``substitution_tilt``, ``gradient_tilt``): reward guidance of the
unblocked sampler (``dlm.samplers.reward_guidance``) uses them with score = r / α.

Only the Lb block positions are candidates and the classifier sees only the prefix and the block, so
both costs shrink with the block (the plausible source of CtrlDiff's "reduced overhead"). Since (G1)
renormalises per position, any additive constant in log p_φ(y | ·) cancels: a classifier may return
unnormalised class scores.

The classifier protocol: ``classifier.log_prob(tokens_or_probs) -> (B, C)`` log p_φ(· | x) for token ids
(B, S) long or one-hot (B, S, V) float, plus ``vocab_size`` (and optionally ``max_seq_len``); see
``dlm.models.classifier.SequenceClassifier``. It must be in eval mode (``load_classifier`` does that).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.errors import ConfigError
from dlm.samplers.canvas import model_device

GuidanceMode = Literal["exact", "first_order"]


class GuidanceClassifier(Protocol):
    """An ``nn.Module`` with ``log_prob(tokens_or_probs) -> (B, C)``; ``max_seq_len`` None = unbounded."""

    vocab_size: int
    n_classes: int
    max_seq_len: int | None

    def log_prob(self, tokens_or_probs: Tensor) -> Tensor: ...  # (B, C)


class ClassifierGuidance:
    """guidance(log_probs (B, Lb, V), tokens (B, P+Lb), block_start, mask_id) -> guided log-probs (B, Lb, V).

    ``target_class``: y. ``gamma``: guidance strength γ ≥ 0 (0 = unguided; returns the input object).
    ``chunk_size``: classifier rows per forward in ``exact`` mode (bounds memory at large V).
    """

    def __init__(self, *, classifier: GuidanceClassifier, target_class: int, gamma: float = 1.0,
                 mode: GuidanceMode = "first_order", chunk_size: int = 1024) -> None:
        if mode not in ("exact", "first_order"):
            raise ConfigError(f"sampler.guidance.mode={mode!r}; valid: 'exact', 'first_order'")
        if gamma < 0:
            raise ConfigError(f"sampler.guidance.gamma={gamma} must be >= 0 (0 disables guidance)")
        n_classes = classifier.n_classes
        if not 0 <= target_class < n_classes:
            raise ConfigError(f"sampler.guidance.target_class={target_class} is not a class of this classifier "
                              f"(n_classes={n_classes}); choose one in [0, {n_classes})")
        if chunk_size < 1:
            raise ConfigError(f"sampler.guidance.chunk_size={chunk_size} must be >= 1")
        self.classifier, self.target_class, self.gamma = classifier, target_class, float(gamma)
        self.mode, self.chunk_size = mode, chunk_size

    def __call__(self, log_probs: Tensor, tokens: Tensor, block_start: int, mask_id: int) -> Tensor:
        if self.gamma == 0.0:
            return log_probs  # bitwise the unguided law: no classifier call at all
        V = log_probs.shape[-1]
        if V != self.classifier.vocab_size:
            raise ConfigError(f"the classifier has vocab_size={self.classifier.vocab_size} but the denoiser "
                              f"{V}; train the classifier with the denoiser's tokenizer")
        tokens, block_start = self._crop(tokens, block_start)
        self._place(tokens.device)
        block = tokens[:, block_start:]  # (B, Lb)
        masked = block == mask_id
        tilt = self._exact(log_probs, tokens, block_start, masked) if self.mode == "exact" \
            else self._first_order(tokens, block_start)
        guided = F.log_softmax(log_probs.float() + self.gamma * tilt, dim=-1)  # (G1), renormalised per position
        return torch.where(masked[..., None], guided, log_probs.float())

    def _crop(self, tokens: Tensor, block_start: int) -> tuple[Tensor, int]:
        """Keep the last ``max_seq_len`` tokens: the classifier's context is the nearest prefix + the block."""
        max_len = self.classifier.max_seq_len
        if max_len is None or tokens.shape[1] <= max_len:
            return tokens, block_start
        if tokens.shape[1] - block_start > max_len:
            raise ConfigError(f"block of {tokens.shape[1] - block_start} tokens exceeds the classifier's "
                              f"max_seq_len={max_len}; use smaller blocks or a longer-context classifier")
        cut = tokens.shape[1] - max_len
        return tokens[:, cut:], block_start - cut

    def _place(self, device: torch.device) -> None:
        # the sampler owns the device; follow it once rather than failing on the first call
        if model_device(self.classifier) != device:
            self.classifier.to(device)

    def _log_py(self, x: Tensor) -> Tensor:
        return self.classifier.log_prob(x)[:, self.target_class].float()  # (N,)

    def _exact(self, log_probs: Tensor, tokens: Tensor, block_start: int, masked: Tensor) -> Tensor:
        """tilt[b, ℓ, v] = log p_φ(y | z^{ℓ←v}) for masked ℓ and finite log p_θ(v); 0 elsewhere. (B, Lb, V)."""
        return substitution_tilt(self._log_py, log_probs, tokens, block_positions(tokens, block_start), masked,
                                 chunk_size=self.chunk_size)

    def _first_order(self, tokens: Tensor, block_start: int) -> Tensor:
        """tilt[b, ℓ, v] = g[ℓ, v] − g[ℓ, z^ℓ] with g = ∇_onehot log p_φ(y | z), (G2). (B, Lb, V)."""
        return gradient_tilt(self._log_py, tokens, block_positions(tokens, block_start), self.classifier.vocab_size)


def block_positions(tokens: Tensor, block_start: int) -> Tensor:
    """The block's positions block_start .. S - 1 of every row: tokens (B, S) -> (B, Lb) long."""
    return torch.arange(block_start, tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)


@torch.no_grad()
def substitution_tilt(score: Callable[[Tensor], Tensor], log_probs: Tensor, tokens: Tensor, at: Tensor,
                      valid: Tensor, *, chunk_size: int) -> Tensor:
    """The exact tilt (G1) of any score: tilt[r, k, v] = score(z^{at[r,k]←v}) for ``valid`` (R, K) entries and
    tokens v of finite log_probs (R, K, V); 0 elsewhere. z = tokens (R, S); score: ids (m, S) -> (m,).
    Candidates are scored ``chunk_size`` sequences per call. -> (R, K, V) float32."""
    tilt = torch.zeros(log_probs.shape, dtype=torch.float32, device=log_probs.device)
    # candidates: (row, position slot, token) with the slot valid and the token possible
    cand = (valid[..., None] & torch.isfinite(log_probs)).nonzero()  # (M, 3)
    for chunk in cand.split(chunk_size):
        r, k, v = chunk.unbind(-1)
        x = tokens[r].clone()  # (m, S)
        x[torch.arange(x.shape[0], device=x.device), at[r, k]] = v
        tilt[r, k, v] = score(x).float()
    return tilt


def gradient_tilt(score: Callable[[Tensor], Tensor], tokens: Tensor, at: Tensor, vocab_size: int) -> Tensor:
    """The first-order tilt (G2) of any score differentiable in the one-hot: with g = ∇_z score(onehot(z)),
    tilt[r, k, v] = g[at[r,k], v] − g[at[r,k], z_{at[r,k]}]. tokens (R, S), at (R, K) -> (R, K, V) float32."""
    with torch.enable_grad():  # samplers run under no_grad; we need exactly one input gradient
        z = F.one_hot(tokens, vocab_size).float().requires_grad_(True)  # (R, S, V)
        # rows are independent, so the gradient of the sum gives each row's own gradient
        (g,) = torch.autograd.grad(score(z).sum(), z)
    g = g.float().gather(1, at[..., None].expand(-1, -1, vocab_size))  # (R, K, V)
    return g - g.gather(-1, tokens.gather(1, at)[..., None])
