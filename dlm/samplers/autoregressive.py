"""Left-to-right sampler for AR baselines (causal models), same SampleOutput contract."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from dlm.samplers.canvas import check_length, model_device
from dlm.samplers.categorical import Precision, filter_logits, gumbel_argmax
from dlm.samplers.decodable import check_decodable
from dlm.types import Denoiser, SampleOutput


class AutoregressiveSampler:
    """Next-token sampling; ``prompt`` (B, P) or (P,) is required to start (e.g. a BOS id).

    The full prefix is recomputed each step (nfe = length - P); exact but O(L^2) calls' worth of
    attention, fine for baselines and tests.
    """

    decodes = frozenset({"causal"})
    extends_context = False  # canvases up to the model's max_seq_len

    def __init__(self, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 sampling_precision: Precision = "float64") -> None:
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.sampling_precision = sampling_precision

    def check_model(self, model: Denoiser) -> None:
        check_decodable(self, model, decodes=self.decodes)

    @torch.no_grad()
    def __call__(self, model: Denoiser, *, batch_size: int, length: int, prompt: Tensor | None = None,
                 generator: torch.Generator | None = None) -> SampleOutput:
        self.check_model(model)
        if prompt is None or prompt.numel() == 0:
            raise ValueError("the autoregressive sampler needs a prompt of at least one token (e.g. BOS)")
        check_length(length, max_seq_len=model.max_seq_len)
        start = time.perf_counter()
        device = model_device(model)
        x = (prompt.expand(batch_size, -1) if prompt.dim() == 1 else prompt).to(device)
        nfe = 0
        while x.shape[1] < length:
            logits = model(x, None)[:, -1].float()
            logits[:, model.mask_id] = float("-inf")
            logits = filter_logits(logits, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
            x = torch.cat([x, gumbel_argmax(logits, generator=generator, sampling_precision=self.sampling_precision)[:, None]], 1)
            nfe += 1
        return SampleOutput(tokens=x, nfe=nfe, seconds=time.perf_counter() - start)
