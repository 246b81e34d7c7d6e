"""Loss identities that fail when a weight, sign or carry-over is wrong."""

import itertools
import math

import pytest
import torch
from mocks import OracleDenoiser, RandomDenoiser, UniformDenoiser

from dlm.diffusion.posterior import masked_token_nll, subs_log_probs
from dlm.diffusion.schedule import CosineSchedule, LogLinearSchedule
from dlm.errors import ConfigError
from dlm.objectives.ar import AutoregressiveLoss
from dlm.objectives.masked import MaskedDiffusionLoss, target_positions

V, MASK = 6, 5  # 5 real tokens + mask
FORMS = ["nelbo", "t_dce", "lambda_dce", "k_dce"]


def batch(b=8, length=10, seed=0, high=MASK):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, high, (b, length), generator=g)}


@pytest.mark.parametrize("form", ["nelbo", "lambda_dce", "k_dce"])
def test_oracle_denoiser_gives_zero_loss(form):
    data = batch()
    model = OracleDenoiser(data["input_ids"], V, MASK)
    out = MaskedDiffusionLoss(schedule=LogLinearSchedule(), form=form)(model, data, torch.Generator().manual_seed(1))
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)
    assert out.num_tokens.item() == 80


def test_k_dce_uniform_denoiser_is_exactly_n_log_k_per_sample():
    data = batch(high=3)
    model = UniformDenoiser(3, V, MASK)
    loss = MaskedDiffusionLoss(schedule=LogLinearSchedule(), form="k_dce")
    for seed in range(5):  # exact for every draw, not only in expectation
        out = loss(model, data, torch.Generator().manual_seed(seed))
        assert out.loss.item() == pytest.approx(math.log(3), rel=1e-6)


@pytest.mark.parametrize("form", ["nelbo", "lambda_dce"])
@pytest.mark.parametrize("schedule", [LogLinearSchedule(), CosineSchedule()], ids=["loglinear", "cosine"])
def test_uniform_denoiser_gives_log_k_in_expectation(form, schedule):
    data = batch(b=64, high=3)
    model = UniformDenoiser(3, V, MASK)
    loss = MaskedDiffusionLoss(schedule=schedule, form=form, t_min=0.0 if form == "lambda_dce" else 1e-4)
    vals = torch.tensor([loss(model, data, torch.Generator().manual_seed(s)).loss.item() for s in range(300)])
    se = vals.std() / math.sqrt(len(vals))
    assert abs(vals.mean() - math.log(3)) < 3 * se + 2e-3 * math.log(3)


def test_nelbo_equals_radd_t_dse_and_t_dce_per_sample():
    """MDLM NELBO == RADD t-DSE (score entropy with score a*q) per sample; t-DCE literal form."""
    schedule = LogLinearSchedule()
    data = batch(b=6)
    x0 = data["input_ids"]
    model = RandomDenoiser(10, V, MASK, seed=3)
    obj = MaskedDiffusionLoss(schedule=schedule, form="nelbo")
    xt, masked, t, w = obj.corrupt(x0, target_positions(data, False), MASK, torch.Generator().manual_seed(7))
    logits = model(xt)
    nelbo = w * masked_token_nll(logits, x0, masked, MASK).sum(-1)

    alpha = schedule.alpha(t).double()[:, None]
    sigma = (-schedule.alpha_prime(t).double()[:, None]) / alpha  # rate of sigma_bar
    a = alpha / (1 - alpha)
    q = subs_log_probs(logits, MASK).double().exp()[..., :MASK]  # (B, L, N)
    q_x0 = q.gather(-1, x0[..., None]).squeeze(-1)
    dse = sigma * masked * (a * q.sum(-1) - a * torch.log(a * q_x0) + a * (torch.log(a) - 1))
    torch.testing.assert_close(nelbo.double(), dse.sum(-1), rtol=1e-5, atol=1e-5)
    dce = (sigma * masked * a * -torch.log(a * q_x0)).sum(-1)  # RADD Eq. 3.5, literally
    obj_dce = MaskedDiffusionLoss(schedule=schedule, form="t_dce")
    out = obj_dce(model, data, torch.Generator().manual_seed(7))  # same generator -> same t, masks
    assert out.nll_sum.item() == pytest.approx(dce.sum().item(), rel=1e-5)


def exact_nelbo(model, x0):
    """sum_k (1/k) E_{|M|=k} sum_M -log p, by enumerating every mask of one sequence (1, L)."""
    length = x0.shape[1]
    total = 0.0
    for k in range(1, length + 1):
        subsets = list(itertools.combinations(range(length), k))
        for sub in subsets:
            masked = torch.zeros_like(x0, dtype=torch.bool)
            masked[0, list(sub)] = True
            xt = torch.where(masked, torch.full_like(x0, MASK), x0)
            nll = masked_token_nll(model(xt).double(), x0, masked, MASK).sum().item()
            total += nll / k / len(subsets)
    return total


