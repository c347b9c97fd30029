"""The sliding-window iteration shared by FP, AA and TAA (docs/METHOD.md sections 3-5 and 8-9).

One iteration, for every unfinished sample at once (states entering the window are initialised first):
  1. evaluate eps at the window's states x_{lo+1} .. x_f in one batched model call;
  2. first-order residuals R_t (rho_t = RMS) and the splitting's order-k residuals F_t of the current iterate;
  3. u* = the highest step the stopping rule does not accept (parataa/stopping.py: per step, or summed);
  4. steps above u* are accepted and kept as they are (so every final state has a verified residual);
     x_{u*} takes the exact step a x_{u*+1} + g (safeguard: finalised); steps below u* take the method's update;
  5. the frozen boundary moves to u* (or to the window bottom when every step was accepted).
The boundary falls by at least one step per iteration, so every solve ends within T iterations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..noise import NoiseBundle
from ..schedules import Schedule
from ..stopping import RULES
from ..system import Window, make_window, rms, splitting_rhs, step_rhs, step_rule
from ._loop import Bookkeeper, log_record
from .base import (
    Callback,
    Denoiser,
    SolverConfig,
    SolveResult,
    SolverState,
    check_inputs,
    make_result,
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


def new_state(noise: NoiseBundle, config: SolverConfig, init: torch.Tensor | None) -> SolverState:
    n, T, d = noise.num_samples, noise.num_steps, noise.x_T[0].numel()
    device = noise.x_T.device
    x = torch.empty(n, T + 1, d, dtype=torch.float64, device=device)
    x[:] = noise.x_T.reshape(n, 1, d).to(torch.float64)  # "copy": states not yet in the window read as x_T
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


@dataclass
class WindowEval:
    """The window of this iteration and the model's eps at its states (shared by the window solvers and Picard)."""

    win: Window
    x_ext: torch.Tensor  # [N, Wmax+1, D]: x_{lo+j}, the frozen x_f at position width
    vi: torch.Tensor  # [R] sample of each valid position
    vj: torch.Tensor  # [R] its window position
    tv: torch.Tensor  # [R] its step index t
    eps: torch.Tensor  # [N, Wmax, D] eps(x_{t+1}, tau_t), zero on padding

    @property
    def x_cur(self) -> torch.Tensor:
        return self.x_ext[:, :-1]

    @property
    def x_up(self) -> torch.Tensor:
        return self.x_ext[:, 1:]


def start_solve(
    model: Denoiser,
    schedule: Schedule,
    noise: NoiseBundle,
    config: SolverConfig,
    init: torch.Tensor | None,
    callback: Callback | None,
    resume: SolverState | None,
) -> tuple[Schedule, torch.Tensor, SolverState, Bookkeeper]:
    """Checked inputs -> (schedule on the device, noise xi [N, T, D] float64, the state, its bookkeeper)."""
    check_inputs(schedule, noise, init, config)
    sched = schedule.to(noise.x_T.device)
    xi = noise.xi.reshape(noise.num_samples, schedule.num_steps, -1).to(torch.float64)
    state = resume if resume is not None else new_state(noise, config, init)
    return sched, xi, state, Bookkeeper(state, model, sched, noise, config.method, callback)


def evaluate_window(state: SolverState, book: Bookkeeper, window: int, copy_init: bool) -> WindowEval:
    """Initialise states entering the window (copy init), then eps at all its states in one batched call."""
    if copy_init:
        enter_copies(state, window)  # a state entering the window starts as the state above it
    win = make_window(state.frozen, window, state.x.shape[1] - 1)
    x_ext = state.x[win.rows, win.t_up]
    vi, vj = torch.nonzero(win.valid, as_tuple=True)
    tv = win.t[vi, vj]
    eps = torch.zeros_like(x_ext[:, :-1])
    eps[vi, vj] = book.eps(x_ext[vi, vj + 1], tv, vi)
    return WindowEval(win, x_ext, vi, vj, tv, eps)


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
    T = schedule.num_steps
    sched, xi, state, book = start_solve(model, schedule, noise, config, init, callback, resume)
    window, order, max_iters = config.window or T, config.order or T, config.max_iters or T
    rule, step = RULES[config.stop], step_rule(sched)
    threshold_all = rule.thresholds(config, sched)
    if state.spent is None:
        state.spent = torch.zeros(noise.num_samples, dtype=torch.float64, device=state.x.device)
    while bool((state.frozen > 0).any()) and state.iteration < max_iters:
        book.begin()
        # 1. eps at every state of the window, one batched model call
        ev = evaluate_window(state, book, window, config.init == "copy")
        win, t, valid, x_cur = ev.win, ev.win.t, ev.win.valid, ev.x_cur
        # 2. first-order residuals R_t (the stopping rule's) and the splitting's order-k residuals F_t
        a_w = step.a(t)
        g = step.g(t, (ev.eps,), xi[win.rows, t])
        g = torch.where(valid[..., None], g, torch.zeros_like(g))
        exact = step_rhs(a_w[..., None], ev.x_up, g)  # the sequential step from the current state above
        rho = rms(exact - x_cur)
        rhs = exact if order == 1 else splitting_rhs(config.splitting, a_w, g, ev.x_ext, win.width, order)
        # 3. u* = the highest step the stopping rule does not accept
        thr = threshold_all[t]
        u_star, accepted = rule.test(config, rho, valid, win.lo, thr, state.spent, T)
        j = torch.arange(win.size, device=t.device)
        below = rule.updated(valid, u_star, accepted)
        # 4. accepted steps keep their values ("step"); x_{u*} takes the exact step; steps below u* the update
        new_vals, fallback = update(UpdateInput(x_cur, rhs - x_cur, valid, below, win, state, ev.vi, ev.vj))
        x_new = torch.where(below[..., None], new_vals, x_cur)
        x_new = torch.where((valid & (j[None, :] == u_star[:, None]))[..., None], exact, x_new)
        state.x[ev.vi, ev.tv] = x_new[ev.vi, ev.vj]
        # 5. the frozen boundary moves to u* (to the window bottom when every step was accepted)
        hi = state.frozen.clone()
        state.spent += torch.where(accepted, rho, torch.zeros_like(rho)).sum(dim=1)
        state.frozen = torch.where(u_star >= 0, win.lo + u_star.clamp(min=0), win.lo)
        state.iterations += (win.width > 0).long()
        state.nfe += win.width
        vi, vj = ev.vi, ev.vj
        log = log_record(
            book.iteration, vi, ev.tv, win.lo[vi], hi[vi], rho[vi, vj], thr[vi, vj], accepted[vi, vj], fallback[vi, vj]
        )
        book.end(log, win.lo, hi, torch.where(valid, rho, torch.full_like(rho, float("nan"))))
    return make_result(state, schedule, noise, config)
