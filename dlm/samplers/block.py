"""Block-by-block decoding with an exact KV cache (SDAR ``block_diffusion_generate``, BD3-LM ``semi_ar``).

The canvas (prompt, then [MASK] up to ``length``) is cut into blocks of ``block_size`` absolute
positions [j k, (j + 1) k) (the last one may be short). Block diffusion factorises
p(x) = prod_j p(x^j | x^{<j}) (BD3-LM Eq. 3): block j is denoised conditioned on the clean earlier
blocks only, so their keys / values never change and can be cached exactly (research note §3.4, C2):

    prefill   : the prompt's complete blocks, one forward, block-causal mask, store_cache=True
    per block : up to ``num_steps`` calls on the block alone (queries = block, keys = cache + block,
                store_cache=False); candidates x̂0 ~ p_theta(x0 | x^{<j}, x_t^j) at the masked
                positions, a ``RevealPolicy`` commits some (>= 1; all on the last step)
    commit    : one forward of the clean block with store_cache=True (its K/V computed from clean
                tokens: the K/V of the last denoising step saw [MASK] inputs and would be wrong);
                skipped after the last block, where nothing would read it.

``use_cache=False`` recomputes prefix + block every call with the block-causal mask (the baseline):
same samples under the same generator, nfe lower by the prefill and the commit passes
(nfe_cache = nfe_nocache + [prefill] + number of commit passes; see ``info``).
``first_hitting=True`` unmasks exactly one uniformly random masked position per call (BD3-LM's
default; in law the limit of the ancestral sampler, nfe = number of masks per block).
Positions of the prompt holding ``mask_id`` are generated too (infilling); given tokens are kept.
Shapes: B batch, Lb block length, V vocabulary (with mask), dim hidden size.
"""

from __future__ import annotations

import time
from typing import Protocol

import torch
from torch import Tensor

from dlm.cache.kv import KVCache
from dlm.errors import ConfigError
from dlm.nn.block_mask import block_causal_mask
from dlm.samplers.block_reveal import BlockStep, eos_lengths
from dlm.samplers.canvas import fill_after_eos, init_canvas
from dlm.samplers.categorical import Precision, TokenSampling
from dlm.samplers.confidence import Order, position_confidence
from dlm.samplers.decodable import check_decodable
from dlm.samplers.reveal import StaticCount
from dlm.types import Denoiser, SampleOutput


class Guidance(Protocol):
    """log_probs (B, Lb, V), tokens (B, P + Lb) context + block with masks, block_start, mask_id -> (B, Lb, V)."""

    def __call__(self, log_probs: Tensor, tokens: Tensor, block_start: int, mask_id: int) -> Tensor: ...


class BlockSizePolicy(Protocol):
    """CtrlDiff-style dynamic blocks: hidden (B, dim) of the last committed token, probe entropy (B,) -> size.
    A stochastic policy draws with the sampler's ``generator``, so it stays reproducible with it."""

    def next_block_size(self, hidden: Tensor, probe_entropy: Tensor,
                        generator: torch.Generator | None = None) -> int: ...


def block_causal(n: int, block_size: int, device: torch.device) -> Tensor:
    """(n, n) bool block-causal mask over positions 0..n-1 (BD3-LM's M_BC over clean tokens)."""
    positions = torch.arange(n, device=device)
    return block_causal_mask(positions, positions, block_size)


