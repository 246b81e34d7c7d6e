"""Backbones (``nn.Module``) implementing the ``Denoiser`` protocol: token ids or soft one-hot
probabilities (B, L, V) in, logits (B, L, V) out."""
