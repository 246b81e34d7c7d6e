"""Root-mean-square layer norm (Zhang & Sennrich 2019), Llama / Qwen convention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2, -1) + eps), over the last dimension.

    The statistics are computed in float32 and the normalised value is cast back to the input
    dtype *before* the weight multiply, exactly as HF ``LlamaRMSNorm`` does, so converted
    checkpoints reproduce HF outputs bit for bit. Why float32: the mean of squares overflows /
    loses precision in fp16 / bf16.

    x: (..., dim) -> (..., dim)
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # one fused kernel, the same maths as below (nothing to upcast)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
