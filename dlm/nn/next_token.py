"""Next-token negative log-likelihood of a causal model, normalised as the model defines its distribution.

Shared by the AR objective, exact perplexity, lm-eval scoring, AR judges and rewards, and EDLM's AR
energy, so an AR model is scored one way everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.types import ArSoftmax


def next_token_nll(logits: Tensor, x0: Tensor, mask_id: int, softmax: ArSoftmax = "without_mask") -> Tensor:
    """-log p(x_{i+1} | x_{<=i}) for i = 0..L-2; logits (B, L, V), x0 (B, L) -> (B, L-1) float32.

    ``softmax`` says over which rows p is normalised (``dlm.io.record.ArSoftmax``): "without_mask"
    removes the mask column first, as dlm's AR objective trains (an AR model never emits the mask
    token, and keeping it would make the likelihood depend on a logit that gets no gradient);
    "full" keeps every row, as a HF causal LM defines its distribution (``transformers`` scores it so).
    Score a model with the normalisation it was trained with (its model directory's ``ar_softmax``).
    """
    logits = logits[:, :-1].float()  # float32: bf16 logits lose ~2 digits of the NLL
    if softmax == "without_mask":
        logits = logits.index_fill(-1, torch.tensor([mask_id], device=logits.device), float("-inf"))
    return F.cross_entropy(logits.transpose(1, 2), x0[:, 1:], reduction="none")
