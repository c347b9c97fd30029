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
from ..system import step_rule
from ._iteration import count_iteration, picard_iteration
from ._loop import log_record
from ._window import evaluate_window, nan_pad, outputs_above, start_solve
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
    step, inv_var = step_rule(sched), inverse_next_variance(sched)
    while bool((state.frozen > 0).any()) and state.iteration < max_iters:
        book.begin()
        # 1. eps at every state of the window, one batched model call
        ev = evaluate_window(state, book, step, window, config.init == "copy")
        win, t = ev.win, ev.win.t
        # 2-5. drifts, cumulative sums from the frozen state, errors, window move (_iteration.picard_iteration)
        x_f = state.x[win.rows[:, 0], state.frozen][:, None]
        x_new, rho, bad, thr, frozen = picard_iteration(
            step, (win.lo, win.width, t, win.valid), ev.x_ext, ev.eps, xi[win.rows, t], (state.frozen, x_f),
            inv_var[t], config.picard_tol, window, outputs_above(state, ev, step.reads),
        )  # fmt: skip
        state.x[ev.vi, ev.tv] = x_new[ev.vi, ev.vj]
        hi, state.frozen = state.frozen, frozen
        count_iteration(state.iterations, state.nfe, win.width)
        vi, vj = ev.vi, ev.vj
        rows = (rho[vi, vj], thr[vi, vj], ~bad[vi, vj], torch.zeros_like(vi, dtype=torch.bool))
        book.end(log_record(book.iteration, vi, ev.tv, win.lo[vi], hi[vi], *rows), win.lo, hi, nan_pad(rho, win))
    return make_result(state, schedule, noise, config)


def inverse_next_variance(sched: Schedule) -> torch.Tensor:
    """1 / sigma_{t-1}^2 of every state x_0 .. x_{T-1} (clamped at 1e-20; x_0 has none: infinite), as the pipeline
    computes it, with a scratch entry 1 at index T."""
    var_next = torch.cat([torch.zeros(1, dtype=torch.float64, device=sched.sigma.device), sched.sigma[:-1] ** 2])
    inv_var = 1.0 / torch.clamp(var_next, min=1e-20)
    inv_var[0] = float("inf")
    return torch.cat([inv_var, torch.ones(1, dtype=torch.float64, device=inv_var.device)])
