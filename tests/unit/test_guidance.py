"""Classifier guidance restricted to the current block (research note §4.4, C14) and the noisy classifier."""

import pytest
import torch
import torch.nn.functional as F
from mocks import CountZeros, ExactDenoiser, LogisticScore, LogLinearScore
from torch import Tensor, nn

from dlm.data.tokenizers.char import CharTokenizer
from dlm.errors import CheckpointError
from dlm.io.classifier_dir import load_classifier, save_classifier
from dlm.models.classifier import SequenceClassifier
from dlm.objectives.classifier import NoisyClassifierLoss
from dlm.samplers.guidance import ClassifierGuidance

V, MASK, P, LB = 6, 5, 3, 4  # vocab incl. mask, mask id, prefix length, block length


def small_classifier(seed: int = 0, std: float = 0.3) -> SequenceClassifier:
    torch.manual_seed(seed)
    clf = SequenceClassifier(vocab_size=V, mask_id=MASK, n_classes=2, dim=16, n_layers=1, n_heads=2, max_seq_len=16)
    nn.init.normal_(clf.head.weight, std=std)  # a non-trivial p(y | x) (the head starts at zero)
    return clf.eval()


def setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B = 3
    tokens = torch.randint(0, MASK, (B, P + LB), generator=g)
    masked = torch.rand(B, LB, generator=g) < 0.6
    masked[0, 0], masked[1, -1] = True, False  # at least one masked and one unmasked position
    tokens[:, P:][masked] = MASK
    log_probs = torch.randn(B, LB, V, generator=g).log_softmax(-1)
    log_probs[..., MASK] = float("-inf")
    log_probs = log_probs.log_softmax(-1)
    return log_probs, tokens, masked


@pytest.mark.parametrize("mode", ["exact", "first_order"])
def test_gamma_zero_is_bitwise_identity(mode):
    log_probs, tokens, _ = setup()
    out = ClassifierGuidance(classifier=small_classifier(), target_class=1, gamma=0.0, mode=mode)(
        log_probs, tokens, P, MASK)
    assert torch.equal(out, log_probs)


@pytest.mark.parametrize("target", [0, 1])
def test_exact_equals_first_order_for_log_linear_classifier(target):
    log_probs, tokens, masked = setup(1)
    clf = LogLinearScore(P + LB, V)
    exact = ClassifierGuidance(classifier=clf, target_class=target, gamma=1.7, mode="exact")(log_probs, tokens, P, MASK)
    first = ClassifierGuidance(classifier=clf, target_class=target, gamma=1.7, mode="first_order")(
        log_probs, tokens, P, MASK)
    torch.testing.assert_close(exact, first, atol=1e-5, rtol=0)
    assert not torch.allclose(exact[masked], log_probs[masked], atol=1e-2), "guidance must change masked rows"


def test_first_order_approximates_exact_for_nonlinear_classifier():
    log_probs, tokens, masked = setup(2)
    clf = LogisticScore(P + LB, V, seed=3)
    with torch.no_grad():
        clf.w.mul_(0.2)  # substitutions move the score by O(0.3): the Taylor remainder is second order
    kw = dict(classifier=clf, target_class=1, gamma=0.5)
    exact = ClassifierGuidance(mode="exact", **kw)(log_probs, tokens, P, MASK)
    first = ClassifierGuidance(mode="first_order", **kw)(log_probs, tokens, P, MASK)
    finite = masked[..., None] & torch.isfinite(log_probs)
    shift = (exact - log_probs)[finite].abs().max()
    err = (first - exact)[finite].abs().max()
    assert shift > 1e-2 and err < 0.2 * shift, (shift, err)


def test_exact_matches_analytic_tilt_at_single_masked_position():
    clf, gamma, y = small_classifier(seed=4, std=1.0), 2.5, 0
    tokens = torch.tensor([[0, 3, 1, 2, MASK, 4, 0]])
    log_probs = torch.tensor([[0.1, 0.3, 0.2, 0.25, 0.15, 0.0]]).log()
    full = torch.zeros(1, LB, V).log_softmax(-1)
    full[0, 1] = log_probs[0]
    out = ClassifierGuidance(classifier=clf, target_class=y, gamma=gamma, mode="exact")(full, tokens, P, MASK)
    with torch.no_grad():  # enumerate p(v) p(y | z^{ℓ<-v})^γ / Z by hand
        weights = []
        for v in range(V):
            z = tokens.clone()
            z[0, P + 1] = v
            weights.append(log_probs[0, v].exp() * clf.log_prob(z)[0, y].exp() ** gamma)
        analytic = torch.stack(weights) / sum(weights)
    torch.testing.assert_close(out[0, 1].exp(), analytic, atol=1e-6, rtol=1e-5)
    assert out[0, 1, MASK] == float("-inf")