class BlockSampler:
    """Sampler(model, batch_size=, length=, prompt=, generator=) -> SampleOutput.

    block_size: default the model's ``block_size``. num_steps: denoising calls per block (default:
    the block length, one token per call). policy: a RevealPolicy (``StaticCount`` default,
    ``ConfidenceThreshold`` = SDAR's dynamic rule, ``EntropyBounded`` with order="entropy").
    eos_id / stop_at_eos: a row that commits EOS ends (later masks become EOS); the batch stops when
    every row has ended; ``info["lengths"]`` counts tokens up to and including the first generated
    EOS (``length`` if none). guidance: see ``Guidance``. block_size_policy: see ``BlockSizePolicy``;
    needs ``use_cache``; ``info["block_sizes"]`` then lists its decisions (unclipped) aligned with
    ``info["policy_features"]`` [(hidden, probe_entropy)]. A block without committed context (no
    prompt block) uses ``block_size`` and is not a decision. ``record_trajectory``: the canvas after
    every denoising call in ``trajectory``.

    A model with ``shift_logits = True`` (trained with ``objective.shift_logits``, Dream / Fast-dLLM v2;
    ``dlm.load`` sets the attribute from model.json) predicts token i from output i - 1: from the
    noisy block for i - 1 inside the block, else from the clean output of the last committed token,
    which the prefill / commit / fused pass computes anyway (no extra call). Such a model needs a
    prompt (at least BOS): position 0 has no predecessor.
    """

    # a bidirectional model never saw the block-causal mask these samplers decode with: refused
    # (decode it with a full-canvas sampler; sampler/cache=dkv_decode for speed)
    decodes = frozenset({"block_causal"})
    reads_shifted_logits = True
    extends_context = False

    def __init__(self, *, block_size: int | None = None, num_steps: int | None = None, policy=None,
                 order: Order = "max_prob", first_hitting: bool = False, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, sampling_precision: Precision = "float64",
                 use_cache: bool = True, eos_id: int | None = None, stop_at_eos: bool = True,
                 guidance: Guidance | None = None, block_size_policy: BlockSizePolicy | None = None,
                 record_trajectory: bool = False, fuse_commit: bool = False) -> None:
        if block_size is not None and block_size < 1:
            raise ConfigError(f"sampler.block_size={block_size} must be >= 1")
        if num_steps is not None and num_steps < 1:
            raise ConfigError(f"sampler.num_steps={num_steps} must be >= 1 (denoising calls per block)")
        position_confidence(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), order)  # validates order
        policy = policy or StaticCount()
        needed = policy.required_order
        if needed is not None and order != needed and not first_hitting:
            raise ConfigError(f"sampler.policy={type(policy).__name__} reads per-position {needed}: "
                              f"set sampler.order={needed} (got {order!r})")
        if block_size_policy is not None and not use_cache:
            raise ConfigError("sampler.block_size_policy reads the hidden state of the commit pass: "
                              "set sampler.use_cache=true")
        self.block_size, self.num_steps, self.use_cache = block_size, num_steps, use_cache
        self.step_rule = BlockStep(policy=policy, order=order, first_hitting=first_hitting,
                                   tokens=TokenSampling(temperature=temperature, top_k=top_k, top_p=top_p,
                                                        sampling_precision=sampling_precision),
                                   guidance=guidance)
        self.eos_id = eos_id if stop_at_eos else None
        self.block_size_policy, self.record_trajectory = block_size_policy, record_trajectory
        # fusing the commit pass into the next block's first call needs no hidden state from it
        self.fuse_commit = fuse_commit and use_cache and block_size_policy is None

    def check_model(self, model: Denoiser) -> None:
        """Refuse a model that cannot be block-decoded (causal: convert it, or sampler=autoregressive)."""
        check_decodable(self, model, decodes=self.decodes, reads_shifted_logits=self.reads_shifted_logits)
        self.resolve_block_size(model)

    def resolve_block_size(self, model: Denoiser) -> int:
        """The block size to use: the sampler's, else the model's diffusion block."""
        size = self.block_size or model.block_size
        if size is None:
            raise ConfigError(f"sampler.block_size is unset and the model has no block structure "
                              f"(model.attention={model.attention!r}): set sampler.block_size, or decode a "
                              "block_causal model (train with objective=block or convert an AR checkpoint)")
        return int(size)

    @torch.no_grad()
    def __call__(self, model: Denoiser, *, batch_size: int, length: int, prompt: Tensor | None = None,
                 generator: torch.Generator | None = None) -> SampleOutput:
        self.check_model(model)
        start_time = time.perf_counter()
        k = self.resolve_block_size(model)
        x = init_canvas(model, batch_size=batch_size, length=length, prompt=prompt)  # checks length, prompt
        generated = x == model.mask_id
        if not generated.any():
            raise ConfigError(f"the prompt fills all of length={length}: nothing to generate; raise length")
        shift = model.shift_logits
        if shift and bool(generated[:, 0].any()):
            raise ConfigError("this model was trained with shift_logits (token i read from output i - 1), so "
                              "position 0 has no prediction: give a prompt (at least BOS)")
        if shift and self.block_size_policy is not None:
            raise ConfigError("sampler.block_size_policy is not supported for shift_logits models yet; "
                              "use a fixed sampler.block_size")
        run = _Run(model, x, k, KVCache(model.n_layers) if self.use_cache else None, generator, shift=shift)
        # the prompt's complete blocks (up to the first position any row must generate) are prefilled
        first = int(generated.any(0).long().argmax())
        start = first // k * k
        hidden = run.prefill(start, want_hidden=self.block_size_policy is not None) if start else None
        sizes: list[int] = []
        features: list[tuple[Tensor, Tensor]] = []
        spans: list[tuple[int, int]] = []
        trajectory: list[Tensor] | None = [] if self.record_trajectory else None
        pending: tuple[int, int] | None = None  # a decoded block whose commit rides on the next call
        while start < length and (x[:, start:] == model.mask_id).any():
            size = k
            if self.block_size_policy is not None and hidden is not None:
                entropy = run.probe(start, min(k, length - start), self.step_rule.tokens)
                size = self._ask(hidden, entropy, generator)
                sizes.append(size)
                features.append((hidden, entropy))
            elif self.block_size_policy is None:
                sizes.append(min(size, length - start))
            end = min(start + size, length)
            spans.append((start, end))
            if pending is not None and not (x[:, start:end] == model.mask_id).any():
                run.commit(*pending, want_hidden=False)  # a fully given block: nothing to fuse with
                pending = None
            self._decode_block(run, start, end, generated, trajectory, pending)
            pending = None
            if run.cache is not None and (x[:, end:] == model.mask_id).any():
                if self.fuse_commit:
                    pending = (start, end)
                else:
                    hidden = run.commit(start, end, want_hidden=self.block_size_policy is not None)
            start = end
        info = {"lengths": eos_lengths(x, generated, self.eos_id), "block_sizes": sizes,
                "policy_features": features, "block_spans": spans, "prefill": run.prefills,
                "commit_passes": run.commits, "probes": run.probes,
                "row_nfe": torch.full((batch_size,), run.nfe, dtype=torch.long, device=x.device)}
        return SampleOutput(tokens=x, nfe=run.nfe, seconds=time.perf_counter() - start_time,
                            trajectory=trajectory, info=info)

    def _ask(self, hidden: Tensor, entropy: Tensor, generator: torch.Generator | None) -> int:
        size = int(self.block_size_policy.next_block_size(hidden, entropy, generator=generator))
        if size < 1:
            raise ConfigError(f"sampler.block_size_policy returned block size {size}; sizes must be >= 1")
        return size

    def _decode_block(self, run: _Run, start: int, end: int, generated: Tensor,
                      trajectory: list[Tensor] | None, pending: tuple[int, int] | None = None) -> None:
        """Denoise x[:, start:end] in place until no mask is left (<= num_steps calls, >= 1 commit each)."""
        x, mask_id = run.x, run.model.mask_id
        steps = end - start if (self.num_steps is None or self.step_rule.first_hitting) else self.num_steps
        for step in range(steps):
            masked = x[:, start:end] == mask_id
            if not masked.any():
                break
            # time-conditioned networks see the block's masked fraction (per-block t, BD3-LM)
            t = masked.float().mean(-1)
            if pending is not None:  # commit the previous block in the same call (exact: block-causal)
                logits = run.fused_logits(pending[0], start, end, t)
                pending = None
            else:
                logits = run.block_logits(start, end, t)
            commit, proposal = self.step_rule(logits, x[:, :end], start, masked, step, steps, mask_id,
                                              run.generator)
            x[:, start:end] = torch.where(commit, proposal, x[:, start:end])
            if self.eos_id is not None:
                fill_after_eos(x, self.eos_id, mask_id, generated)
            if trajectory is not None:
                trajectory.append(x.clone())


