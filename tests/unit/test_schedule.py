import pytest
import torch

from dlm.diffusion.schedule import CosineSchedule, LinearSchedule, LogLinearSchedule, nelbo_weight

SCHEDULES = [LogLinearSchedule(), LinearSchedule(sigma_max=10.0), CosineSchedule()]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_alpha_prime_matches_autograd(schedule):
    t = torch.linspace(0.01, 0.99, 41, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(schedule.alpha(t).sum(), t)
    torch.testing.assert_close(schedule.alpha_prime(t.detach()), grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_endpoints_and_inverse(schedule):
    ends = schedule.alpha(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert abs(ends[0].item() - 1.0) < 1e-12 and abs(ends[1].item()) < 1e-12
    t = torch.linspace(0.0, 1.0, 21, dtype=torch.float64)
    a = schedule.alpha(t)
    assert torch.all(a[1:] <= a[:-1]), "alpha must be non-increasing"
    torch.testing.assert_close(schedule.t_of_alpha(a), t, rtol=0, atol=1e-7)


def test_loglinear_weight_is_one_over_t():
    t = torch.linspace(1e-3, 1 - 1e-3, 50, dtype=torch.float64)
    torch.testing.assert_close(nelbo_weight(LogLinearSchedule(), t), 1 / t)
