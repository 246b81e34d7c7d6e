"""Any-order decoding: commit masked positions by a confidence order (MaskGIT / LLaDA style).

Each step evaluates the network on rows that still have masks, draws a candidate token at every
masked position (``TokenSampling``; temperature 0 = greedy), scores each position and lets a
``RevealPolicy`` choose which candidates to commit. Committed tokens never change.
Scores (``order``): ``random`` (uniform: with one token per step this is random-order AO-ARM
decoding, the same law as the first-hitting sampler for a time-free network), ``max_prob``
(probability of the candidate), ``margin`` (top-1 minus top-2 probability), ``entropy``
(negative entropy of the position's distribution), ``fixed_random`` (a uniformly random order drawn
once per call: the same law as ``random``, and the positions each step commits are known before the
network call, which dKV-Cache's ``greedy`` variant needs).
``fill_after_eos``: once a row commits EOS at i, the masked positions after i become EOS (the
sequence has ended; no network calls are spent on padding).
``block_length`` (LLaDA's semi-autoregressive decoding): the canvas is cut into blocks of that many
positions, decoded left to right, ``num_steps`` split evenly among the blocks that hold masks; every
call still attends over the whole canvas (a full-canvas model; unlike the block samplers no block
mask is applied). ``cache``: a ``dlm.cache.dkv.DKVPolicy`` (dKV-Cache; its first step is a full pass,
per block when blocks are used).
"""

from __future__ import annotations

import time
from typing import Literal

import torch
from torch import Tensor

from dlm.cache.dkv import DKVCache, DKVPolicy
from dlm.samplers.canvas import fill_after_eos, init_canvas
from dlm.samplers.categorical import Precision, TokenSampling
from dlm.samplers.decodable import MASKED, check_decodable
from dlm.samplers.dkv_forward import dkv_logits
from dlm.samplers.reveal import StaticCount
from dlm.samplers.step import DenoiseStep, Trajectory
from dlm.types import Denoiser, SampleOutput

Order = Literal["random", "fixed_random", "max_prob", "margin", "entropy"]


def position_confidence(log_p: Tensor, candidate: Tensor, order: Order, generator=None) -> Tensor:
    """Confidence of each position from its log-probs (N, V) and candidate ids (N,) -> (N,)."""
    if order in ("random", "fixed_random"):  # fixed_random: the sampler replaces these by its per-call scores
        return torch.rand(candidate.shape, device=log_p.device, generator=generator)
    p = log_p.exp()
    if order == "max_prob":
        return p.gather(-1, candidate[:, None]).squeeze(-1)
    if order == "margin":
        top2 = p.topk(2, dim=-1).values
        return top2[:, 0] - top2[:, 1]
    if order == "entropy":
        return (p * log_p.clamp(min=-1e30)).nan_to_num().sum(-1)
    raise ValueError(f"sampler.order={order!r}; valid: random, fixed_random, max_prob, margin, entropy")


