"""Sequence classifier p_φ(y | x_t) on partially masked (or soft one-hot) inputs, for classifier guidance.

    h = Transformer_body(x_t)              (B, L, dim)   bidirectional, final RMSNorm, no LM head
    pooled = Σ_ℓ m_ℓ h_ℓ / Σ_ℓ m_ℓ          (B, dim)      mean over real (non-pad) positions
    logits = W pooled + b                  (B, C)        C = n_classes

The input is token ids (B, L) or probabilities (B, L, V) (``probs @ E`` in the body), so the
first-order guidance of ``dlm.samplers.guidance`` can differentiate log p_φ(y | z) w.r.t. the one-hot
z. It is time-free: the mask tokens in x_t tell it how noisy the input is (as RADD's denoiser), which
lets a guided sampler call it without a diffusion time. Train it with
``dlm.objectives.classifier.NoisyClassifierLoss``; export / load with ``dlm.io.classifier_dir``
(``save_classifier`` / ``load_classifier``: a model directory of family ``CLASSIFIER``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dlm.errors import ConfigError
from dlm.models.transformer import Transformer
from dlm.nn.attention import AttentionBackend, padding_mask_to_attn_mask


class SequenceClassifier(nn.Module):
    """tokens (B, L) long or probs (B, L, V) float -> class logits (B, n_classes).

    ``vocab_size`` / ``mask_id`` must be the denoiser's (the classifier reads the sampler's canvas).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        mask_id: int,
        n_classes: int,
        dim: int,
        n_layers: int,
        n_heads: int,
        max_seq_len: int = 1024,
        ffn_dim: int | None = None,
        dropout: float = 0.0,
        attn_backend: AttentionBackend = "auto",
    ) -> None:
        super().__init__()
        if n_classes < 2:
            raise ConfigError(f"classifier n_classes={n_classes} must be >= 2")
        self.vocab_size, self.mask_id, self.n_classes = vocab_size, mask_id, n_classes
        self.max_seq_len, self.dim = max_seq_len, dim
        self.body = Transformer(vocab_size=vocab_size, mask_id=mask_id, dim=dim, n_layers=n_layers, n_heads=n_heads,
                                ffn_dim=ffn_dim, max_seq_len=max_seq_len, attention="bidirectional",
                                dropout=dropout, attn_backend=attn_backend)
        # The body's V-wide LM head is never used (we read hidden states): dropping it saves V x dim
        # parameters and avoids DDP's "parameters that did not receive gradients" error.
        self.body.lm_head = nn.Identity()
        self.head = nn.Linear(dim, n_classes)
        nn.init.zeros_(self.head.weight)  # uniform p(y | x) at init: guidance starts as a no-op
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens_or_probs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Class logits (B, C). attention_mask: (B, L) 1 = token, 0 = pad (excluded from attention and pool)."""
        attn_mask = None if attention_mask is None else padding_mask_to_attn_mask(attention_mask)
        h = self.body(tokens_or_probs, attn_mask=attn_mask, return_hidden=True)  # (B, L, dim)
        if attention_mask is None:
            pooled = h.mean(1)
        else:
            m = attention_mask.to(h.dtype)[..., None]
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(pooled)

    def log_prob(self, tokens_or_probs: Tensor) -> Tensor:
        """log p_φ(y | x) for every class, (B, C) float32 — the quantity guidance tilts by."""
        return F.log_softmax(self(tokens_or_probs).float(), dim=-1)