def test_exact_lambda_dce_equals_average_over_all_orders_of_ar_nll():
    """RADD Thm 2 on an enumerable toy: Beta-weighted sum over masks == mean over L! orders."""
    length = 4
    x0 = torch.tensor([[0, 3, 1, 3]])
    model = RandomDenoiser(length, V, MASK, seed=11)
    orders = list(itertools.permutations(range(length)))
    ao = 0.0
    for order in orders:
        for i, pos in enumerate(order):
            masked = torch.zeros_like(x0, dtype=torch.bool)
            masked[0, list(order[i:])] = True  # positions not yet generated
            xt = torch.where(masked, torch.full_like(x0, MASK), x0)
            target = torch.zeros_like(masked)
            target[0, pos] = True
            ao += masked_token_nll(model(xt).double(), x0, target, MASK).sum().item()
    ao /= len(orders)
    assert exact_nelbo(model, x0) == pytest.approx(ao, rel=1e-6)  # float32 log-softmax


def test_all_forms_agree_in_expectation_with_the_exact_nelbo():
    length = 5
    x0 = torch.tensor([[1, 0, 4, 2, 2]])
    data = {"input_ids": x0.repeat(64, 1)}
    model = RandomDenoiser(length, V, MASK, seed=5)
    exact = exact_nelbo(model, x0) / length
    for form in FORMS:
        obj = MaskedDiffusionLoss(schedule=LogLinearSchedule(), form=form, t_min=1e-4)
        vals = torch.tensor([obj(model, data, torch.Generator().manual_seed(s)).loss.item() for s in range(150)])
        se = (vals.std() / math.sqrt(len(vals))).item()
        assert abs(vals.mean().item() - exact) < 3 * se + 2e-3 * exact, (form, vals.mean().item(), exact, se)


def test_padding_and_keep_first_token_are_never_masked_or_scored():
    data = batch(b=4, length=8)
    data["attention_mask"] = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6, [1] * 8])
    obj = MaskedDiffusionLoss(schedule=LogLinearSchedule(), form="k_dce", keep_first_token=True)
    eligible = target_positions(data, True)
    for s in range(20):
        xt, masked, _, _ = obj.corrupt(data["input_ids"], eligible, MASK, torch.Generator().manual_seed(s))
        assert not (masked & ~eligible).any()
        assert (masked.sum(-1) >= 1).all()
    out = obj(UniformDenoiser(3, V, MASK), data, torch.Generator().manual_seed(0))
    assert out.num_tokens.item() == 7 + 4 + 1 + 7


def test_autoregressive_loss_matches_hand_computed_nll():
    from mocks import BigramAR

    data = batch(b=3, length=7)
    model = BigramAR(V, MASK)
    out = AutoregressiveLoss()(model, data)
    x = data["input_ids"]
    total, count = 0.0, 0
    for b in range(3):
        for i in range(6):
            logits = model.table[x[b, i]].detach().clone()
            logits[MASK] = float("-inf")
            total -= torch.log_softmax(logits, -1)[x[b, i + 1]].item()
            count += 1
    assert out.loss.item() == pytest.approx(total / count, rel=1e-6)
    assert out.num_tokens.item() == count


def test_autoregressive_sft_scores_only_the_tokens_outside_the_prompt():
    """sft: the mean next-token NLL over the non-prompt tokens alone; an all-False prompt_mask row is an
    ordinary row; sft=false ignores prompt_mask (negative control: the two differ on a prompted row)."""
    from mocks import BigramAR

    data = batch(b=3, length=7)
    model = BigramAR(V, MASK)
    prompt = torch.zeros(3, 7, dtype=torch.bool)
    prompt[0, :5] = True  # row 0 answers positions 5, 6; rows 1, 2 are ordinary rows
    prompt[2, :] = False
    plain = AutoregressiveLoss()(model, data)
    sft = AutoregressiveLoss(sft=True)(model, {**data, "prompt_mask": prompt})
    per_token = []
    x = data["input_ids"]
    for b in range(3):
        for i in range(6):
            if prompt[b, i + 1]:
                continue
            logits = model.table[x[b, i]].detach().clone()
            logits[MASK] = float("-inf")
            per_token.append(-torch.log_softmax(logits, -1)[x[b, i + 1]].item())
    assert sft.num_tokens.item() == len(per_token) == 2 + 6 + 6
    assert sft.loss.item() == pytest.approx(sum(per_token) / len(per_token), rel=1e-6)
    assert AutoregressiveLoss()(model, {**data, "prompt_mask": prompt}).loss.item() == plain.loss.item()
    assert plain.num_tokens.item() == 18 and sft.loss.item() != pytest.approx(plain.loss.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="prompt_mask"):
        AutoregressiveLoss(sft=True)(model, data)
