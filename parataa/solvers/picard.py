"""Picard iteration as ParaDiGMS (Shih et al. 2023) defines it, as diffusers' StableDiffusionParadigmsPipeline
runs it: a peer baseline with its own update, tolerance and window semantics (ALGORITHM.md section 3).

In this package's indexing (step t writes x_t from x_{t+1}; window of unknowns [lo, f)):
    drift_s  = (a_s x_{s+1} + b_s eps(x_{s+1})) - x_{s+1}          (denoised minus current)
    x_t     <- x_f + sum_{s=t}^{f-1} (drift_s + c_s xi_s)            (cumulative sum down from the frozen state)
    error_t  = ||x_t^new - x_t^old||^2 / (D * sigma_{t-1}^2)         (sigma of the step that next reads x_t,
                                                                      clamped at 1e-20; x_0 has none: infinite)
The window's frozen boundary moves down past the converged states to the first state whose error exceeds
picard_tol^2 (at most W states per iteration), and every state of the window takes the Picard update.
"""

from __future__ import annotations

import time

import torch

from ..noise import NoiseBundle
from ..schedules import Schedule
from ..system import make_window, rms, step_rhs
from ._window import enter_copies, log_record, new_state
from .base import (
    Callback,
    Denoiser,
    Evaluator,
    IterationInfo,
    SolverConfig,
    SolveResult,
    SolverState,
    check_inputs,
    make_result,
    sync,
)


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
    check_inputs(schedule, noise, init, config)
    T, n = schedule.num_steps, noise.num_samples
    device = noise.x_T.device
    sched = schedule.to(device)
    window = config.window or T
    max_iters = config.max_iters or T
    xi = noise.xi.reshape(n, T, -1).to(torch.float64)
    d = xi.shape[2]
    # inverse "next-step" variance of every state x_0..x_{T-1}, as the pipeline computes it
    var_next = torch.cat([torch.zeros(1, dtype=torch.float64, device=device), sched.sigma[:-1] ** 2])
    inv_var = 1.0 / torch.clamp(var_next, min=1e-20)
    inv_var[0] = float("inf")
    state = resume if resume is not None else new_state(noise, config, init)
    evaluate = Evaluator(model, sched, noise, "picard")
    while bool((state.frozen > 0).any()) and state.iteration < max_iters:
        it = state.iteration
        if config.init == "copy":
            enter_copies(state, window)
        sync(device)
        t_start = time.perf_counter()
        win = make_window(state.frozen, window, T)
        rows, t, valid = win.rows, win.t, win.valid
        x_ext = state.x[rows, win.t_up]
        x_cur, x_up = x_ext[:, :-1], x_ext[:, 1:]
        vi, vj = torch.nonzero(valid, as_tuple=True)
        tv = t[vi, vj]
        eps = torch.zeros_like(x_cur)
        t_model = time.perf_counter()
        eps[vi, vj] = evaluate(x_up[vi, vj], tv, vi, it)
        t_after = time.perf_counter()
        a_w, b_w, c_w = sched.a[t][..., None], sched.b[t][..., None], sched.c[t][..., None]
        v = valid[..., None]
        noise_w = c_w * xi[rows, t]
        rho = rms(step_rhs(a_w, x_up, b_w * eps + noise_w) - x_cur)  # first-order residual, for the log
        step = torch.where(v, (a_w * x_up + b_w * eps) - x_up + noise_w, torch.zeros_like(x_cur))
        # cumulative sums run from the top of the window (position width-1) down to position j
        total = step.sum(dim=1, keepdim=True)
        below_sum = torch.cumsum(step, dim=1) - step  # sum over positions < j
        x_f = state.x[rows[:, 0], state.frozen][:, None]
        x_new = x_f + (total - below_sum)
        err = torch.sum((x_new - x_cur) ** 2, dim=-1) / d * inv_var[t]
        bad = valid & ~(err <= config.picard_tol**2)
        # first bad position counted from the top of the window
        j = torch.arange(win.size, device=device)
        from_top = win.width[:, None] - 1 - j[None, :]
        first_bad = torch.where(bad, from_top, torch.full_like(from_top, 10**9)).min(dim=1).values
        first_bad = torch.minimum(first_bad, win.width)
        move = torch.minimum(first_bad + 1, torch.full_like(first_bad, window))
        state.x[vi, tv] = x_new[vi, vj]
        hi = state.frozen.clone()
        state.frozen = torch.clamp(state.frozen - move, min=0)
        state.frozen = torch.where(win.width > 0, state.frozen, hi)
        state.iterations += (win.width > 0).long()
        state.nfe += win.width
        state.iteration += 1
        sync(device)
        t_end = time.perf_counter()
        state.log.append(
            log_record(
                it,
                vi,
                tv,
                win.lo[vi],
                hi[vi],
                rho[vi, vj],
                config.picard_tol / torch.sqrt(inv_var[tv]),
                ~bad[vi, vj],
                torch.zeros_like(vi, dtype=torch.bool),
            )
        )
        state.timings.append(
            {
                "iteration": it,
                "model_s": evaluate.model_s,
                "solver_s": (t_end - t_start) - (t_after - t_model),
                "comm_s": evaluate.comm_s,
                "rows": int(vi.numel()),
            }
        )
        if callback is not None:
            callback(
                IterationInfo(
                    it,
                    state.x.view(n, T + 1, *noise.sample_shape),
                    state.frozen,
                    win.lo,
                    hi,
                    torch.where(valid, rho, torch.full_like(rho, float("nan"))),
                    state,
                )
            )
    return make_result(state, schedule, noise, config)
