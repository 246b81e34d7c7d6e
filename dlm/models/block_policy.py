"""Block-size policy π(a | s) for dynamic block lengths (CtrlDiff-style; research note §4.3, a proposal).

    s = [h̄ ; ē]  (dim + 1)     h̄: hidden state of the committed context, ē: mean predictive entropy
                                of a one-step probe of the next masks (both averaged over the batch)
    π(· | s) = softmax(MLP(s))  over the candidate block sizes ``sizes``

One size per call for the whole batch: the block sampler keeps every row on the same block
boundaries (one KV-cache layout, one attention mask), so the state is the batch mean of the
per-row features (``state``). ``train()`` mode samples the action (REINFORCE exploration),
``eval()`` mode takes the argmax. Train it with ``dlm.objectives.block_policy.BlockPolicyTrainer``; save /
load it with ``dlm.io.block_policy_dir``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlm.errors import ConfigError


class BlockSizePolicy(nn.Module):
    """MLP over [hidden (dim) ; probe_entropy (1)] -> logits over ``sizes`` (K candidate block sizes).

    The output layer starts at zero, so the untrained policy is uniform over ``sizes``.
    """

    def __init__(self, *, sizes: Sequence[int], dim: int, hidden_dim: int = 64) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if not sizes or any(s < 1 for s in sizes) or len(set(sizes)) != len(sizes):
            raise ConfigError(f"block_size_policy.sizes={sizes} must be distinct positive block sizes")
        self.sizes, self.dim, self.hidden_dim = sizes, dim, hidden_dim
        # entropy is O(log V) while RMS-normed hiddens are O(1): a LayerNorm puts them on one scale
        self.norm = nn.LayerNorm(dim + 1)
        self.mlp = nn.Sequential(nn.Linear(dim + 1, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, len(sizes)))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def state(self, hidden: Tensor, probe_entropy: Tensor) -> Tensor:
        """Batch-pooled state s = [mean_b hidden ; mean_b entropy]: hidden (B, dim), entropy (B,) -> (dim + 1,)."""
        if hidden.shape[-1] != self.dim:
            raise ConfigError(f"block_size_policy.dim={self.dim} but the sampler's hidden states have "
                              f"{hidden.shape[-1]} features; set dim to the denoiser's model.dim")
        return torch.cat([hidden.float().mean(0), probe_entropy.float().reshape(-1).mean(0, keepdim=True)])

    def forward(self, features: Tensor) -> Tensor:
        """Logits (N, K) for states (N, dim + 1)."""
        return self.mlp(self.norm(features))

    def log_prob(self, features: Tensor, actions: Tensor) -> Tensor:
        """log π(a | s): features (N, dim + 1), actions (N,) long indices into ``sizes`` -> (N,)."""
        return F.log_softmax(self(features).float(), dim=-1).gather(-1, actions[:, None]).squeeze(-1)

    def action_index(self, block_sizes: Sequence[int]) -> Tensor:
        """Indices into ``sizes`` of recorded block sizes (N,) long; a size outside ``sizes`` raises."""
        try:
            return torch.tensor([self.sizes.index(int(s)) for s in block_sizes], dtype=torch.long)
        except ValueError as e:
            raise ConfigError(f"recorded block sizes {list(block_sizes)} are not all in the policy's sizes "
                              f"{self.sizes}: the sampler must record the size the policy chose "
                              "(before clipping the last block to the remaining length)") from e

    @torch.no_grad()
    def next_block_size(self, hidden: Tensor, probe_entropy: Tensor, generator: torch.Generator | None = None) -> int:
        """Size of the next block for the batch: hidden (B, dim), probe_entropy (B,) -> int in ``sizes``.

        Samples from π in train mode (``generator`` makes it reproducible), argmax in eval mode.
        """
        logits = self(self.state(hidden, probe_entropy).to(self.mlp[0].weight.device)[None])[0].float()
        if not self.training:
            return self.sizes[int(logits.argmax())]
        probs = logits.softmax(-1)
        if generator is not None and generator.device != probs.device:
            probs = probs.to(generator.device)
        return self.sizes[int(torch.multinomial(probs, 1, generator=generator))]


class FixedBlockSize:
    """The constant policy: every block has ``size`` tokens. The baseline a learned policy must beat
    (same sampler, same NFE accounting, so only the block sizes differ)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ConfigError(f"block size {size} must be >= 1")
        self.size = int(size)

    def next_block_size(self, hidden: Tensor, probe_entropy: Tensor, generator: torch.Generator | None = None) -> int:
        return self.size
