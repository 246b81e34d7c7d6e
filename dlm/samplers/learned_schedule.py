"""Learnable sampler schedules (LSD / LSD+, Fu et al. 2025, arXiv 2509.19962) and the sampler that runs one.

``StepSchedule`` holds, for each of the N student steps n = 0..N-1 (from t_n to t_{n+1}):

* c_n = exp(log c_n), a logit temperature: the denoiser's x0 logits are multiplied by c_n;
* kappa_n = exp(log kappa_n), a rate scale: the reveal probability psi = (alpha_s - alpha_t) / (1 - alpha_t)
  becomes min(1, kappa_n psi) (the last step still reveals everything);
* LSD+ only (``learn_grid``): logits u (N,) of the step lengths Delta = (1 - t_min) softmax(u), so that
  t_0 = 1 and t_n = 1 - sum_{k<n} Delta_k (indexing steps from 0; the note's t_n = 1 - sum_{k<=n} Delta_k
  with steps from 1) reach t_N = t_min.

All parameters are zero at init: c = kappa = 1 and the uniform grid, i.e. the plain N-step ancestral
sampler, bit for bit (``timesteps`` builds the grid as the base sampler's ``linspace`` plus a learned
displacement that is exactly 0.0 at u = 0, rather than as 1 - cumsum(Delta), whose rounding differs from
``linspace`` in the last bits). Parameters are float64 like the sampler's grid.

``LearnedScheduleSampler`` is the ancestral sampler (``dlm.samplers.ancestral``) on that grid with those
scalars: no loop of its own. It refuses a model other than the one the schedule was trained for
(``dlm.io.schedule_dir.denoiser_fingerprint``). Training: ``dlm.objectives.lsd``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from dlm.errors import CheckpointError, ConfigError
from dlm.io.schedule_dir import denoiser_fingerprint, read_schedule_dir
from dlm.samplers.ancestral import AncestralSampler, RowCache
from dlm.samplers.categorical import Precision
from dlm.types import Denoiser, NoiseSchedule


@dataclass(frozen=True)
class TrainedFor:
    """Provenance of a loaded schedule: the denoiser fingerprint it was trained for, the noise schedule of
    that denoiser, and the directory it came from."""

    fingerprint: str
    noise_schedule: NoiseSchedule | None
    path: str


class StepSchedule(nn.Module):
    """Per-step scalars c_n, kappa_n and (LSD+) the time grid of an N-step masked-diffusion sampler."""

    def __init__(self, num_steps: int, *, learn_grid: bool = False, learn_rates: bool = False, t_min: float = 0.0) -> None:
        super().__init__()
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ConfigError(f"num_steps={num_steps!r} must be a positive integer (the student's steps)")
        if not 0.0 <= t_min < 1.0:
            raise ConfigError(f"t_min={t_min} must lie in [0, 1): the grid runs from t = 1 down to t_min")
        self.num_steps, self.learn_grid, self.t_min = num_steps, bool(learn_grid), float(t_min)
        zeros = torch.zeros(num_steps, dtype=torch.float64)
        self.log_logit_scales = nn.Parameter(zeros.clone())  # log c_n
        # log kappa_n and u are stored whether trained or not, so every schedule directory has one layout.
        # kappa is off by default: under dlm.objectives.lsd its loss is stationary at kappa = 1 (the teacher's
        # stay mass is exact), and Adam would only dither it by about +-lr around 1
        self.log_rate_scales = nn.Parameter(zeros.clone(), requires_grad=bool(learn_rates))
        self.grid_logits = nn.Parameter(zeros.clone(), requires_grad=self.learn_grid)
        self.trained_for: TrainedFor | None = None

    def logit_scales(self) -> Tensor:
        """c (N,) float64."""
        return self.log_logit_scales.exp()

    def rate_scales(self) -> Tensor:
        """kappa (N,) float64."""
        return self.log_rate_scales.exp()

    def deltas(self) -> Tensor:
        """Delta (N,) = (1 - t_min) softmax(u): positive step lengths summing to 1 - t_min."""
        return (1.0 - self.t_min) * self.grid_logits.softmax(0)

    def timesteps(self) -> Tensor:
        """The grid t (N + 1,) float64, t_0 = 1 > t_1 > ... > t_N = t_min; differentiable in u (LSD+)."""
        u = self.grid_logits
        base = torch.linspace(1.0, self.t_min, self.num_steps + 1, dtype=torch.float64, device=u.device)
        if not self.learn_grid:
            return base
        zero = u.new_zeros(1)
        done = torch.cat([zero, u.softmax(0).cumsum(0)])  # sum_{k<n} softmax(u)_k
        done_at_init = torch.cat([zero, torch.zeros_like(u).softmax(0).cumsum(0)])  # the same at u = 0
        # = 1 - (1 - t_min) * done in exact arithmetic; written as base + displacement so that u = 0 gives
        # the base sampler's grid bit for bit; endpoints pinned (their displacement is 0 up to rounding)
        t = base + (1.0 - self.t_min) * (done_at_init - done)
        return torch.cat([base[:1], t[1:-1], base[-1:]])

    def describe(self) -> dict[str, list[float]]:
        """The learned grid and scalars as plain lists (summary JSON, schedule.json)."""
        with torch.no_grad():
            return {"timesteps": self.timesteps().tolist(), "logit_scales": self.logit_scales().tolist(),
                    "rate_scales": self.rate_scales().tolist()}


def load_step_schedule(path: str | Path) -> StepSchedule:
    """The StepSchedule of a schedule directory (``dlm.io.schedule_dir``), with its ``trained_for``."""
    saved = read_schedule_dir(path)
    meta = saved.meta
    steps = StepSchedule(int(meta["num_steps"]), learn_grid=bool(meta["learn_grid"]), t_min=float(meta["t_min"]))
    try:
        steps.load_state_dict(saved.state)
    except RuntimeError as e:
        raise CheckpointError(f"{saved.path} does not hold a {steps.num_steps}-step schedule: {e}") from e
    steps.trained_for = TrainedFor(fingerprint=str(meta["fingerprint"]), noise_schedule=saved.noise_schedule,
                                   path=str(saved.path))
    return steps


class LearnedScheduleSampler(AncestralSampler):
    """The ancestral sampler on ``schedule``'s grid with its per-step c_n and kappa_n (LSD; LSD+ when the
    grid was learned). Sampler(model, batch_size=, length=, prompt=, generator=) -> SampleOutput.

    ``num_steps``: None takes the schedule's; another number is refused (a schedule is trained for one
    step count). ``learn_grid``: None accepts either kind; True (``sampler=lsd_plus``) / False
    (``sampler=lsd``) refuse the other kind. ``noise_schedule``: None takes the one recorded with the
    schedule (the denoiser's), else log-linear. Temperature / top-k are not offered: c_n is the temperature.
    """

    def __init__(self, *, schedule: StepSchedule, num_steps: int | None = None, learn_grid: bool | None = None,
                 noise_schedule: NoiseSchedule | None = None, row_cache: RowCache = "row",
                 sampling_precision: Precision = "float64", record_trajectory: bool = False) -> None:
        where = schedule.trained_for.path if schedule.trained_for is not None else "the given schedule"
        if num_steps is not None and num_steps != schedule.num_steps:
            raise ConfigError(f"sampler.num_steps={num_steps} but {where} was trained for {schedule.num_steps} steps; "
                              f"set sampler.num_steps={schedule.num_steps} (or null) or train a schedule with "
                              f"objective.num_steps={num_steps}")
        if learn_grid is not None and bool(learn_grid) != schedule.learn_grid:
            have, want = ("lsd_plus", "lsd") if schedule.learn_grid else ("lsd", "lsd_plus")
            raise ConfigError(f"{where} was trained as {have} (learn_grid={schedule.learn_grid}) but "
                              f"sampler.learn_grid={learn_grid}; use sampler={have} or retrain with "
                              f"objective.learn_grid={bool(learn_grid)} ({want})")
        if noise_schedule is None and schedule.trained_for is not None:
            noise_schedule = schedule.trained_for.noise_schedule
        with torch.no_grad():
            grid, c, kappa = schedule.timesteps().cpu(), schedule.logit_scales().cpu(), schedule.rate_scales().cpu()
        super().__init__(num_steps=schedule.num_steps, timesteps=grid, schedule=noise_schedule, row_cache=row_cache,
                         sampling_precision=sampling_precision, logit_scales=c, rate_scales=kappa,
                         record_trajectory=record_trajectory)
        self.trained_for = schedule.trained_for
        self.learned = schedule.describe()
        self._verified: weakref.WeakSet = weakref.WeakSet()  # models whose fingerprint matched (hashing is a pass)

    def check_model(self, model: Denoiser) -> None:
        super().check_model(model)
        if self.trained_for is None or model in self._verified:
            return
        found = denoiser_fingerprint(model)
        if found != self.trained_for.fingerprint:
            raise ConfigError(f"sampler.schedule.path={self.trained_for.path} was trained for the denoiser with "
                              f"fingerprint {self.trained_for.fingerprint}, but model= has fingerprint {found}; "
                              "train a schedule for this model (dlm-train experiment=lsd_demo init_from=<model dir>)")
        self._verified.add(model)
