"""EDLM energies from directories: an AR model directory becomes an AR / carry-over AR energy, an
energy directory (family ``ENERGY``, written by ``dlm-train experiment=edlm_nce_demo``) an NCE energy.

``load_energy`` is the Hydra target of ``conf/sampler/edlm.yaml`` (``sampler.energy.path=<dir>``) and
of ``dlm-eval-ppl energy=<dir>``. Given the denoiser's directory it refuses an energy whose tokenizer
differs from the denoiser's (ids and vocabulary, compared by fingerprint), naming both tokenizers:
an energy reading other token ids would score nonsense and still return numbers.
A Hugging Face causal LM is used through ``dlm-convert src=<hf dir> dst=<dir>`` (which writes its
tokenizer next to the weights, so the comparison above can be made).
"""

from __future__ import annotations

from pathlib import Path

import torch

from dlm.errors import CheckpointError, ConfigError
from dlm.io.hub import resolve_model_path
from dlm.io.model_dir import load_model_dir, save_model_dir
from dlm.io.record import Family
from dlm.io.tokenizer_files import tokenizer_of
from dlm.models.energy import ARResidualEnergy, EnergyModel


def save_energy(path: str | Path, *, energy: torch.nn.Module, model_spec: dict, tokenizer, config_yaml: str | None = None,
                step: int | None = None) -> Path:
    """Write a trained NCE energy as a model directory of family ``ENERGY``."""
    return save_model_dir(path, model=energy, model_spec=model_spec, tokenizer=tokenizer, family=Family.ENERGY,
                          config_yaml=config_yaml, step=step)


def check_same_tokenizer(energy_path: str | Path, denoiser_path: str | Path, *,
                         key: str = "sampler.energy.path") -> None:
    """The energy's tokenizer must be the denoiser's: same fingerprint (ids, vocabulary, special tokens)."""
    mine, theirs = tokenizer_of(energy_path, key=key), tokenizer_of(denoiser_path, key="model")
    if mine.fingerprint() != theirs.fingerprint():
        raise ConfigError(f"{key}: the energy {energy_path} uses tokenizer {mine.name!r} (vocab_size={mine.vocab_size}) but "
                          f"the denoiser {denoiser_path} uses {theirs.name!r} (vocab_size={theirs.vocab_size}); an "
                          "energy must read the denoiser's token ids: train the AR / energy model with the "
                          "denoiser's tokenizer (dlm-train tokenizer_from=<denoiser dir>)")


def load_energy(path: str | Path, *, carry_over: bool = False, denoiser: str | Path | None = None,
                device: str | torch.device = "cpu", key: str = "sampler.energy.path",
                carry_over_key: str = "sampler.energy.carry_over") -> EnergyModel:
    """The energy (eval mode, frozen) stored at ``path``.

    An AR model directory (kind "ar") gives ``ARResidualEnergy(carry_over=...)``; an energy directory
    gives its ``NCEEnergy`` (``carry_over`` must stay False: it describes AR energies only).
    ``denoiser``: the denoiser's model directory, whose tokenizer the energy's must equal. ``key`` /
    ``carry_over_key``: how the calling command spells these settings (named in refusals). ``path`` and
    ``denoiser`` may be Hugging Face Hub ids (``dlm.io.hub``).
    """
    path = resolve_model_path(path)
    if (path / "config.json").is_file() and not (path / "model.json").is_file():
        raise ConfigError(f"{key}={path} is a Hugging Face directory; convert it first: dlm-convert "
                          f"src={path} dst=<dir> (the AR energy needs the model with its tokenizer in dlm's layout)")
    loaded = load_model_dir(path, device=device)
    if denoiser is not None:
        check_same_tokenizer(path, denoiser, key=key)
    if loaded.family is Family.AR:
        energy = ARResidualEnergy(loaded.model, carry_over=carry_over, ar_softmax=loaded.record.ar_softmax)
    elif loaded.family is Family.ENERGY:
        if carry_over:
            raise ConfigError(f"{carry_over_key}=true describes AR energies, but {path} holds a trained NCE energy; "
                              f"drop {carry_over_key} or point {key} at an AR model directory")
        energy = loaded.model
    else:
        raise CheckpointError(f"{key}={path} holds a {loaded.family.kind!r} model; an energy is an AR "
                              "model directory (kind 'ar') or an EDLM energy directory (kind 'energy', from "
                              "dlm-train experiment=edlm_nce_demo)")
    for p in energy.parameters():
        p.requires_grad_(False)
    return energy.eval()
