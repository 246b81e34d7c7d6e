"""EDLM-NCE's starting point: an energy initialised from a masked diffusion model, and that model frozen
as the proposal it is trained against (``dlm-train experiment=edlm_nce_demo init_from=<diffusion dir>``).

EDLM §3.3 initialises the energy's transformer from the pretrained denoiser (its blocks already read
partially masked text) and keeps a separate frozen copy to draw negatives: the two must not share weights,
or the optimiser would move the proposal too.
"""

from __future__ import annotations

from torch import Tensor, nn

from dlm.errors import ConfigError
from dlm.io.spec import build
from dlm.models.energy import NCEEnergy

NCE_TARGET = "dlm.models.energy.NCEEnergy"


def energy_from_denoiser(denoiser_spec: dict, state: dict[str, Tensor], *,
                         key: str = "init_from") -> tuple[dict, NCEEnergy, nn.Module]:
    """(the energy's model spec, the energy, the frozen proposal) from a diffusion model's spec and weights.

    The energy is ``NCEEnergy(backbone=<the denoiser's Transformer arguments>)`` with every weight of the
    denoiser but its vocabulary head copied into ``.body`` (the head is replaced by pooling + a scalar
    MLP that starts at zero); the proposal is the denoiser itself, rebuilt, in eval mode, frozen.
    The spec's backbone carries no ``_target_``: a model directory builds specs recursively, and the
    backbone is ``NCEEnergy``'s keyword arguments, not a module.
    """
    backbone = {k: v for k, v in denoiser_spec.items() if k != "_target_"}
    spec = {"_target_": NCE_TARGET, "backbone": backbone}
    energy = build(spec)
    body_state = {k: v for k, v in state.items() if not k.startswith("lm_head.")}
    try:
        energy.body.load_state_dict(body_state)
    except RuntimeError as e:
        raise ConfigError(f"{key}: the diffusion model's weights do not fit an energy body built from its own spec "
                          f"({e}); re-export the diffusion model with dlm-train") from e
    proposal = build(denoiser_spec)
    proposal.load_state_dict(state)
    for p in proposal.parameters():
        p.requires_grad_(False)
    return spec, energy, proposal.eval()
