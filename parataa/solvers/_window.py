"""The sliding-window iteration shared by FP, AA and TAA (ALGORITHM.md sections 3-5).

One iteration, for every unfinished sample at once:
  1. evaluate eps at the window's states x_{lo+1} .. x_f in one batched model call;
  2. first-order residuals R_t and order-k residuals F_t of the current iterate;
  3. u* = the highest unconverged step (rho_t > max(abs_tol, rel_tol * g_t));
  4. steps above u* are converged and kept as they are (so every final state has a verified residual);
     x_{u*} takes the exact step a x_{u*+1} + g (safeguard: finalised); steps below u* take the method's update;
  5. the frozen boundary moves to u* (or to the window bottom when everything converged); states entering
     the window are initialised.
The boundary falls by at least one step per iteration, so every solve ends within T iterations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..noise import NoiseBundle
from ..schedules import Schedule
from ..system import Window, make_window, order_k_rhs, rms, step_rhs
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
    tolerance_scale,
)


@dataclass
class UpdateInput:
    x: torch.Tensor  # [N, Wmax, D] current unknowns
    resid: torch.Tensor  # [N, Wmax, D] order-k residual F
    valid: torch.Tensor  # [N, Wmax] window positions in use
    below: torch.Tensor  # [N, Wmax] positions below u* (the ones the method updates)
    window: Window
    state: SolverState
    vi: torch.Tensor  # [R] sample of each valid position (from one nonzero: masks sync the GPU)
    vj: torch.Tensor  # [R] window position of each valid position


# An update rule returns the new values of the positions below u* and a per-position fallback flag.
UpdateRule = Callable[[UpdateInput], tuple[torch.Tensor, torch.Tensor]]


def fixed_point_update(inp: UpdateInput) -> tuple[torch.Tensor, torch.Tensor]:
    return inp.x + inp.resid, torch.zeros_like(inp.valid)


def log_record(
    iteration: int,
    sample: torch.Tensor,
    step: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    rho: torch.Tensor,
    threshold: torch.Tensor,
    converged: torch.Tensor,
    fallback: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """One iteration's rows of the convergence log, moved to the CPU in three copies instead of nine."""
    longs = torch.stack([sample, step, lo, hi]).cpu()
    floats = torch.stack([rho, threshold]).cpu()
    flags = torch.stack([converged, fallback]).cpu()
    return {
        "sample": longs[0],
        "iteration": torch.full((longs.shape[1],), iteration, dtype=torch.long),
        "step": longs[1],
        "rho": floats[0],
        "threshold": floats[1],
        "converged": flags[0],
        "window_lo": longs[2],
        "window_hi": longs[3],
        "fallback": flags[1],
    }


def new_state(noise: NoiseBundle, config: SolverConfig, init: torch.Tensor | None) -> SolverState:
    n, T, d = noise.num_samples, noise.num_steps, noise.x_T[0].numel()
    device = noise.x_T.device
    x = torch.empty(n, T + 1, d, dtype=torch.float64, device=device)
    x[:, T] = noise.x_T.reshape(n, d).to(torch.float64)
    frozen = torch.full((n,), T, dtype=torch.long, device=device)
    entered = torch.full((n,), T, dtype=torch.long, device=device)
    if config.init == "gaussian":
        x[:, :T] = noise.init.reshape(n, T, d).to(torch.float64)
        entered.zero_()
    elif config.init == "trajectory":
        assert init is not None
        x[:] = init.reshape(n, T + 1, d).to(device=device, dtype=torch.float64)
        if config.freeze_from is not None:
            frozen.fill_(config.freeze_from)  # variation: states x_t, t >= freeze_from, stay as given
        else:
            x[:, T] = noise.x_T.reshape(n, d).to(torch.float64)  # a guess of x_0..x_{T-1}; x_T is the noise
        entered.zero_()
    return SolverState(
        x=x,
        frozen=frozen,
        entered=entered,
        iterations=torch.zeros(n, dtype=torch.long, device=device),
        nfe=torch.zeros(n, dtype=torch.long, device=device),
    )


