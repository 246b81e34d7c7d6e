"""EDLM-NCE: noise-contrastive training of a residual energy against a frozen diffusion proposal.

EDLM (Xu et al. 2025) §3.3, after Deng et al. 2020 but conditioned on xt. Per sequence x0 of the batch:

    t ~ U[t_min, 1)  (antithetic over the batch),   xt ~ q(xt | x0)  (each token masked w.p. 1 - alpha(t))
    positive   x0+ = x0                       the data (it agrees with xt by construction)
    negative   x0- ~ p_theta(. | xt)          one whole draw of the frozen proposal at every masked
                                              position, unmasked positions carried over (same xt)
    loss       l = -log sigma(-E(x0+, xt, t)) - log sigma(E(x0-, xt, t)) = softplus(E+) + softplus(-E-)

The classifier's logit "data vs proposal" is -E (residual form, equal class priors, log Z absorbed),
so the Bayes-optimal energy is the log density ratio -log q(x0 | xt) + log p_theta(x0 | xt), which is
self-normalised (Z = 1): the trained energy plugs into the importance sampler and the corrected NELBO.
Gradients: dl/dE+ = sigma(E+), dl/dE- = -sigma(-E-), +-1/2 at E = 0; an energy whose last layer starts
at zero (``NCEEnergy``) gives l = 2 log 2 exactly at step 0.

``softplus`` is exact: the public code computes -log(sigma(.) + 1e-8), which caps each term at 18.42
nats and, worse, sends its gradient to 0 exactly on the confidently misclassified sequences; here a
saturated wrong answer costs |E| nats and keeps gradient 1 (L(20, -20) = 40.0, L(-20, 20) = 4.1e-9).

The proposal is frozen in every sense (public code bug B6 ran it in train mode, dropout on): its
parameters have ``requires_grad=False``, it is called in ``eval()`` mode under ``no_grad``, and it is
held by this plain object, not by an ``nn.Module``, so a LightningModule holding the objective never
registers it: it is outside the optimiser, the EMA and the checkpoint, and moves to the batch's device
on first use. ``proposal=None`` is allowed only until the runner supplies the model ``init_from`` names.
Shapes: B batch, L length, V vocabulary (mask included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.diffusion.forward import TimeSampling, mask_tokens, sample_t
from dlm.diffusion.posterior import subs_log_probs
from dlm.errors import ConfigError
from dlm.io.record import Family
from dlm.models.energy import EnergyModel, check_energy_fits
from dlm.nn.attention import padding_mask_to_attn_mask
from dlm.objectives.masked import target_positions
from dlm.samplers.importance import draw_candidates
from dlm.types import Denoiser, LossOutput, NoiseSchedule


def nce_loss(energy_pos: Tensor, energy_neg: Tensor) -> Tensor:
    """Per-sequence NCE loss softplus(E+) + softplus(-E-) (B,); exact, no epsilon inside a log."""
    return F.softplus(energy_pos.float()) + F.softplus(-energy_neg.float())


def nce_accuracy(energy_pos: Tensor, energy_neg: Tensor) -> Tensor:
    """Mean accuracy of the classifier "data iff -E > 0" over both classes; a tie (E = 0) counts 1/2,
    so the zero-initialised energy scores chance (0.5)."""
    return ((torch.sign(-energy_pos) + torch.sign(energy_neg)).float().mean() / 4 + 0.5).detach()


class NCELoss:
    """Objective(energy, batch) -> LossOutput: mean per-sequence NCE loss (module docstring).

    Args:
        proposal: the frozen masked-diffusion ``Denoiser`` p_theta (bidirectional); ``dlm-train`` passes
            the model ``init_from`` names. Its parameters are frozen here.
        schedule: the noise schedule of the forward corruption (mask probability 1 - alpha(t)).
        t_sampling: ``antithetic`` (stratified over the batch, MDLM) or ``uniform``.
        t_min: lower clip of t (t = 0 would make positive and negative identical).
        keep_first_token: never mask position 0 (a BOS, as the proposal was trained).
    ``num_tokens`` of the output counts sequences: ``val/nll`` is the NCE loss per sequence, not a likelihood.
    """

    family = Family.ENERGY  # what it trains: read by the runner, written to the exported model.json
    shift_logits = False

    def __init__(self, *, proposal: Denoiser | None = None, schedule: NoiseSchedule,
                 t_sampling: TimeSampling = "antithetic", t_min: float = 1e-3, keep_first_token: bool = True) -> None:
        if not 0.0 <= t_min < 1.0:
            raise ConfigError(f"objective.t_min={t_min} must lie in [0, 1)")
        if proposal is not None:
            if proposal.attention != "bidirectional":
                raise ConfigError(f"the NCE proposal must be a masked diffusion model (attention=bidirectional), got "
                                  f"attention={proposal.attention!r}; point init_from at a masked diffusion model "
                                  "directory (kind 'diffusion')")
            for p in proposal.parameters():
                p.requires_grad_(False)
            proposal.eval()
        self.proposal, self.schedule = proposal, schedule
        self.t_sampling, self.t_min, self.keep_first_token = t_sampling, t_min, keep_first_token

    @torch.no_grad()
    def negatives(self, x0: Tensor, xt: Tensor, t: Tensor, attn_mask: Tensor | None,
                  generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """One draw x0- ~ p_theta(. | xt) per row (B, L), its per-position log-probabilities (B, L) (0 where
        unmasked), and log p_theta(x0+^i | xt) of the data likewise (B, L): what ``EnergyModel`` reads."""
        proposal = self.proposal
        if next(proposal.parameters()).device != x0.device:
            proposal.to(x0.device)  # lazily: the runner moves the module, never this object
        proposal.eval()  # cheap, and nothing can have put it back into train mode behind our back
        logits = proposal(xt, t if proposal.time_conditioned else None, attn_mask=attn_mask)
        log_p = subs_log_probs(logits, proposal.mask_id)  # (B, L, V) float32, mask column -inf
        negative, neg_lp = draw_candidates(log_p, xt, proposal.mask_id, 1, generator)
        masked = xt == proposal.mask_id
        pos_lp = log_p.gather(-1, x0[..., None])[..., 0].masked_fill(~masked, 0.0)
        return negative[0], neg_lp[0], pos_lp

    def __call__(self, energy: EnergyModel, batch: dict[str, Tensor],
                 generator: torch.Generator | None = None) -> LossOutput:
        if self.proposal is None:
            raise ConfigError("objective=nce has no proposal: it trains an energy against a masked diffusion model; "
                              "pass init_from=<diffusion model dir> (dlm-train experiment=edlm_nce_demo "
                              "init_from=<dir>)")
        check_energy_fits(energy, self.proposal)
        x0 = batch["input_ids"]
        eligible = target_positions(batch, self.keep_first_token)
        t = sample_t(x0.shape[0], t_min=self.t_min, sampling=self.t_sampling, device=x0.device, generator=generator)
        xt, _ = mask_tokens(x0, 1.0 - self.schedule.alpha(t), self.proposal.mask_id, eligible=eligible,
                            generator=generator)
        pad = batch.get("attention_mask")
        attn_mask = None if pad is None else padding_mask_to_attn_mask(pad)
        negative, neg_lp, pos_lp = self.negatives(x0, xt, t, attn_mask, generator)
        # one energy call on [positives ; negatives]: one pass through the body, and batch statistics
        # (if any) see both classes
        energies = energy(torch.cat([x0, negative]), torch.cat([xt, xt]), torch.cat([t, t]),
                          torch.cat([pos_lp, neg_lp]))
        e_pos, e_neg = energies.split(x0.shape[0])
        per_seq = nce_loss(e_pos, e_neg)
        n = torch.tensor(x0.shape[0], device=x0.device)
        return LossOutput(loss=per_seq.mean(), nll_sum=per_seq.detach().sum(), num_tokens=n,
                          metrics={"accuracy": nce_accuracy(e_pos, e_neg), "energy_pos": e_pos.detach().mean(),
                                   "energy_neg": e_neg.detach().mean()})
