"""How each family of model directory is scored for perplexity: one entry per family, no branching.

    AR       ExactNLL     exact next-token NLL                     (dlm.eval.perplexity)
    MASKED   MaskedNELBO  NELBO bound, RADD's k form / the t form   (dlm.eval.perplexity)
    BLOCK    BlockNELBO   per-block NELBO bound                     (dlm.eval.block_perplexity)
A new family of models adds a line here and its scorer class beside the others.
An energy (EDLM, ``energy=``) corrects a masked diffusion model: ``energy_scorer_for`` gives its
``EnergyNELBO`` (dlm.eval.energy_nelbo) whatever the energy's kind.
"""

from __future__ import annotations

from dlm.errors import ConfigError
from dlm.eval.block_perplexity import BlockNELBO
from dlm.eval.energy_nelbo import EnergyNELBO
from dlm.eval.perplexity import ExactNLL, MaskedNELBO, Scorer
from dlm.io.record import Family
from dlm.models.energy import EnergyModel
from dlm.types import Denoiser

SCORERS: dict[Family, type[ExactNLL] | type[MaskedNELBO] | type[BlockNELBO]] = {
    Family.AR: ExactNLL,
    Family.MASKED: MaskedNELBO,
    Family.BLOCK: BlockNELBO,
}


def scorer_for(family: Family, model: Denoiser, **settings) -> Scorer:
    """The perplexity scorer of a model of ``family``; ``settings``: num_samples, method, schedule, t_min,
    keep_first_token (Monte Carlo settings, unused by exact scores) and ar_softmax (the record's: how an
    AR model's softmax is normalised; required for AR, unused by the bounds)."""
    if family not in SCORERS:
        raise ConfigError(f"a {family.kind!r} model directory has no perplexity (it does not model text); "
                          f"evaluate a model of kind {', '.join(repr(f.kind) for f in SCORERS)}")
    return SCORERS[family].for_model(model, **settings)


def energy_scorer_for(family: Family, model: Denoiser, *, energy: EnergyModel, **settings) -> Scorer:
    """The energy-corrected NELBO of a masked diffusion model of ``family`` corrected by ``energy``;
    ``settings``: ``scorer_for``'s plus ``log_z_samples``. Any other family is refused (an energy corrects
    the factorised kernel of masked diffusion; AR models are exact, block models have their own kernel)."""
    if family is not Family.MASKED:
        raise ConfigError(f"energy= corrects the denoising kernel of a masked diffusion model, but model= is a "
                          f"{family.kind!r} model; pass a masked diffusion model directory (kind 'diffusion') as "
                          "model=, or drop energy=")
    return EnergyNELBO.for_model(model, energy=energy, **settings)