def enter_copies(state: SolverState, window: int) -> None:
    """ "copy" init: a state entering the window starts as a copy of the state above it."""
    lo = torch.clamp(state.frozen - window, min=0)
    for n in torch.nonzero(lo < state.entered).flatten().tolist():
        e, low = int(state.entered[n]), int(lo[n])
        state.x[n, low:e] = state.x[n, e]
        state.entered[n] = low


def run_window_solver(
    model: Denoiser,
    schedule: Schedule,
    noise: NoiseBundle,
    config: SolverConfig,
    update: UpdateRule,
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
    order = config.order or T
    max_iters = config.max_iters or T
    gscale = tolerance_scale(sched, config.tol_scale)
    threshold_all = torch.clamp(config.rel_tol * gscale, min=config.abs_tol)  # [T]
    xi = noise.xi.reshape(n, T, -1).to(torch.float64)
    state = resume if resume is not None else new_state(noise, config, init)
    evaluate = Evaluator(model, sched, noise, config.method)

    while bool((state.frozen > 0).any()) and state.iteration < max_iters:
        it = state.iteration
        if config.init == "copy":
            enter_copies(state, window)
        sync(device)
        t_start = time.perf_counter()
        win = make_window(state.frozen, window, T)
        rows, t, valid = win.rows, win.t, win.valid
        x_ext = state.x[rows, win.t_up]  # [N, Wmax+1, D]: x_{lo+j}
        x_cur, x_up = x_ext[:, :-1], x_ext[:, 1:]
        vi, vj = torch.nonzero(valid, as_tuple=True)
        tv = t[vi, vj]
        eps = torch.zeros_like(x_cur)
        t_model = time.perf_counter()
        eps[vi, vj] = evaluate(x_up[vi, vj], tv, vi, it)
        t_after_model = time.perf_counter()
        a_w, b_w, c_w = sched.a[t], sched.b[t], sched.c[t]
        g = b_w[..., None] * eps + c_w[..., None] * xi[rows, t]
        g = torch.where(valid[..., None], g, torch.zeros_like(g))
        exact = step_rhs(a_w[..., None], x_up, g)  # the first-order (sequential) step
        rho = rms(exact - x_cur)
        thr = threshold_all[t]
        unconv = valid & (rho > thr)
        j = torch.arange(win.size, device=device)
        u_star = torch.where(unconv, j[None, :], torch.full_like(t, -1)).max(dim=1).values  # [N]
        below = valid & (j[None, :] < u_star[:, None])
        at = valid & (j[None, :] == u_star[:, None])

        if order == 1:
            resid = exact - x_cur
        else:
            resid = order_k_rhs(a_w, g, x_ext, win.width, order) - x_cur
        new_vals, fallback = update(UpdateInput(x_cur, resid, valid, below, win, state, vi, vj))
        x_new = torch.where(below[..., None], new_vals, x_cur)
        x_new = torch.where(at[..., None], exact, x_new)
        state.x[vi, tv] = x_new[vi, vj]  # positions above u* write back their unchanged values

        hi = state.frozen.clone()
        active = win.width > 0
        state.frozen = torch.where(u_star >= 0, win.lo + u_star.clamp(min=0), win.lo)
        state.iterations += active.long()
        state.nfe += win.width
        state.iteration += 1
        sync(device)
        t_end = time.perf_counter()
        state.log.append(
            log_record(it, vi, tv, win.lo[vi], hi[vi], rho[vi, vj], thr[vi, vj], ~unconv[vi, vj], fallback[vi, vj])
        )
        state.timings.append(
            {
                "iteration": it,
                "model_s": evaluate.model_s,
                "solver_s": (t_end - t_start) - (t_after_model - t_model),
                "comm_s": evaluate.comm_s,
                "rows": int(vi.numel()),
            }
        )
        if callback is not None:
            callback(
                IterationInfo(
                    iteration=it,
                    trajectory=state.x.view(n, T + 1, *noise.sample_shape),
                    frozen=state.frozen,
                    window_lo=win.lo,
                    window_hi=hi,
                    rho=torch.where(valid, rho, torch.full_like(rho, float("nan"))),
                    state=state,
                )
            )
    return make_result(state, schedule, noise, config)