class ConfidenceSampler:
    """Sampler(model, batch_size=, length=, prompt=, generator=) -> SampleOutput.

    ``record_trajectory``: the canvas after every call and the log-probabilities of the committed
    tokens (``SampleOutput.trajectory``, ``info["step_log_probs"]``).
    """

    decodes = MASKED
    extends_context = False  # canvases up to the model's max_seq_len

    def __init__(self, *, num_steps: int = 64, order: Order = "max_prob", policy=None, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, sampling_precision: Precision = "float64",
                 fill_after_eos: bool = False, eos_id: int | None = None, record_trajectory: bool = False,
                 cache: DKVPolicy | None = None, block_length: int | None = None) -> None:
        if num_steps < 1:
            raise ValueError(f"sampler.num_steps={num_steps} must be >= 1")
        position_confidence(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), order)  # validates order
        if fill_after_eos and eos_id is None:
            raise ValueError("sampler.fill_after_eos=true needs sampler.eos_id (the tokenizer's EOS id)")
        self.num_steps, self.order = num_steps, order
        self.policy = policy or StaticCount()
        self.step = DenoiseStep(TokenSampling(temperature=temperature, top_k=top_k, top_p=top_p,
                                              sampling_precision=sampling_precision))
        self.fill_after_eos, self.eos_id, self.record_trajectory = fill_after_eos, eos_id, record_trajectory
        if cache is not None and cache.variant == "greedy" and order != "fixed_random":
            raise ValueError("sampler.cache.variant=greedy needs a decoding order fixed in advance: set "
                             f"sampler.order=fixed_random (got {order!r}), or use variant=decode / prefill")
        self.cache = cache
        if block_length is not None and block_length < 1:
            raise ValueError(f"sampler.block_length={block_length} must be >= 1 (null: the whole canvas at once)")
        self.block_length = block_length

    def check_model(self, model: Denoiser) -> None:
        check_decodable(self, model, decodes=self.decodes)

    @torch.no_grad()
    def __call__(self, model: Denoiser, *, batch_size: int, length: int, prompt: Tensor | None = None,
                 generator: torch.Generator | None = None) -> SampleOutput:
        self.check_model(model)
        start = time.perf_counter()
        x = init_canvas(model, batch_size=batch_size, length=length, prompt=prompt)
        row_nfe = torch.zeros(batch_size, dtype=torch.long, device=x.device)
        trajectory = Trajectory() if self.record_trajectory else None
        tokens = self.step.tokens
        generated = x == model.mask_id
        decoded = ~generated  # the prompt counts as decoded before step 0 (cached from the first pass)
        # fixed_random: one order per call, so each step's commits are known before its network call
        order_scores = torch.rand(x.shape, device=x.device, generator=generator) if self.order == "fixed_random" \
            else None
        nfe = 0
        for region, num_steps in self._phases(generated):
            dkv = DKVCache(length) if self.cache is not None else None  # a fresh cache per block (LLaDA)
            for step in range(num_steps):
                masked = x == model.mask_id
                rows = masked.any(-1)
                if not (masked & region).any():
                    break
                # a time-free network ignores t; a time-conditioned one sees the current mask ratio
                t = masked.float().mean(-1)
                upcoming = None
                if order_scores is not None:
                    upcoming = self.policy(order_scores.masked_fill(~(masked & region), float("-inf")),
                                           masked & region, step, num_steps)
                if dkv is None:
                    logits = self.step.logits(model, x, t, rows=rows)
                else:  # every row runs (the cache holds the whole batch); finished rows cost only padding
                    rows = torch.ones_like(rows)
                    queries = self.cache.queries(masked, ~masked & ~decoded, generated, upcoming)
                    logits, _ = dkv_logits(model, x, t, cache=dkv, policy=self.cache, step=step, queries=queries)
                    decoded = ~masked
                nfe += 1
                row_nfe[masked.any(-1)] += 1
                m = (masked & region)[rows]
                log_p = tokens.log_probs(logits[m], model.mask_id)
                candidate = tokens.draw(logits[m], model.mask_id, generator)
                if upcoming is None:
                    conf = torch.full(m.shape, float("-inf"), device=x.device)
                    conf[m] = position_confidence(log_p, candidate, self.order, generator).float()
                    commit = self.policy(conf, m, step, num_steps)
                else:
                    commit = upcoming[rows]
                proposal = torch.full_like(x[rows], model.mask_id)
                proposal[m] = candidate
                xr = x[rows]
                xr[commit] = proposal[commit]
                x[rows] = xr
                if trajectory is not None:
                    lp = torch.zeros(m.shape, device=x.device)
                    lp[m] = log_p.gather(-1, candidate[:, None])[:, 0]
                    step_lp = torch.zeros(x.shape, device=x.device)
                    step_lp[rows] = torch.where(commit, lp, torch.zeros_like(lp))
                    trajectory.add(x, step_lp)
                if self.fill_after_eos:
                    fill_after_eos(x, self.eos_id, model.mask_id)
        info = {"row_nfe": row_nfe}
        if trajectory is not None:
            info["step_log_probs"] = trajectory.log_probs
        return SampleOutput(tokens=x, nfe=nfe, seconds=time.perf_counter() - start,
                            trajectory=None if trajectory is None else trajectory.canvases, info=info)

    def _phases(self, generated: Tensor) -> list[tuple[Tensor, int]]:
        """(region (1, L) bool, steps) to decode in order: the whole canvas with ``num_steps`` (capped at
        the length), or each block holding generated positions with an even share of them."""
        length = generated.shape[1]
        if self.block_length is None:
            return [(torch.ones(1, length, dtype=torch.bool, device=generated.device), min(self.num_steps, length))]
        block = torch.arange(length, device=generated.device) // self.block_length
        todo = sorted(set(block[generated.any(0)].tolist()))
        steps = max(1, -(-self.num_steps // max(1, len(todo))))
        return [((block == j)[None], min(steps, self.block_length)) for j in todo]
