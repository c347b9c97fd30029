"""Picard iteration as ParaDiGMS (Shih et al. 2023) defines it, as diffusers' StableDiffusionParadigmsPipeline
runs it: a peer baseline with its own update, tolerance and window semantics (docs/METHOD.md section 3).

In this package's indexing (step t writes x_t from x_{t+1}; window of unknowns [lo, f)):
    drift_s  = (a_s x_{s+1} + b_s eps(x_{s+1})) - x_{s+1}          (denoised minus current)
    x_t     <- x_f + sum_{s=t}^{f-1} (drift_s + c_s xi_s)            (cumulative sum down from the frozen state)
    error_t  = ||x_t^new - x_t^old||^2 / (D * sigma_{t-1}^2)         (sigma of the step that next reads x_t,
                                                                      clamped at 1e-20; x_0 has none: infinite)
The window's frozen boundary moves down past the converged states to the first state whose error exceeds
picard_tol^2 (at most W states per iteration), and every state of the window takes the Picard update.
"""

from __future__ import annotations

import torch

from ..noise import NoiseBundle
from ..schedules import Schedule
from ..system import rms, step_rhs, step_rule
from ._loop import log_record
from ._window import evaluate_window, start_solve
from .base import Callback, Denoiser, SolverConfig, SolveResult, SolverState, make_result


def picard(
    model: Denoiser,
    schedule: Schedule,
    noise: NoiseBundle,
    config: SolverConfig,
    *,
    init: torch.Tensor | None = None,
    callback: Callback | None = None,
    resume: SolverState | None = None,
) -> SolveResult:
    T = schedule.num_steps
    sched, xi, state, book = start_solve(model, schedule, noise, config, init, callback, resume)
    window, max_iters = config.window or T, config.max_iters or T
    rule = step_rule(sched)
    # inverse "next-step" variance of every state x_0..x_{T-1}, as the pipeline computes it (x_0 has none)
    var_next = torch.cat([torch.zeros(1, dtype=torch.float64, device=xi.device), sched.sigma[:-1] ** 2])
    inv_var = 1.0 / torch.clamp(var_next, min=1e-20)
    inv_var[0] = float("inf")
    while bool((state.frozen > 0).any()) and state.iteration < max_iters:
        book.begin()
        # 1. eps at every state of the window, one batched model call
        ev = evaluate_window(state, book, window, config.init == "copy")
        win, t, valid, x_cur, x_up = ev.win, ev.win.t, ev.win.valid, ev.x_cur, ev.x_up
        # 2. drifts, and the first-order residual for the log (this package's common metric)
        a_w, drift, noise_w = rule.a(t)[..., None], rule.drift(t, (ev.eps,)), rule.noise(t, xi[win.rows, t])
        rho = rms(step_rhs(a_w, x_up, drift + noise_w) - x_cur)
        step = torch.where(valid[..., None], (a_w * x_up + drift) - x_up + noise_w, torch.zeros_like(x_cur))
        # 3. cumulative sums from the frozen state down the window (top position width-1 down to position j)
        below_sum = torch.cumsum(step, dim=1) - step  # sum over positions < j
        x_f = state.x[win.rows[:, 0], state.frozen][:, None]
        x_new = x_f + (step.sum(dim=1, keepdim=True) - below_sum)
        # 4. error = squared change over the next step's variance; the window slides past the first bad state
        bad = valid & ~(torch.mean((x_new - x_cur) ** 2, dim=-1) * inv_var[t] <= config.picard_tol**2)
        move = window_move(bad, win.width, window)
        state.x[ev.vi, ev.tv] = x_new[ev.vi, ev.vj]
        hi = state.frozen.clone()
        state.frozen = torch.where(win.width > 0, torch.clamp(state.frozen - move, min=0), hi)
        state.iterations += (win.width > 0).long()
        state.nfe += win.width
        vi, vj = ev.vi, ev.vj
        thr = config.picard_tol / torch.sqrt(inv_var[ev.tv])
        no_fallback = torch.zeros_like(vi, dtype=torch.bool)
        log = log_record(book.iteration, vi, ev.tv, win.lo[vi], hi[vi], rho[vi, vj], thr, ~bad[vi, vj], no_fallback)
        book.end(log, win.lo, hi, torch.where(valid, rho, torch.full_like(rho, float("nan"))))
    return make_result(state, schedule, noise, config)


def window_move(bad: torch.Tensor, width: torch.Tensor, window: int) -> torch.Tensor:
    """How far the frozen boundary falls: past the converged states from the top to the first bad one (included),
    at most W states."""
    j = torch.arange(bad.shape[1], device=bad.device)
    from_top = width[:, None] - 1 - j[None, :]
    first_bad = torch.where(bad, from_top, torch.full_like(from_top, 10**9)).min(dim=1).values
    first_bad = torch.minimum(first_bad, width)
    return torch.minimum(first_bad + 1, torch.full_like(first_bad, window))
