"""Block-size policy and its REINFORCE trainer, driven by a fake block sampler (no real BlockSampler needed)."""

import pytest
import torch
import torch.nn.functional as F
from mocks import BigramAR, FakeBlockSampler

from dlm.errors import ConfigError
from dlm.models.block_policy import BlockSizePolicy
from dlm.objectives.block_policy import ARLogLikelihood, BlockPolicyTrainer

DIM = 8


def prob_of(policy: BlockSizePolicy, size: int, n: int = 64) -> float:
    """Mean π(size | s) over random states."""
    g = torch.Generator().manual_seed(123)
    states = torch.stack([policy.state(torch.randn(4, DIM, generator=g), torch.rand(4, generator=g))
                          for _ in range(n)])
    with torch.no_grad():
        return policy(states).softmax(-1)[:, policy.sizes.index(size)].mean().item()


def train(reward_fn, *, step_cost: float, steps: int = 40, seed: int = 0) -> BlockSizePolicy:
    torch.manual_seed(seed)
    policy = BlockSizePolicy(sizes=[2, 4], dim=DIM, hidden_dim=16)
    trainer = BlockPolicyTrainer(policy=policy, sampler=FakeBlockSampler(policy), model=None, batch_size=4,
                                 length=8, reward_fn=reward_fn, step_cost=step_cost, lr=0.05, baseline_momentum=0.8)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        metrics = trainer.step(generator=g)
    assert {"loss", "baseline", "reward", "return", "nfe_per_token", "mean_block_size"} <= set(metrics)
    return policy.eval()


def test_log_prob_matches_manual_log_softmax():
    torch.manual_seed(0)
    policy = BlockSizePolicy(sizes=[4, 8, 16], dim=DIM)
    torch.nn.init.normal_(policy.mlp[-1].weight)  # non-uniform policy
    feats = torch.randn(5, DIM + 1)
    actions = torch.tensor([0, 2, 1, 1, 0])
    logits = policy.mlp(F.layer_norm(feats, (DIM + 1,), policy.norm.weight, policy.norm.bias))
    manual = logits - logits.exp().sum(-1, keepdim=True).log()
    torch.testing.assert_close(policy.log_prob(feats, actions), manual[torch.arange(5), actions])
    assert torch.equal(policy.action_index([16, 4, 8]), torch.tensor([2, 0, 1]))
    with pytest.raises(ConfigError, match="sizes"):
        policy.action_index([3])


def test_next_block_size_samples_in_train_and_takes_argmax_in_eval():
    torch.manual_seed(0)
    policy = BlockSizePolicy(sizes=[2, 4, 8], dim=DIM)
    with torch.no_grad():
        policy.mlp[-1].bias.copy_(torch.tensor([0.0, 3.0, 0.0]))
    h, e = torch.randn(3, DIM), torch.rand(3)
    draws = [policy.next_block_size(h, e, generator=torch.Generator().manual_seed(i)) for i in range(200)]
    assert set(draws) <= {2, 4, 8} and len(set(draws)) > 1 and draws.count(4) > 100
    again = [policy.next_block_size(h, e, generator=torch.Generator().manual_seed(i)) for i in range(200)]
    assert draws == again, "same generator, same size"
    assert policy.eval().next_block_size(h, e) == 4
    assert BlockSizePolicy(sizes=[2, 4], dim=DIM).eval().next_block_size(h, e) in (2, 4)  # uniform at init
    with pytest.raises(ConfigError, match="dim"):
        policy.next_block_size(torch.randn(3, DIM + 1), e)


def test_reinforce_moves_probability_to_the_rewarded_block_size():
    def reward(tokens):  # larger blocks -> higher reward (tokens hold the block size)
        return tokens.float().mean(-1)

    before = prob_of(BlockSizePolicy(sizes=[2, 4], dim=DIM, hidden_dim=16), 4)
    after = prob_of(train(reward, step_cost=0.0), 4)
    assert before == pytest.approx(0.5) and after > 0.8, after


