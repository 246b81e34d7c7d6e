"""Golden samples: every conf/sampler config keeps its tokens and nfe bit for bit across refactors.

The fixture ``tests/fixtures/golden_samplers.json`` was written by this file from the sampler code
as it stood before the sampler-seams refactor (``DLM_WRITE_GOLDEN=1 pytest tests/unit/test_samplers_golden.py``
rewrites it: do that only for an intended change of samples, and say so in the commit). Each case
runs one config on a fixed model with a fixed generator: mock denoisers (time-free and
time-conditioned) and tiny random-init transformers (bidirectional, block-causal with a real KV
cache, causal for the AR sampler), with and without a prompt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from hydra_helpers import compose_config
from mocks import BigramAR, CachedContext, PairEnergy, RandomDenoiser

from dlm.cli import CONF_DIR
from dlm.models.block_policy import FixedBlockSize
from dlm.models.transformer import Transformer
from dlm.rewards.toy import GCContent
from dlm.samplers.learned_schedule import StepSchedule

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "golden_samplers.json"
SAMPLERS = sorted(p.stem for p in (Path(CONF_DIR) / "sampler").glob("*.yaml"))
V, MASK, L, B = 7, 6, 12, 3
# num_steps overrides keep the 1000-step reference loop cheap; every other key is the config's own
STEPS = {"ancestral": 24, "ancestral_fp32_reference": 24, "ancestral_cached": 24,
         "ancestral_batch_cached": 24, "tau_leaping": 16, "tau_leaping_euler": 16, "edlm": 24}
# design samplers (issue 13) with their cost knobs shrunk
DESIGN = {"svdd": ["sampler.num_steps=24", "sampler.num_candidates=3"],
          "smc": ["sampler.num_steps=24", "sampler.num_particles=3"],
          "best_of_n": ["sampler.base.num_steps=24", "sampler.num_candidates=3"],
          "reward_guided": ["sampler.num_steps=24"]}


def sampler_for(name: str):
    overrides = [f"+sampler={name}"]
    if name in STEPS:
        overrides.append(f"sampler.num_steps={STEPS[name]}")
    if name == "strided":
        overrides += ["sampler.window=8", "sampler.stride=4"]
    if name == "block_guided":
        overrides.append("sampler.guidance=null")
    if name == "block_dynamic":
        overrides.append("sampler.block_size_policy=null")
    if name in ("lsd", "lsd_plus"):  # the identity schedule: the 24-step ancestral sampler's samples, bit for bit
        overrides.append("sampler.schedule=null")
    cfg = compose_config("train", overrides)
    extra = {"block_size_policy": FixedBlockSize(2)} if name == "block_dynamic" else {}
    if name == "edlm":  # a fixed non-factorised energy stands in for the AR / NCE model directory
        extra = {"energy": PairEnergy(L, V, MASK, seed=3)}
    if name in ("lsd", "lsd_plus"):
        extra = {"schedule": StepSchedule(24, learn_grid=name == "lsd_plus")}
    if name in DESIGN:  # the reward is mandatory (???): GC content over the 4 letters 0..3
        cfg = compose_config("train", overrides + ["sampler.reward=null"] + DESIGN[name])
        extra = {"reward": GCContent()}
    return instantiate(cfg.sampler, **extra)


def transformer(attention: str, *, time_conditioned: bool = False, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(vocab_size=V, mask_id=MASK, dim=16, n_layers=2, n_heads=2, max_seq_len=12,
                       attention=attention, block_size=3 if attention == "block_causal" else None,
                       time_conditioned=time_conditioned, init_std=0.5).eval()


def models_for(name: str) -> dict:
    if name == "autoregressive":
        return {"bigram": BigramAR(V, MASK, seed=1), "transformer": transformer("causal")}
    if name.startswith("block_"):
        return {"random": CachedContext(RandomDenoiser(L, V, MASK, seed=1), block_size=3),
                "transformer": transformer("block_causal", seed=1),
                "transformer_t": transformer("block_causal", time_conditioned=True, seed=2)}
    return {"random": RandomDenoiser(L, V, MASK, seed=1),
            "random_t": RandomDenoiser(L, V, MASK, seed=2, time_conditioned=True),
            "transformer": transformer("bidirectional", seed=1),
            "transformer_t": transformer("bidirectional", time_conditioned=True, seed=2)}


def run_cases(name: str) -> dict:
    sampler = sampler_for(name)
    out = {}
    prompts = {"prompt": torch.tensor([1, 2]),
               "infill": torch.tensor([[0, MASK, 3, MASK, 5]] * B)}
    for model_name, model in models_for(name).items():
        for prompt_name, prompt in prompts.items():
            if name in ("autoregressive", "strided") and prompt_name == "infill":
                continue  # left-to-right and windowed samplers take plain prompts
            res = sampler(model, batch_size=B, length=L, prompt=prompt, generator=torch.Generator().manual_seed(11))
            out[f"{model_name}/{prompt_name}"] = {"tokens": res.tokens.tolist(), "nfe": int(res.nfe)}
    return out


@pytest.fixture(scope="module")
def golden() -> dict:
    if os.environ.get("DLM_WRITE_GOLDEN") == "1":
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps({n: run_cases(n) for n in SAMPLERS}, indent=1, sort_keys=True) + "\n")
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", SAMPLERS)
def test_samples_and_nfe_are_unchanged(name, golden):
    assert name in golden, f"{name} has no golden record: a new sampler config needs DLM_WRITE_GOLDEN=1 once"
    got = run_cases(name)
    assert sorted(got) == sorted(golden[name])
    for case, want in golden[name].items():
        assert got[case]["nfe"] == want["nfe"], f"{name} {case}: nfe {got[case]['nfe']} != golden {want['nfe']}"
        assert got[case]["tokens"] == want["tokens"], f"{name} {case}: tokens differ from the golden record"


def test_golden_record_covers_every_config(golden):
    assert sorted(golden) == SAMPLERS
