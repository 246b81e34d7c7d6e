"""The reward contract of sequence design (DRAKES, SVDD, SMC, classifier guidance, best-of-N).

A reward reads a sequence as probabilities over the *model's* vocabulary, ``probs`` (B, L, V) with
V = model.vocab_size (letters first: ids 0..K-1 are the alphabet, the special tokens after them,
see ``dlm.data.tokenizers.bio``), and returns one value per row (B,), higher is better. Hard
sequences are exact one-hots; DRAKES feeds straight-through one-hots and classifier guidance soft
probabilities, so a ``differentiable`` reward must give finite gradients w.r.t. ``probs``.

Everything a design method or a compatibility check reads is declared here (no sniffing):
  alphabet        the letters the reward reads, in id order ("ACGT", the 20 amino acids);
  length          the sequence length it scores, or None when any length is scored;
  differentiable  gradients w.r.t. probs are meaningful (DRAKES and classifier guidance need it;
                  a lookup table or a hit count serves only derivative-free methods).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from dlm.errors import ConfigError


@runtime_checkable
class RewardModel(Protocol):
    alphabet: str
    length: int | None
    differentiable: bool

    def __call__(self, probs: Tensor) -> Tensor: ...  # (B, L, V) -> (B,)


def letter_probs(probs: Tensor, alphabet: str) -> Tensor:
    """The alphabet's columns of a (B, L, V) model-vocabulary input -> (B, L, K).

    Mass on special tokens (a mask left in an unfinished canvas) is dropped, not renormalised:
    a reward of a partial sequence sees less evidence, never invented letters."""
    k = len(alphabet)
    if probs.dim() != 3 or probs.shape[-1] < k:
        raise ConfigError(f"a reward over {alphabet!r} needs (B, L, V >= {k}) probabilities, got "
                          f"{tuple(probs.shape)}")
    return probs[..., :k]


def check_reward_fits(reward: RewardModel, *, alphabet: str, length: int, needs_gradient: bool,
                      method: str) -> None:
    """Refuses, before any compute, a reward whose alphabet or length differs from the model's, or a
    non-differentiable reward for a gradient method, naming what differs and the methods it can serve."""
    if reward.alphabet != alphabet:
        raise ConfigError(f"the reward reads the alphabet {reward.alphabet!r} but the model writes {alphabet!r}; "
                          "use a reward trained on the model's alphabet")
    if reward.length is not None and reward.length != length:
        raise ConfigError(f"the reward scores sequences of length {reward.length} but the job designs length "
                          f"{length}; set length={reward.length}")
    if needs_gradient and not reward.differentiable:
        raise ConfigError(f"method={method} needs a differentiable reward and this one is not "
                          "(it can serve method=base|svdd|smc|best_of_n)")
