"""The energy-corrected NELBO of EDLM (Xu et al. 2025 §5; research note edlm.md §5): what
``dlm-eval-ppl model=<diffusion dir> energy=<AR dir | energy dir>`` reports.

The corrected kernel is p_{theta,phi}(x0 | xt) = p_theta(x0 | xt) exp(-E(x0, xt, t)) / Z(xt, t) and EDLM
puts its whole-sequence log-likelihood into MDLM's integrand:

    -log p(x0) "<=" int w(t) E_{xt ~ q(.|x0)} [ -sum_{i masked} log p_theta(x0^i | xt) + E(x0, xt, t) + log Z(xt, t) ] dt

with the masked NELBO's strata and weights (``dlm.eval.perplexity.nelbo_draw``: RADD's exact k form,
weight n / k, for a time-free denoiser; t stratified on [t_min, 1) with w(t) = -alpha'/(1 - alpha) for a
time-conditioned one). E = 0 is ``MaskedNELBO`` exactly: the same masks, the same number.

**This "joint" integrand is not a guaranteed bound** for a non-factorised kernel. MDLM's continuous-time
bound holds with the kernel's per-position marginals; the joint log-likelihood counts the dependence
between masked tokens once per masked set. With L = 2 and the exact posterior P as kernel the integral
is -(3/2) log P(a, b) + (1/2) log P(a) P(b), *below* -log P(a, b) whenever a and b are positively
correlated (tests/unit/test_edlm_nelbo.py enumerates it). It is what EDLM's paper and code compute; the
per-position marginals of an energy-corrected kernel are intractable. The exception is the carry-over AR
energy (coAR): its kernel ignores observed tokens to the right, the integrand is
sum_{i masked} -log p_AR(x^i | x^{<i}), and sum_k (1/k) E_{|M| = k}[...] = sum_i -log p_AR(x^i | x^{<i}):
the AR model's exact NLL, with Z = 1 exactly (``method: nelbo_bound``, ``log_z: exact``).

**log Z** for the AR and NCE energies (``method: nelbo_bound_estimated``): n = ``log_z_samples`` whole
proposals x^(j) ~ p_theta(. | xt) per draw (``dlm.samplers.importance.draw_candidates``), and with
T_m = log (1/m) sum_j exp(-E(x^(j))):
  * the plug-in T_n underestimates log Z (Jensen, bias ~ -Var(w) / (2 n Z^2), w = exp(-E)): it makes the
    perplexity look too good (EDLM's public code uses n = 1, note §8 B5);
  * the leave-one-out form (2n - 1) T_n - 2(n - 1) T_{n-1}, T_{n-1} the average of the n estimates that
    each drop one sample, is the upper side of the sandwich E[T_n] <= log Z <= E[(2n-1) T_n - 2(n-1) T_{n-1}]
    (Deng et al. 2020 Thm 2, after Nowozin 2018). To first order its bias is +Var(w) / (2 n Z^2), the mirror
    image of the plug-in's: it does not remove the bias, it moves it to the safe side (a perplexity too high,
    not too low), and it shrinks as 1/n. The inequality holds only asymptotically in n (with heavy-tailed
    weights and n = 2 it can still fall below log Z), so the result is an *estimate* of an upper bound of the
    joint integral above, not a certified bound; more ``log_z_samples`` tighten it.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

from dlm.diffusion.posterior import masked_token_nll, subs_log_probs
from dlm.diffusion.schedule import LogLinearSchedule
from dlm.errors import ConfigError
from dlm.eval.perplexity import PerSequence, nelbo_draw, padding_attn_mask
from dlm.eval.strata import Method, stratified_uniforms
from dlm.models.energy import EnergyModel, check_energy_fits
from dlm.objectives.masked import target_positions
from dlm.samplers.importance import draw_candidates
from dlm.types import Denoiser, NoiseSchedule


def log_z_estimates(neg_energies: Tensor) -> tuple[Tensor, Tensor]:
    """(plug-in T_n, leave-one-out (2n - 1) T_n - 2(n - 1) T_{n-1}) of log Z, both (R,) float64.

    neg_energies (n, R): -E of n proposals per row, n >= 2. Computed with log-sum-exp in float64 (energies
    of whole sequences reach hundreds of nats).
    """
    n = neg_energies.shape[0]
    if n < 2:
        raise ConfigError(f"log_z_samples={n}: the leave-one-out correction needs at least 2 proposals")
    neg = neg_energies.double()
    t_n = torch.logsumexp(neg, 0) - math.log(n)
    drop = torch.eye(n, dtype=torch.bool, device=neg.device)[..., None]  # subset j leaves out sample j
    t_n1 = (torch.logsumexp(neg[None].expand(n, -1, -1).masked_fill(drop, float("-inf")), 1)
            - math.log(n - 1)).mean(0)
    return t_n, (2 * n - 1) * t_n - 2 * (n - 1) * t_n1


def proposal_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """A generator for the log Z proposals, seeded from ``generator``'s current state without advancing it.

    The masks then come from ``generator`` exactly as in ``MaskedNELBO`` over a whole evaluation (every
    batch, not only the first), so the corrected and the plain NELBO are paired draw for draw: E = 0 gives
    the plain number, and their difference has a far smaller Monte Carlo error than either. None: the
    global generator (no pairing).
    """
    if generator is None:
        return None
    digest = hashlib.blake2b(generator.get_state().cpu().numpy().tobytes(), digest_size=8).digest()
    return torch.Generator(device=generator.device).manual_seed(int.from_bytes(digest, "little") >> 1)


class EnergyNELBO:
    """A masked-diffusion model corrected by an energy: the NELBO of the corrected kernel (module docstring).

    ``energy``: an ``EnergyModel`` (``dlm.io.energy_dir.load_energy``); ``log_z_samples`` n >= 2 proposals
    per draw for the log Z estimate (unused when ``energy.exact_normaliser``); ``energy_batch``: rows per
    energy forward. The other settings are ``MaskedNELBO``'s.
    """

    desc = "eval ppl (diffusion + energy)"
    stochastic = True

    def __init__(self, *, energy: EnergyModel, num_samples: int = 32, method: Method = "mc",
                 schedule: NoiseSchedule | None = None, t_min: float = 1e-3, keep_first_token: bool = True,
                 log_z_samples: int = 16, energy_batch: int = 256) -> None:
        if isinstance(log_z_samples, bool) or not isinstance(log_z_samples, int) or log_z_samples < 2:
            raise ConfigError(f"log_z_samples={log_z_samples!r} must be an integer >= 2 (the leave-one-out log Z "
                              "correction drops one of them); 16 is the default")
        if energy_batch < 1:
            raise ConfigError(f"energy_batch={energy_batch} must be >= 1")
        self.energy, self.num_samples, self.method = energy, num_samples, method
        self.schedule, self.t_min, self.keep_first_token = schedule, t_min, keep_first_token
        self.log_z_samples, self.energy_batch = log_z_samples, energy_batch

    @classmethod
    def for_model(cls, model: Denoiser, *, energy: EnergyModel, ar_softmax: str | None = None,
                  **settings) -> EnergyNELBO:
        """Refuses an energy that cannot read this denoiser's candidates; ``ar_softmax`` describes AR models only."""
        check_energy_fits(energy, model)
        return cls(energy=energy, **settings)

    def score(self, x0: Tensor, xt: Tensor, t: Tensor, log_p: Tensor) -> Tensor:
        """E (N,) float64 of rows x0 (N, L) given xt (N, L), t (N,), their proposal log-probs (N, L), chunked."""
        b = self.energy_batch
        return torch.cat([self.energy(x0[i:i + b], xt[i:i + b], t[i:i + b], log_p[i:i + b])
                          for i in range(0, x0.shape[0], b)]).double()

    def log_z(self, logits: Tensor, xt: Tensor, t: Tensor, mask_id: int,
              generator: torch.Generator | None) -> Tensor:
        """Leave-one-out estimate of log Z(xt, t) (B,) from ``log_z_samples`` proposals per row."""
        n, (b, length) = self.log_z_samples, xt.shape
        candidates, cand_lp = draw_candidates(subs_log_probs(logits, mask_id), xt, mask_id, n, generator)
        energies = self.score(candidates.reshape(n * b, length), xt.repeat(n, 1), t.repeat(n),
                              cand_lp.reshape(n * b, length))  # row j * b + r: proposal j of row r
        return log_z_estimates(-energies.view(n, b))[1]

    @torch.no_grad()
    def per_sequence(self, model: Denoiser, batch: dict[str, Tensor],
                     generator: torch.Generator | None = None) -> PerSequence:
        schedule = self.schedule or LogLinearSchedule()
        x0 = batch["input_ids"]
        eligible = target_positions(batch, self.keep_first_token)
        attn_mask = padding_attn_mask(batch)
        n = eligible.sum(-1)
        # every corruption first, in nelbo_per_sequence's order, and the proposals for log Z from their own
        # stream: the masks are MaskedNELBO's, and E = 0 gives its number with the same seed, bit for bit
        corruptions = [nelbo_draw(model, x0, eligible,
                                  stratified_uniforms(x0.shape[0], s, self.num_samples, self.method, x0.device,
                                                      generator),
                                  schedule=schedule, t_min=self.t_min, generator=generator)
                       for s in range(self.num_samples)]
        proposals = None if self.energy.exact_normaliser else proposal_generator(generator)
        draws = []
        for xt, masked, t, weight in corruptions:
            logits = model(xt, t, attn_mask=attn_mask)
            nll = masked_token_nll(logits, x0, masked, model.mask_id)  # (B, L): -log p_theta(x0^i | xt), 0 unmasked
            # a time-free energy ignores t; give it the mask ratio (check_energy_fits refuses a time-conditioned
            # energy with a time-free denoiser)
            t_energy = t if t is not None else masked.sum(-1).float() / n.clamp(min=1).float()
            correction = self.score(x0, xt, t_energy, -nll)
            if not self.energy.exact_normaliser:
                correction = correction + self.log_z(logits, xt, t_energy, model.mask_id, proposals)
            draws.append((weight * nll.sum(-1)).double() + weight.double() * correction)
        d = torch.stack(draws)  # (S, B)
        var_of_mean = d.var(0, unbiased=True) / self.num_samples if self.num_samples > 1 else torch.zeros_like(d[0])
        return d.mean(0), var_of_mean, n

    def summary(self) -> dict:
        if self.energy.exact_normaliser:
            return {"method": "nelbo_bound", "t_samples": self.num_samples, "estimator": self.method,
                    "log_z": "exact"}
        return {"method": "nelbo_bound_estimated", "t_samples": self.num_samples, "estimator": self.method,
                "log_z": "leave_one_out", "log_z_samples": self.log_z_samples}