class _Run:
    """State of one sampler call: canvas, cache, network-call counters and how each call is made."""

    def __init__(self, model: Denoiser, x: Tensor, block_size: int, cache: KVCache | None,
                 generator: torch.Generator | None, shift: bool = False) -> None:
        self.model, self.x, self.block_size, self.cache, self.generator = model, x, block_size, cache, generator
        self.nfe = self.prefills = self.commits = self.probes = 0
        # shift_logits: clean-stream logits (B, V) of the last committed token, the source of the
        # next block's first prediction (None before anything is committed)
        self.shift, self.carry = shift, None

    def _shifted(self, out: Tensor) -> Tensor:
        """Block logits (B, Lb, V) of a shift model from its outputs at the block's own positions:
        [carry ; out[:, :-1]] (position 0 of a sequence, always given, gets zeros)."""
        first = self.carry[:, None] if self.carry is not None else out.new_zeros(out[:, :1].shape)
        return torch.cat([first, out[:, :-1]], dim=1)

    def _t(self, t: Tensor | float) -> Tensor | None:
        if not self.model.time_conditioned:
            return None
        return torch.as_tensor(t, dtype=torch.float32, device=self.x.device).expand(self.x.shape[0])

    def _cached(self, tokens: Tensor, start: int, t: Tensor | float, *, store: bool = False,
                hidden: bool = False) -> Tensor:
        """tokens (B, n) at positions start.. attend to the whole cache and to each other (one block)."""
        n = tokens.shape[1]
        # explicit all-True mask: the new block sees all cached keys + itself, whatever sizes came before
        mask = torch.ones(n, self.cache.length + n, dtype=torch.bool, device=tokens.device)
        self.nfe += 1
        return self.model(tokens, self._t(t), positions=torch.arange(start, start + n, device=tokens.device),
                          attn_mask=mask, cache=self.cache, store_cache=store, return_hidden=hidden)

    def prefill(self, n: int, want_hidden: bool) -> Tensor | None:
        """Store the K/V of the first n (complete-block) positions in one block-causal forward."""
        if self.cache is None:
            return None
        self.nfe += 1
        self.prefills += 1
        out = self.model(self.x[:, :n], self._t(0.0), positions=torch.arange(n, device=self.x.device),
                         attn_mask=block_causal(n, self.block_size, self.x.device), cache=self.cache,
                         store_cache=True, return_hidden=want_hidden, logits_at=self._last_logits(n))
        if self.shift:
            self.carry = out[:, -1]
        return out[:, -1] if want_hidden else None

    def _last_logits(self, n: int) -> Tensor | None:
        """``logits_at`` asking only for the last position's logits (a shift model's carry)."""
        if self.shift:
            return torch.full((self.x.shape[0], 1), n - 1, dtype=torch.long, device=self.x.device)
        return None

    def commit(self, start: int, end: int, want_hidden: bool) -> Tensor | None:
        """Commit pass: K/V of the clean block into the cache; hidden (B, dim) of its last token."""
        self.commits += 1
        out = self._cached(self.x[:, start:end], start, 0.0, store=True, hidden=want_hidden)
        if self.shift:
            self.carry = out[:, -1]
        return out[:, -1] if want_hidden else None

    def fused_logits(self, pstart: int, start: int, end: int, t: Tensor) -> Tensor:
        """One call that commits the clean block x[:, pstart:start] and denoises x[:, start:end].

        Block-causal over the two blocks: the clean block sees the cache and itself (so its K/V are
        exactly the commit pass's), the noisy block sees the cache, the clean block and itself.
        The K/V stored for the noisy block are dropped again. Logits (B, end - start, V).
        """
        n_p, n = start - pstart, end - pstart
        past, device = self.cache.length, self.x.device
        mask = torch.ones(n, past + n, dtype=torch.bool, device=device)
        mask[:n_p, past + n_p:] = False
        t_full = None
        if self.model.time_conditioned:
            t_full = torch.zeros(self.x.shape[0], n, device=device)
            t_full[:, n_p:] = t[:, None]
        kw = dict(positions=torch.arange(pstart, end, device=device), attn_mask=mask, cache=self.cache,
                  store_cache=True)
        self.nfe += 1
        self.commits += 1
        lo = n_p - 1 if self.shift else n_p  # shift: outputs start-1 .. end-2 (start-1 = the clean block's last)
        at = torch.arange(lo, lo + n - n_p, device=device).expand(self.x.shape[0], -1)
        out = self.model(self.x[:, pstart:end], t_full, logits_at=at, **kw)
        self.cache.truncate(past + n_p)
        if self.shift:
            self.carry = out[:, 0]
        return out

    def probe(self, start: int, n: int, tokens: TokenSampling) -> Tensor:
        """Mean predictive entropy (B,) of n [MASK] tokens placed after the committed prefix (no store)."""
        self.probes += 1
        probe = torch.full((self.x.shape[0], n), self.model.mask_id, dtype=torch.long, device=self.x.device)
        logits = self._cached(probe, start, 1.0)
        log_p = tokens.log_probs(logits.flatten(0, 1), self.model.mask_id)
        entropy = -(log_p.exp() * log_p.clamp(min=-1e30)).nan_to_num().sum(-1)
        return entropy.view(probe.shape).mean(-1)

    def block_logits(self, start: int, end: int, t: Tensor) -> Tensor:
        """Logits (B, Lb, V) of the block x[:, start:end] given the clean prefix (cached or recomputed)."""
        if self.cache is not None:
            out = self._cached(self.x[:, start:end], start, t)
            return self._shifted(out) if self.shift else out
        self.nfe += 1
        b, device = self.x.shape[0], self.x.device
        t_full = None
        if self.model.time_conditioned:  # clean prefix at t = 0, the block at its t
            t_full = torch.zeros(b, end, device=device)
            t_full[:, start:] = t[:, None]
        kw = dict(positions=torch.arange(end, device=device), attn_mask=block_causal(end, self.block_size, device))
        # a shift model reads outputs start-1 .. end-2 (start-1: the clean stream); at start = 0 the
        # first position is the always-given position 0, which gets a zero placeholder
        lo = max(start - 1, 0) if self.shift else start
        at = torch.arange(lo, end - (1 if self.shift else 0), device=device).expand(b, -1)
        out = self.model(self.x[:, :end], t_full, logits_at=at, **kw)
        if self.shift and start == 0:
            out = torch.cat([out.new_zeros(out[:, :1].shape), out], dim=1)
        return out
