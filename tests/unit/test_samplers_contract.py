"""The sampler contract, run against every conf/sampler config (DESIGN §6)."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from hydra_helpers import compose_config
from mocks import CachedContext, CountingModel, OracleDenoiser, PairEnergy, RandomDenoiser

from dlm.cli import CONF_DIR
from dlm.errors import ConfigError

SAMPLERS = sorted(p.stem for p in (Path(CONF_DIR) / "sampler").glob("*.yaml") if p.stem != "autoregressive")
V, MASK, L, B = 5, 4, 10, 4


def build(name: str, **overrides):
    cfg = compose_config("train", [f"+sampler={name}"] + [f"sampler.{k}={v}" for k, v in overrides.items()])
    return instantiate(cfg.sampler)


def sampler_for(name):
    if name == "block_guided":  # the classifier path is mandatory (???); the contract is the sampler's
        return build(name, guidance="null")
    if name == "block_dynamic":  # the saved-policy path is mandatory: drive it with a constant policy
        from dlm.models.block_policy import FixedBlockSize

        cfg = compose_config("train", ["+sampler=block_dynamic", "sampler.block_size_policy=null"])
        return instantiate(cfg.sampler, block_size_policy=FixedBlockSize(2))
    if name == "edlm":  # the energy directory is mandatory (???): a fixed non-factorised energy stands in
        cfg = compose_config("train", ["+sampler=edlm"])
        return instantiate(cfg.sampler, energy=PairEnergy(L, V, MASK))
    if name in ("lsd", "lsd_plus"):  # the schedule directory is mandatory (???): the identity schedule stands in
        from dlm.samplers.learned_schedule import StepSchedule

        cfg = compose_config("train", [f"+sampler={name}", "sampler.schedule=null"])
        return instantiate(cfg.sampler, schedule=StepSchedule(4, learn_grid=name == "lsd_plus"))
    if name in REWARD_SAMPLERS:  # the reward is mandatory (???): GC content over the 4 letters before the mask
        from dlm.rewards.toy import GCContent

        cfg = compose_config("train", [f"+sampler={name}", "sampler.reward=null"] + REWARD_SAMPLERS[name])
        return instantiate(cfg.sampler, reward=GCContent())
    return build(name, window=6, stride=3) if name == "strided" else build(name)


# design samplers with their cost knobs shrunk (the contract is the same at any size)
REWARD_SAMPLERS = {"svdd": ["sampler.num_candidates=3", "sampler.num_steps=16"],
                   "smc": ["sampler.num_particles=3", "sampler.num_steps=16"],
                   "best_of_n": ["sampler.num_candidates=3", "sampler.base.num_steps=16"],
                   "reward_guided": ["sampler.num_steps=16"]}


def as_model(name, model):
    """Block samplers need block structure: the mock behind a token-id "KV cache" (block size 3)."""
    return CachedContext(model, block_size=3) if name.startswith("block_") else model


@pytest.mark.parametrize("name", SAMPLERS)
def test_contract(name):
    sampler = sampler_for(name)
    # constant rows (token b) so windows of the strided sampler see shift-invariant targets
    x0 = (torch.arange(B)[:, None] % MASK).expand(B, L).contiguous()
    oracle = CountingModel(OracleDenoiser(x0, V, MASK))
    prompt = x0[:, :2]
    out = sampler(as_model(name, oracle), batch_size=B, length=L, prompt=prompt,
                  generator=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (B, L)
    assert torch.equal(out.tokens, x0), "an oracle denoiser must be reproduced exactly"
    assert out.nfe == oracle.calls, "nfe must count network calls honestly"
    assert out.seconds >= 0

    model = as_model(name, RandomDenoiser(L, V, MASK, seed=1))
    a = sampler(model, batch_size=B, length=L, prompt=prompt, generator=torch.Generator().manual_seed(3)).tokens
    b = sampler(model, batch_size=B, length=L, prompt=prompt, generator=torch.Generator().manual_seed(3)).tokens
    assert torch.equal(a, b), "same generator must give the same output"
    assert not (a == MASK).any(), "no mask may be left"
    assert torch.equal(a[:, :2], prompt), "the prompt must be kept"


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n != "strided"])
def test_infilling_keeps_given_tokens(name):
    template = torch.tensor([[1, MASK, 2, MASK, MASK, 3, MASK, MASK, 0, MASK]]).expand(2, -1)
    model = as_model(name, RandomDenoiser(L, V, MASK, seed=2))
    out = sampler_for(name)(model, batch_size=2, length=L, prompt=template,
                            generator=torch.Generator().manual_seed(0))
    given = template != MASK
    assert torch.equal(out.tokens[given], template[given]) and not (out.tokens == MASK).any()


def tiny_conv():
    from dlm.models.conv import ConvDenoiser

    torch.manual_seed(0)
    return ConvDenoiser(vocab_size=V, mask_id=MASK, dim=16, kernel_size=3, dilations=[1, 2], num_stacks=1).eval()


@pytest.mark.parametrize("name", [n for n in SAMPLERS if not n.startswith("block_")])
def test_contract_on_the_conv_denoiser(name):
    """Every masked-diffusion sampler decodes the dilated CNN (block samplers need block-causal attention)."""
    model, prompt = tiny_conv(), torch.tensor([[1, 2]] * B)
    runs = [sampler_for(name)(model, batch_size=B, length=L, prompt=prompt, generator=torch.Generator().manual_seed(3))
            for _ in range(2)]
    a = runs[0].tokens
    assert a.shape == (B, L) and not (a == MASK).any() and torch.equal(a[:, :2], prompt)
    assert torch.equal(a, runs[1].tokens), "same generator must give the same output"
    assert runs[0].nfe >= 1


def test_length_beyond_context_and_long_prompt_are_refused():
    model = RandomDenoiser(L, V, MASK)
    model.max_seq_len = L
    with pytest.raises(ConfigError, match="length=12 exceeds the model.s context model.max_seq_len=10"):
        build("first_hitting")(model, batch_size=1, length=12)
    with pytest.raises(ConfigError, match="prompt length 11"):
        build("first_hitting")(model, batch_size=1, length=10, prompt=torch.zeros(11, dtype=torch.long))
    strided = build("strided", stride=4)
    out = strided(RandomDenoiser(L, V, MASK), batch_size=1, length=10, generator=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (1, 10)


def test_unknown_sampler_lists_choices():
    with pytest.raises(Exception, match="first_hitting"):
        compose_config("train", ["+sampler=first_hiting"])