@pytest.mark.parametrize("mode", ["exact", "first_order"])
def test_unmasked_positions_unchanged_and_rows_normalised(mode):
    log_probs, tokens, masked = setup(5)
    out = ClassifierGuidance(classifier=small_classifier(), target_class=0, gamma=3.0, mode=mode)(
        log_probs, tokens, P, MASK)
    assert out.shape == log_probs.shape and out.dtype == torch.float32
    assert torch.equal(out[~masked], log_probs[~masked])
    torch.testing.assert_close(out.logsumexp(-1), torch.zeros(masked.shape), atol=1e-5, rtol=0)
    assert (out[..., MASK] == float("-inf")).all()


def test_long_context_is_cropped_to_the_classifier_window():
    clf = small_classifier()
    log_probs, tokens, _ = setup(6)
    long = torch.cat([torch.zeros(3, 20, dtype=torch.long), tokens], 1)  # 27 > max_seq_len=16
    guide = ClassifierGuidance(classifier=clf, target_class=1, gamma=1.0, mode="first_order")
    torch.testing.assert_close(guide(log_probs, long, 20 + P, MASK), guide(log_probs, long[:, -16:], 16 - LB, MASK))


def test_noisy_classifier_beats_chance_on_masked_inputs():
    # label = "token 1 occurs"; balanced: label-0 rows never contain 1, label-1 rows contain it at least once
    torch.manual_seed(0)
    L, real = 8, MASK

    def batch(n: int):
        labels = torch.randint(0, 2, (n,))
        x = torch.randint(0, real - 1, (n, L))
        x = torch.where(x >= 1, x + 1, x)  # tokens {0, 2, 3, 4}
        sprinkle = (torch.rand(n, L) < 0.3) & labels[:, None].bool()
        sprinkle[torch.arange(n), torch.randint(0, L, (n,))] |= labels.bool()
        return {"input_ids": torch.where(sprinkle, 1, x), "labels": labels}

    clf = SequenceClassifier(vocab_size=V, mask_id=MASK, n_classes=2, dim=32, n_layers=1, n_heads=2, max_seq_len=L)
    loss_fn = NoisyClassifierLoss()
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    for _ in range(120):
        out = loss_fn(clf, batch(64))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    clf.eval()
    test = batch(2000)
    xt = torch.where(torch.rand(test["input_ids"].shape) < 0.3, MASK, test["input_ids"])  # t = 0.3
    with torch.no_grad():
        acc = (clf(xt).argmax(-1) == test["labels"]).float().mean()
    assert acc > 0.7, acc


@pytest.mark.parametrize("mode", ["exact", "first_order"])
def test_guidance_shifts_samples_toward_target_class(mode):
    real, L, B = 3, 4, 1000
    g = torch.Generator().manual_seed(0)
    joint = torch.distributions.Dirichlet(torch.full((real**L,), 5.0)).sample().reshape((real,) * L)
    den = ExactDenoiser(joint)  # tokens 0..2, mask id 3
    mask_id = den.mask_id

    def sample(gamma: float) -> Tensor:
        guide = ClassifierGuidance(classifier=CountZeros(), target_class=1, gamma=gamma, mode=mode)
        x = torch.full((B, L), mask_id)
        x[:, 0] = 1  # committed context of one token, then a block of 3
        for pos in torch.randperm(L - 1, generator=g).tolist():  # one position per step, random order
            lp = den(x).float()[:, 1:].log_softmax(-1)
            lp[..., mask_id] = float("-inf")
            lp = guide(lp.log_softmax(-1), x, 1, mask_id)
            x[:, 1 + pos] = torch.multinomial(lp[:, pos].exp(), 1, generator=g).squeeze(-1)
        return ((x == 0).sum(-1) >= 2).float().mean()

    base, guided = sample(0.0), sample(2.0)
    assert guided > base + 0.3, (base, guided)


def test_classifier_round_trips_through_a_model_dir(tmp_path):
    tok = CharTokenizer()
    spec = {"_target_": "dlm.models.classifier.SequenceClassifier", "vocab_size": tok.vocab_size,
            "mask_id": tok.mask_id, "n_classes": 3, "dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 32}
    clf = SequenceClassifier(**{k: v for k, v in spec.items() if k != "_target_"})
    nn.init.normal_(clf.head.weight)
    path = save_classifier(tmp_path / "clf", classifier=clf, model_spec=spec, tokenizer=tok)
    loaded = load_classifier(path)
    ids = torch.tensor([tok.encode("hello")])
    assert not loaded.training
    torch.testing.assert_close(loaded(ids), clf(ids), rtol=0, atol=0)
    soft = F.one_hot(ids, tok.vocab_size).float()
    torch.testing.assert_close(loaded(soft), clf(ids), rtol=1e-5, atol=1e-5)  # soft one-hot input works

    from dlm.io.model_dir import save_model_dir
    from dlm.io.record import Family
    save_model_dir(tmp_path / "denoiser", model=clf, model_spec=spec, tokenizer=tok, family=Family.MASKED)
    with pytest.raises(CheckpointError, match="not a classifier"):
        load_classifier(tmp_path / "denoiser")
