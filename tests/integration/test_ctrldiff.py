"""CtrlDiff pieces with the real block sampler: guidance hook, dynamic block sizes, one REINFORCE step, config."""

import pytest
import torch
from hydra.utils import instantiate
from hydra_helpers import compose_config
from mocks import BigramAR

from dlm.data.tokenizers.char import CharTokenizer
from dlm.io.classifier_dir import save_classifier
from dlm.models.block_policy import BlockSizePolicy
from dlm.models.classifier import SequenceClassifier
from dlm.models.transformer import Transformer
from dlm.objectives.block_policy import BlockPolicyTrainer
from dlm.samplers.guidance import ClassifierGuidance

block = pytest.importorskip("dlm.samplers.block")

pytestmark = pytest.mark.slow
V, MASK, L = 12, 11, 16


def denoiser() -> Transformer:
    torch.manual_seed(0)
    return Transformer(vocab_size=V, mask_id=MASK, dim=32, n_layers=1, n_heads=2, max_seq_len=L,
                       attention="block_causal", block_size=4).eval()


def classifier() -> SequenceClassifier:
    torch.manual_seed(1)
    clf = SequenceClassifier(vocab_size=V, mask_id=MASK, n_classes=2, dim=16, n_layers=1, n_heads=2, max_seq_len=L)
    torch.nn.init.normal_(clf.head.weight)
    return clf.eval()


@pytest.mark.parametrize("mode", ["exact", "first_order"])
def test_guided_block_sampling_runs_and_gamma_zero_is_unguided(mode):
    model = denoiser()
    kw = dict(batch_size=3, length=L, generator=None)
    outs = []
    for gamma in (0.0, 2.0):
        guide = ClassifierGuidance(classifier=classifier(), target_class=1, gamma=gamma, mode=mode)
        sampler = block.BlockSampler(block_size=4, guidance=guide)
        outs.append(sampler(model, **{**kw, "generator": torch.Generator().manual_seed(0)}))
    plain = block.BlockSampler(block_size=4)(model, **{**kw, "generator": torch.Generator().manual_seed(0)})
    assert torch.equal(outs[0].tokens, plain.tokens), "gamma = 0 must reproduce the unguided sampler"
    assert outs[1].tokens.shape == (3, L) and not (outs[1].tokens == MASK).any()


def test_policy_chooses_block_sizes_and_trains():
    model = denoiser()
    policy = BlockSizePolicy(sizes=[2, 4], dim=model.dim)
    sampler = block.BlockSampler(block_size=4, block_size_policy=policy)
    out = sampler(model, batch_size=2, length=L, generator=torch.Generator().manual_seed(0))
    sizes, feats = out.info["block_sizes"], out.info["policy_features"]
    assert set(sizes) <= {2, 4} and len(sizes) == len(feats) and not (out.tokens == MASK).any()
    h, e = feats[0]
    assert h.shape == (2, model.dim) and e.shape == (2,)
    trainer = BlockPolicyTrainer(policy=policy, sampler=sampler, model=model, batch_size=2, length=L,
                                 ar_model=BigramAR(V, MASK), step_cost=0.1)
    for _ in range(2):
        metrics = trainer.step(generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(torch.tensor(metrics["loss"]))


def test_block_guided_config_builds_from_a_classifier_dir(tmp_path):
    tok = CharTokenizer()
    spec = {"_target_": "dlm.models.classifier.SequenceClassifier", "vocab_size": tok.vocab_size,
            "mask_id": tok.mask_id, "n_classes": 2, "dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 64}
    clf = SequenceClassifier(**{k: v for k, v in spec.items() if k != "_target_"})
    path = save_classifier(tmp_path / "clf", classifier=clf, model_spec=spec, tokenizer=tok)
    cfg = compose_config("train", ["+sampler=block_guided", f"sampler.guidance.classifier.path={path}"])
    sampler = instantiate(cfg.sampler)
    assert isinstance(sampler, block.BlockSampler)