def test_step_cost_lowers_the_preference_for_small_blocks():
    def reward(tokens):  # quality prefers small blocks: size 2 -> -0.5, size 4 -> -1.0 per token
        return -tokens.float().mean(-1) / 4

    # 2 steps per block: nfe per token 1.0 (size 2) vs 0.5 (size 4); step_cost=2 outweighs the quality gap
    free = prob_of(train(reward, step_cost=0.0), 2)
    costly = prob_of(train(reward, step_cost=2.0), 2)
    assert free > 0.8 and costly < 0.2, (free, costly)


def test_default_reward_is_ar_per_token_log_likelihood():
    ar = BigramAR(vocab_size=6, mask_id=5)  # the fake sampler writes tokens 2 and 4
    tokens = torch.randint(0, 5, (3, 6))
    log_p = ar(tokens)[:, :-1, :5].log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1).mean(-1)
    torch.testing.assert_close(ARLogLikelihood(ar)(tokens), log_p)
    # a judge whose record says "full" (a converted HF model) is normalised over every row, mask included
    full = ar(tokens)[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1).mean(-1)
    torch.testing.assert_close(ARLogLikelihood(ar, ar_softmax="full")(tokens), full)
    assert not torch.allclose(full, log_p)  # the two normalisations differ on this model
    policy = BlockSizePolicy(sizes=[2, 4], dim=DIM)
    trainer = BlockPolicyTrainer(policy=policy, sampler=FakeBlockSampler(policy), model=None, batch_size=2,
                                 length=8, ar_model=ar)
    metrics = trainer.step(generator=torch.Generator().manual_seed(0))
    assert metrics["reward"] < 0 and metrics["loss"] == 0.0  # first step: baseline = return, no update


def test_trainer_validates_its_inputs():
    policy = BlockSizePolicy(sizes=[2, 4], dim=DIM)
    with pytest.raises(ValueError, match="exactly one"):
        BlockPolicyTrainer(policy=policy, sampler=FakeBlockSampler(policy), model=None, batch_size=1, length=8)

    def broken(model, **kw):
        out = FakeBlockSampler(policy)(model, **kw)
        out.info["policy_features"] = out.info["policy_features"][1:]
        return out

    trainer = BlockPolicyTrainer(policy=policy, sampler=broken, model=None, batch_size=1, length=8,
                                 reward_fn=lambda t: t.float().mean(-1))
    with pytest.raises(ValueError, match="policy states"):
        trainer.step()
    trainer = BlockPolicyTrainer(policy=policy, sampler=FakeBlockSampler(policy), model=None, batch_size=1,
                                 length=8, reward_fn=lambda t: torch.full((t.shape[0],), float("-inf")))
    with pytest.raises(ValueError, match="non-finite"):
        trainer.step()


def test_policy_round_trips_through_a_model_dir_and_other_families_are_refused(tmp_path):
    from dlm.data.tokenizers.char import CharTokenizer
    from dlm.errors import CheckpointError
    from dlm.io.block_policy_dir import load_block_policy, save_block_policy
    from dlm.io.classifier_dir import load_classifier

    torch.manual_seed(0)
    policy = BlockSizePolicy(sizes=[2, 4, 8], dim=DIM, hidden_dim=16)
    torch.nn.init.normal_(policy.mlp[-1].weight)
    path = save_block_policy(tmp_path / "policy", policy=policy, tokenizer=CharTokenizer(), extra={"step_cost": 0.1})
    loaded = load_block_policy(path)
    assert not loaded.training and loaded.sizes == [2, 4, 8] and loaded.hidden_dim == 16
    states = torch.randn(5, DIM + 1)
    torch.testing.assert_close(loaded(states), policy(states), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="'block_policy' model, not a classifier"):
        load_classifier(path)
