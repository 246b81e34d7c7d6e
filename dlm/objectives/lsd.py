"""LSD / LSD+ loss: per-step KL from a many-step teacher to the N-step student (Fu et al. 2025).

The student is the ancestral sampler on a ``StepSchedule`` (``dlm.samplers.learned_schedule``). At its
step n, from state x (B, L) at t = t_n to s = t_{n+1}, a masked position moves to

    P_S(mask) = 1 - psi_n,   P_S(v) = psi_n softmax(c_n logits(x, t_n))_v,   psi_n = min(1, kappa_n psi(t_n, s))

(the last step has psi = 1). The teacher is the same frozen denoiser run with K = teacher_steps / N
ancestral substeps over the same interval; its target is the per-position marginal P_T of the composite
K-substep transition. The loss (the issue's Eq.; the note's §1.5 recommendation) is

    L = sum_n L_n,   L_n = E_rows sum_{l masked} KL(P_T,n,l || P_S,n,l)   over the V + 1 outcomes (stay masked
                                                                        included).

``teacher_state="student"`` (default) starts the teacher from the student's own state x^S_{t_n};
``"teacher"`` lets it follow its own trajectory from the same start (the paper's relaxed objective) and
scores the positions masked in both states. Student states are sampled without gradient (as in the
public code): dL_n/dc_m = 0 for m != n. Only c, kappa, u receive gradients; the denoiser is read, never
trained (the recipe freezes it).

Teacher estimator (float64 bookkeeping, one rollout): reveal clocks do not depend on the network, so the
stay-masked mass is exact, S = prod_k (1 - psi_k) (= 1 - psi(t_n, s) by telescoping), and each position's
reveal substep is drawn up front. A position revealed at substep k gets the distribution its token was
drawn from, softmax(logits(y_k, s_k)); one still masked at the end gets that of the row's shared substep
k* drawn from P(k | revealed in the interval). Both are unbiased for the composite's token law given a
reveal (a masked position does not influence the others' path), and the network runs only on rows with
something to reveal or at k*: about min(K, masked + 1) row-calls per step instead of K.

What the loss can and cannot teach (worth knowing before training):
* with an exact denoiser the composite's per-position marginal equals the student's at c = kappa = 1
  (p(x0 | x_t) is a martingale along the reverse process), so the expected gradient vanishes at init:
  LSD corrects a network's inconsistencies across times and states, not the factorisation error of
  revealing several tokens at once. The reported loss keeps a positive floor even then: it is the KL from
  a one-rollout estimate of the target, whose gradient (linear in the target), not value, is unbiased;
* the teacher's stay mass equals the student's at kappa = 1 for any grid, so each L_n is stationary at
  kappa_n = 1 (the transition law does not give kappa a signal either: StepSchedule trains kappa only with
  learn_rates) and, for a time-free denoiser (RADD), L_n gives the grid u zero gradient.

LSD+ therefore adds the grid's own term (``factorisation_bound``, on by default with ``learn_grid``). The KL
between the teacher's and the student's laws of the path (x_{t_1}, ..., x_{t_N}) splits, by the chain rule
and KL(P || prod_l Q_l) = sum_l KL(P_l || Q_l) + TC(P), into

    KL_path = sum_n E_T[ sum_l KL(P_T,n,l || P_S,n,l) ] + sum_n E_T[ TC_n ],

the per-position terms above plus the total correlation TC_n of the teacher's joint transition of step n: the
dependence between tokens revealed in the same step, which a factorised step cannot represent. Summed over
steps, with H(T_l) the entropy of the teacher's token law at a masked position,

    sum_n E[TC_n] = sum_n psi_n E[ sum_{l masked at t_n} H(T_n,l) ] - H_T(x_0 | reveal intervals).

For a denoiser consistent across orders (T_n,l = p_theta(x0^l | x_{t_n})) the last term does not depend on
the grid, and the first is F = m sum_n (alpha(t_{n+1}) - alpha(t_n)) h(t_n) (the last step with
alpha = 1), m the generated positions per row and h(t) the mean entropy of p_theta at the masked positions
of the teacher's state at t: a left Riemann-Stieltjes sum of the integral of h d(alpha), whose excess over
the integral bounds the factorisation error (the same quantity "Jump Your Steps" minimises). h is estimated
once per denoiser and canvas from ``curve_rows`` rollouts of the ``teacher_steps``-step teacher (each step
averages the entropy over the masked positions), and read at the student's times by linear interpolation,
so F is differentiable in u with or without time conditioning. The loss adds F minus its value on the
teacher's own grid (``factorisation_excess``, 0 when the student takes the teacher's steps); the constant
does not change the gradient.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from dlm.diffusion.posterior import unmask_probability
from dlm.diffusion.schedule import LogLinearSchedule
from dlm.errors import ConfigError
from dlm.io.record import Family
from dlm.samplers.categorical import TokenSampling
from dlm.samplers.learned_schedule import StepSchedule
from dlm.samplers.step import DenoiseStep
from dlm.types import Denoiser, NoiseSchedule

TeacherState = Literal["student", "teacher"]
MAX_STUDENT_PSI = 1.0 - 1e-6  # the loss's kappa psi stays below 1 where the teacher keeps stay mass (finite KL)


@dataclass
class LSDOutput:
    """``loss`` = sum_n L_n (scalar, mean over rows); ``per_step`` (N,) the L_n with their graphs (locality
    tests); ``scored`` (N,) masked positions per row scored at each step; ``metrics`` detached floats."""

    loss: Tensor
    per_step: Tensor
    scored: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class EntropyCurve:
    """h(t) on the teacher's grid: ``times`` (M,) float64 decreasing from 1 (the left end of each teacher
    step), ``entropy`` (M,) float64 the mean entropy (nats) of p_theta over the positions masked at that time,
    ``generated`` the mean number of positions a row generates (m)."""

    times: Tensor
    entropy: Tensor
    generated: float

    def at(self, t: Tensor) -> Tensor:
        """h at t (any shape, float64), linear between grid points, constant beyond them; differentiable in t."""
        xs, ys = self.times.to(t.device).flip(0), self.entropy.to(t.device).flip(0)  # increasing times
        tc = t.clamp(min=float(xs[0]), max=float(xs[-1]))
        hi = torch.searchsorted(xs, tc.detach().contiguous()).clamp(1, xs.numel() - 1) if xs.numel() > 1 else None
        if hi is None:
            return ys[0].expand_as(tc)
        lo = hi - 1
        w = (tc - xs[lo]) / (xs[hi] - xs[lo])
        return ys[lo] + w * (ys[hi] - ys[lo])


@dataclass
class TeacherTarget:
    """The teacher's composite transition from y over one student interval: ``stay`` () float64 exact stay
    mass, ``log_token`` (B, L, V) float32 log-law of the token given a reveal (-inf rows where y is clean),
    ``end`` (B, L) the state its rollout reached, ``row_calls`` network row-evaluations spent."""

    stay: Tensor
    log_token: Tensor
    end: Tensor
    row_calls: int


class LSDLoss:
    """Trains a ``StepSchedule(num_steps, learn_grid, learn_rates, t_min)`` against a ``teacher_steps`` teacher
    (module docstring; ``learn_rates`` trains kappa, stationary at 1 under this loss, so off by default).
    ``factorisation_bound`` (LSD+ only): add the grid's factorisation term F, its entropy curve estimated from
    ``curve_rows`` teacher rollouts (False: the per-step KL alone, under which a time-free grid stays put).

    Declares the denoiser it reads like every objective (``family``, ``shift_logits``): a bidirectional
    masked-diffusion model read without shift. ``schedule``: the noise schedule the denoiser was trained
    with (None: log-linear; the recipe passes the model directory's).
    """

    family = Family.MASKED
    shift_logits = False

    def __init__(self, *, num_steps: int = 8, learn_grid: bool = False, learn_rates: bool = False, t_min: float = 0.0,
                 teacher_steps: int = 256, teacher_state: TeacherState = "student",
                 factorisation_bound: bool = True, curve_rows: int = 64,
                 schedule: NoiseSchedule | None = None) -> None:
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ConfigError(f"objective.num_steps={num_steps!r} must be a positive integer (the student's steps)")
        if teacher_steps < num_steps:
            raise ConfigError(f"objective.teacher_steps={teacher_steps} is fewer than objective.num_steps={num_steps}: "
                              "the teacher must take more steps than the student it teaches; raise teacher_steps")
        if teacher_steps % num_steps:
            raise ConfigError(f"objective.teacher_steps={teacher_steps} is not a multiple of objective.num_steps="
                              f"{num_steps}: each student step is split into teacher_steps / num_steps substeps; "
                              f"use e.g. teacher_steps={num_steps * max(1, round(teacher_steps / num_steps))}")
        if teacher_state not in ("student", "teacher"):
            raise ConfigError(f"objective.teacher_state={teacher_state!r}; valid: student (same-state), teacher "
                              "(own trajectory)")
        if not 0.0 <= t_min < 1.0:
            raise ConfigError(f"objective.t_min={t_min} must lie in [0, 1)")
        if isinstance(curve_rows, bool) or not isinstance(curve_rows, int) or curve_rows < 1:
            raise ConfigError(f"objective.curve_rows={curve_rows!r} must be a positive integer (rollouts that estimate "
                              "the entropy curve of the factorisation bound)")
        self.factorisation_bound, self.curve_rows = bool(factorisation_bound), curve_rows
        # (weak reference to the denoiser, canvas shape, curve): an id() key could match a new model that reuses
        # a freed object's address and silently reuse another model's curve
        self._curve: tuple[weakref.ref, tuple[int, ...], EntropyCurve] | None = None
        self.num_steps, self.t_min = num_steps, float(t_min)
        self.learn_grid, self.learn_rates = bool(learn_grid), bool(learn_rates)
        self.teacher_steps, self.teacher_state = teacher_steps, teacher_state
        self.schedule = schedule or LogLinearSchedule()
        self.step = DenoiseStep(TokenSampling())  # the sampler's own draw: temperature 1, float64 Gumbel

    def __getstate__(self) -> dict:
        """Pickled (ddp_spawn, deep copies) without the cached curve: it holds a weak reference, and a copy is
        read by another process's denoiser anyway, whose curve it recomputes."""
        return {**self.__dict__, "_curve": None}

    def make_schedule(self) -> StepSchedule:
        """The identity schedule this loss trains."""
        return StepSchedule(self.num_steps, learn_grid=self.learn_grid, learn_rates=self.learn_rates, t_min=self.t_min)

    def reveal_probability(self, t: Tensor, s: Tensor) -> Tensor:
        """psi(t, s) = (alpha_s - alpha_t) / (1 - alpha_t) (MDLM Eq. 6), differentiable in t and s."""
        return unmask_probability(self.schedule.alpha(t), self.schedule.alpha(s))

    def __call__(self, model: Denoiser, steps: StepSchedule, start: Tensor,
                 generator: torch.Generator | None = None) -> LSDOutput:
        """Roll the student out from ``start`` (B, L) (masks to generate; the prompt clean) and sum L_n."""
        if steps.num_steps != self.num_steps:
            raise ConfigError(f"the schedule has {steps.num_steps} steps, objective.num_steps={self.num_steps}")
        grid, c, kappa = steps.timesteps(), steps.logit_scales(), steps.rate_scales()
        substeps = self.teacher_steps // self.num_steps
        b = start.shape[0]
        x = start.clone()  # student state
        y = start.clone()  # teacher state (own-trajectory variant)
        per_step, scored_counts, row_calls = [], [], 0
        for n in range(self.num_steps):
            t, s, last = grid[n], grid[n + 1], n == self.num_steps - 1
            masked = x == model.mask_id
            raw = self.step.logits(model, x, t.expand(b))  # (B, L, V); graph only through t (grid) here
            # a -inf logit (a banned token) times c_n would give dL/dc_n = -inf * 0 = NaN; the most negative
            # finite float keeps its probability 0 for any c_n > 1e-30 and its gradient 0
            raw = raw.nan_to_num(neginf=torch.finfo(raw.dtype).min)
            log_q = self.step.tokens.log_probs(raw * c[n], model.mask_id)  # log softmax(c_n logits), (B, L, V)
            psi = torch.ones_like(t) if last else (kappa[n] * self.reveal_probability(t, s)).clamp(max=MAX_STUDENT_PSI)
            with torch.no_grad():
                times = substep_times(t.detach(), s.detach(), substeps)
                same = self.teacher_state == "student"
                first = self.step.tokens.log_probs(raw.detach(), model.mask_id) if same else None
                target = self.teacher_target(model, x if same else y, times, final=last, generator=generator,
                                             first_log_probs=first)
            row_calls += target.row_calls
            scored = masked if same else masked & (y == model.mask_id)
            kl = transition_kl(target.stay, target.log_token, psi, log_q)  # (B, L)
            per_step.append(torch.where(scored, kl, 0.0).sum(-1).mean())
            scored_counts.append(scored.sum(-1).double().mean())
            with torch.no_grad():  # the student's next state: the sampler's own step
                u = torch.rand(x.shape, dtype=torch.float64, device=x.device, generator=generator)
                reveal = masked & (u < psi.detach())
                x[reveal] = self.step.tokens.draw((raw * c[n]).detach()[reveal], model.mask_id, generator)
                if not same:
                    y = target.end
        per_step_t = torch.stack(per_step)
        metrics = {f"kl_step{n}": v.detach() for n, v in enumerate(per_step_t)}
        metrics["teacher_row_calls"] = torch.tensor(float(row_calls))
        loss = per_step_t.sum()
        if self.learn_grid and self.factorisation_bound:
            curve = self.entropy_curve(model, start, generator)
            excess = self.factorisation(curve, grid) - self.factorisation(curve, substep_times(
                grid.new_ones(()), grid.new_full((), self.t_min), self.teacher_steps))
            metrics["factorisation_excess"] = excess.detach()
            loss = loss + excess
        return LSDOutput(loss=loss, per_step=per_step_t, scored=torch.stack(scored_counts), metrics=metrics)

    def factorisation(self, curve: EntropyCurve, grid: Tensor) -> Tensor:
        """F = m sum_n (alpha(t_{n+1}) - alpha(t_n)) h(t_n) on ``grid`` (K + 1,) (module docstring), the last step
        revealing everything (alpha = 1); nats per row, differentiable in the grid."""
        alpha = self.schedule.alpha(grid)
        alpha = torch.cat([alpha[:-1], alpha.new_ones(1)])
        return curve.generated * ((alpha[1:] - alpha[:-1]) * curve.at(grid[:-1])).sum()

    @torch.no_grad()
    def entropy_curve(self, model: Denoiser, start: Tensor, generator: torch.Generator | None) -> EntropyCurve:
        """h(t) of the teacher's rollouts from ``curve_rows`` copies of the start rows (module docstring); computed
        once per denoiser and canvas shape, then reused (the denoiser is frozen)."""
        shape = tuple(start.shape[1:])
        if self._curve is not None and self._curve[0]() is model and self._curve[1] == shape:
            return self._curve[2]
        x = start.repeat(-(-self.curve_rows // start.shape[0]), 1)[: self.curve_rows].clone()
        generated = float((x == model.mask_id).sum(-1).double().mean())
        times = substep_times(torch.ones((), dtype=torch.float64), torch.full((), self.t_min, dtype=torch.float64),
                              self.teacher_steps)
        psi = self.reveal_probability(times[:-1], times[1:])
        psi[-1] = 1.0  # the teacher's last step reveals everything left
        entropy = torch.zeros(self.teacher_steps, dtype=torch.float64)
        for k in range(self.teacher_steps):
            masked = x == model.mask_id
            if not bool(masked.any()):
                entropy[k:] = entropy[k - 1] if k else 0.0
                break
            log_p = self.step.x0_log_probs(model, x, times[k].expand(x.shape[0])).double()  # (R, L, V)
            h = -(log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum(-1)
            entropy[k] = h[masked].mean()
            reveal = masked & (torch.rand(x.shape, dtype=torch.float64, device=x.device, generator=generator)
                               < psi[k])
            x[reveal] = self.step.tokens.draw(log_p.float()[reveal], model.mask_id, generator)
        curve = EntropyCurve(times=times[:-1].cpu(), entropy=entropy, generated=generated)
        self._curve = (weakref.ref(model), shape, curve)
        return curve

    def teacher_target(self, model: Denoiser, y: Tensor, times: Tensor, *, final: bool,
                       generator: torch.Generator | None, first_log_probs: Tensor | None = None) -> TeacherTarget:
        """The teacher's composite transition from y (B, L) over ``times`` (K + 1,) (module docstring).

        ``final``: the interval ends the sampling, so its last substep reveals everything left.
        ``first_log_probs`` (B, L, V): the denoiser's log-probs at (y, times[0]) when already computed.
        """
        k_sub = times.numel() - 1
        psi = self.reveal_probability(times[:-1], times[1:])  # (K,) float64
        if final:
            psi = torch.cat([psi[:-1], psi.new_ones(1)])
        survive = torch.cat([psi.new_ones(1), torch.cumprod(1.0 - psi, 0)])  # S_k = prod_{j<k} (1 - psi_j)
        stay = survive[-1]
        masked0 = y == model.mask_id
        # each masked position's reveal substep (K: not in this interval), from clocks drawn up front
        hit = torch.rand((k_sub, *y.shape), dtype=torch.float64, device=y.device, generator=generator) < psi[:, None, None]
        reveal_at = torch.where(hit.any(0), hit.to(torch.uint8).argmax(0), k_sub).masked_fill(~masked0, -1)
        # one substep per row for the positions left masked, drawn from P(k | revealed in the interval)
        reveal_law = (survive[:-1] * psi).clamp(min=0)
        k_star = torch.multinomial(reveal_law.float() / reveal_law.float().sum(), y.shape[0], replacement=True,
                                   generator=generator).to(y.device)
        left = reveal_at == k_sub  # (B, L)
        log_token = torch.full((*y.shape, model.vocab_size), float("-inf"), device=y.device)
        y, row_calls = y.clone(), 0
        for k in range(k_sub):
            reveal = reveal_at == k
            use_k_star = left & (k_star == k)[:, None]
            rows = (reveal | use_k_star).any(-1)
            if not bool(rows.any()):
                continue
            if k == 0 and first_log_probs is not None:
                log_p = first_log_probs[rows]
            else:
                log_p = self.step.x0_log_probs(model, y, times[k].expand(y.shape[0]), rows=rows)  # (R, L, V)
                row_calls += int(rows.sum())
            keep = reveal[rows] | use_k_star[rows]
            sub = log_token[rows]
            sub[keep] = log_p[keep]
            log_token[rows] = sub
            sub_y = y[rows]
            sub_y[reveal[rows]] = self.step.tokens.draw(log_p[reveal[rows]], model.mask_id, generator)
            y[rows] = sub_y
        return TeacherTarget(stay=stay, log_token=log_token, end=y, row_calls=row_calls)


def substep_times(t: Tensor, s: Tensor, substeps: int) -> Tensor:
    """(K + 1,) float64 uniform substeps from t down to s, both endpoints exact (K = 1 gives [t, s])."""
    frac = torch.linspace(0.0, 1.0, substeps + 1, dtype=torch.float64, device=t.device)
    times = t + (s - t) * frac
    times[0], times[-1] = t, s
    return times


def transition_kl(stay: Tensor, log_token: Tensor, psi: Tensor, log_q: Tensor) -> Tensor:
    """KL(P_T || P_S) per position (B, L) over {stay masked} + V tokens.

    P_T = (stay, (1 - stay) exp(log_token)), P_S = (1 - psi, psi exp(log_q)); stay () float64 constant,
    psi () with gradient, log_token / log_q (B, L, V). Terms with zero teacher mass count 0 (0 log 0 = 0).
    """
    tok = log_token.exp()
    inner = torch.where(tok > 0, tok * (log_token - log_q), 0.0).sum(-1)  # KL(token law || softmax(c logits))
    kl = torch.zeros_like(inner, dtype=torch.float64)
    if float(stay) < 1.0:
        kl = kl + (1.0 - stay) * (inner.double() + torch.log1p(-stay) - torch.log(psi))
    if float(stay) > 0.0:
        kl = kl + stay * (torch.log(stay) - torch.log1p(-psi))
    return kl
