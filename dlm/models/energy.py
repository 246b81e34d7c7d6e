"""Residual energies of EDLM (Xu et al. 2025): sequence-level corrections of a factorised denoiser.

The corrected denoising kernel (EDLM Eq. 4) is

    p_{theta,phi}(x0 | xt) = p_theta(x0 | xt) * exp(-E(x0, xt, t)) / Z(xt, t),
    Z(xt, t) = E_{x0 ~ p_theta(. | xt)} [exp(-E(x0, xt, t))],

with **lower energy = more likely** everywhere in dlm. E = 0 is the plain denoiser.

Every energy is called the same way (``EnergyModel``):

    energy(x0 (N, L) long, xt (N, L) long, t (N,) float, proposal_log_probs (N, L) float) -> E (N,) float32

``proposal_log_probs`` holds log p_theta(x0^i | xt) of the candidate's token at every masked position
(0 elsewhere): the sampler has it from drawing the candidate, and the AR energies need it (their
weight exp(-E) = target / proposal is the importance ratio), so no second denoiser call is spent.

* ``ARResidualEnergy`` (EDLM-AR, §3.2): E = -log p_AR(x0^{1:} | x0^0) + sum_{i>=1} log p_theta(x0^i | xt),
  so the corrected kernel is p_theta(x0^0 | xt) * p_AR(x0^{1:} | x0^0) on the x0 that agree with xt:
  the AR posterior given the unmasked tokens. Position 0 is not scored by the AR model (it has no
  context; in dlm rows it is BOS or the prompt), so the proposal keeps it. Z(xt) = p_AR(observed) <= 1.
  ``carry_over=True`` (EDLM-coAR) scores only the masked positions with the AR conditionals, which makes
  the kernel exactly normalised (Z = 1): sum out the masked tokens from the right, each conditional sums
  to one and unmasked positions contribute no factor.
* ``NCEEnergy`` (EDLM-NCE, §3.3): a bidirectional transformer initialised from the diffusion backbone
  reads (xt, x0) fused per position, mean-pools the final hidden states and maps them to a scalar with
  a small MLP whose last layer starts at zero (E = 0 at init, so the NCE loss starts at 2 log 2).

Log-likelihoods are computed in float32 whatever the weights' precision: summed over hundreds of
tokens, bf16 rounding is as large as the gaps between candidate energies (EDLM's public code, B8).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from dlm.errors import ConfigError
from dlm.models.transformer import Transformer
from dlm.nn.next_token import next_token_nll
from dlm.types import Denoiser


@runtime_checkable
class EnergyModel(Protocol):
    """E(x0, xt, t, proposal_log_probs) -> (N,) float32, lower = more likely (module docstring).

    vocab_size, mask_id   must equal the denoiser's (the energy reads the same token ids);
    time_conditioned      the energy reads t (then the denoiser must be time-conditioned too: a
                          time-free denoiser's samplers and evaluators know t, but such an energy
                          was trained against time-conditioned proposals);
    exact_normaliser      Z(xt) = 1 exactly (carry-over AR): the corrected NELBO needs no log Z estimate.
    """

    vocab_size: int
    mask_id: int
    time_conditioned: bool
    exact_normaliser: bool

    def __call__(self, x0: Tensor, xt: Tensor, t: Tensor, proposal_log_probs: Tensor) -> Tensor: ...


def ar_log_likelihoods(ar: Denoiser, x0: Tensor, *, without_mask: bool) -> Tensor:
    """log p_AR(x0^i | x0^{<i}) for i = 1..L-1, float32 (N, L - 1).

    ``without_mask``: the mask column is removed before the softmax (dlm's AR objective trains so;
    ``ar_softmax="without_mask"`` in the AR model's record), else the full row is normalised.
    """
    # the last position predicts nothing in x0: next_token_nll drops its logits
    return -next_token_nll(ar(x0), x0, ar.mask_id, "without_mask" if without_mask else "full")


class ARResidualEnergy(nn.Module):
    """EDLM-AR / EDLM-coAR energy around a causal model with the denoiser's tokenizer (module docstring).

    ar: an AR ``Denoiser`` (attention "causal"); ``ar_softmax``: how its next-token softmax is
    normalised ("without_mask" or "full", from its model directory's record).
    """

    time_conditioned = False  # the AR model reads x0 only

    def __init__(self, ar: nn.Module, *, carry_over: bool = False, ar_softmax: str = "without_mask") -> None:
        super().__init__()
        if ar.attention != "causal":
            raise ConfigError(f"the AR energy needs a causal model, got attention={ar.attention!r}; point "
                              "sampler.energy.path at an AR model directory (kind 'ar')")
        if ar_softmax not in ("without_mask", "full"):
            raise ConfigError(f"ar_softmax={ar_softmax!r}; valid: 'without_mask', 'full'")
        self.ar, self.carry_over, self.ar_softmax = ar, carry_over, ar_softmax
        self.vocab_size, self.mask_id = ar.vocab_size, ar.mask_id
        self.exact_normaliser = carry_over

    def forward(self, x0: Tensor, xt: Tensor, t: Tensor, proposal_log_probs: Tensor) -> Tensor:
        lp_ar = ar_log_likelihoods(self.ar, x0, without_mask=self.ar_softmax == "without_mask")  # (N, L-1)
        if self.carry_over:
            # coAR: the AR conditional only where the token is generated; an observed token is an indicator
            lp_ar = lp_ar * (xt[:, 1:] == self.mask_id)
        return -lp_ar.sum(-1) + proposal_log_probs[:, 1:].float().sum(-1)


class NCEEnergy(nn.Module):
    """E_phi(x0, xt, t): bidirectional transformer on fused (xt, x0) -> mean pool -> MLP -> scalar.

        h_i = W_fuse [E[xt_i] ; E[x0_i]] + b        (N, L, dim)   the backbone's embedding for both
        g   = mean_i Body(h)_i                        (N, dim)      body = the diffusion backbone's blocks
        E   = w . ReLU(W g + b)                       (N,)          w = 0 at init: E = 0

    ``backbone``: the ``Transformer`` keyword arguments of the diffusion model it is initialised from
    (``dlm-train experiment=edlm_nce_demo init_from=<diffusion dir>`` copies its weights into ``body``).
    The fusion starts as "read x0" (W_fuse = [0 ; I]) so the initialised body sees what it was trained on.
    """

    exact_normaliser = False

    def __init__(self, *, backbone: dict, head_dim: int | None = None) -> None:
        super().__init__()
        spec = {k: v for k, v in backbone.items() if k != "_target_"}
        if spec.get("attention", "bidirectional") != "bidirectional":
            raise ConfigError(f"the NCE energy reads the whole sequence and needs a bidirectional backbone, got "
                              f"attention={spec['attention']!r}; initialise it from a masked diffusion model")
        self.body = Transformer(**spec)
        self.body.lm_head = nn.Identity()  # hidden states only; the V-wide head would get no gradient
        dim, hidden = self.body.dim, head_dim or self.body.dim
        self.vocab_size, self.mask_id = self.body.vocab_size, self.body.mask_id
        self.time_conditioned = self.body.time_conditioned
        self.max_seq_len = self.body.max_seq_len
        self.fuse = nn.Linear(2 * dim, dim)
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1, bias=False))
        self.reset_head()

    def reset_head(self) -> None:
        """Fusion = read x0, last layer = 0 (E = 0 for every input, NCE loss 2 log 2 at step 0)."""
        dim = self.body.dim
        with torch.no_grad():
            self.fuse.weight.zero_()
            self.fuse.weight[:, dim:] = torch.eye(dim)
            self.fuse.bias.zero_()
        nn.init.zeros_(self.head[2].weight)

    def forward(self, x0: Tensor, xt: Tensor, t: Tensor, proposal_log_probs: Tensor | None = None) -> Tensor:
        h = self.fuse(torch.cat([self.body.embed(xt), self.body.embed(x0)], dim=-1))
        tt = t.float() if self.time_conditioned else None
        pooled = self.body.forward_embeddings(h, tt, return_hidden=True).mean(1)
        return self.head(pooled)[:, 0].float()


def check_energy_fits(energy: EnergyModel, model: Denoiser) -> None:
    """Refuse, before any compute, an energy that cannot score this denoiser's candidates."""
    if energy.vocab_size != model.vocab_size or energy.mask_id != model.mask_id:
        raise ConfigError(f"the energy reads vocab_size={energy.vocab_size}, mask_id={energy.mask_id} but the denoiser "
                          f"has vocab_size={model.vocab_size}, mask_id={model.mask_id}: they use different tokenizers; "
                          "train or convert the energy's model with the denoiser's tokenizer")
    if energy.time_conditioned and not model.time_conditioned:
        raise ConfigError("the energy is time-conditioned but the denoiser is time-free (its proposals were not "
                          "trained at a given t); train the energy from this denoiser (dlm-train "
                          "experiment=edlm_nce_demo init_from=<denoiser dir>) or use a time-conditioned denoiser")

