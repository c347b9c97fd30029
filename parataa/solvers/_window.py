"""The sliding-window iteration shared by FP, AA and TAA (docs/METHOD.md sections 3-5 and 8-9).

One iteration, for every unfinished sample at once (states entering the window are initialised first):
  1. evaluate eps at the window's states x_{lo+1} .. x_f in one batched model call;
  2. first-order residuals R_t (rho_t = RMS) and the splitting's order-k residuals F_t of the current iterate;
  3. u* = the highest step the stopping rule does not accept (`stop_test`: per step, or the summed residual);
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
from ..system import Window, make_window, rms, splitting_rhs, step_rhs
from ._loop import Bookkeeper, log_record
from .base import (
    Callback,
    Denoiser,
    SolverConfig,
    SolveResult,
    SolverState,
    check_inputs,
    make_result,
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


def stop_test(
    config: SolverConfig, rho: torch.Tensor, valid: torch.Tensor, win: Window, thr: torch.Tensor, spent: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """u* per sample (the highest window position not accepted; -1 when all are) and the accepted-position mask.

    "step": a position is accepted when its own rho_t <= max(abs_tol, rel_tol g_t); u* is the highest one that
    is not, and accepted states keep their values (their residuals, part of the final trajectory's, are the
    ones just measured), so at the end every state meets the rule or is an exact step from the state above it.

    "sum": the whole window is accepted at once when the residual already accepted (`spent`) plus the window's
    rho sum stays within the budget of the steps from T down to the window's bottom, sum_tol (T - lo) / T; it then
    takes the method's update once more before it freezes (the caller does that: the measured iterate met the
    budget, the one after the update is, where the method contracts, closer still). Otherwise u* is the highest
    state whose own residual exceeds its share sum_tol / T, and the states above it are accepted as measured, but
    only while the window does not reach x_0 (lo > 0): such a window must freeze states to move on. The window
    that reaches x_0 (every window when W = T) is accepted only as a whole: a small residual frozen early can be
    amplified by expansive steps below it (docs/METHOD.md section 9 has the measurements). Either way the accepted
    residuals add up to at most sum_tol. x_{u*} always takes the exact step (residual 0).

    "target": as "sum" with the budget `target_rms(config)`, except that the window reaching x_0 is never accepted
    here: `target_accept` accepts it after the update, from the change of x_0 the update made.
    """
    j = torch.arange(win.size, device=rho.device)
    if config.stop == "step":
        bad = valid & (rho > thr)
    else:
        budget = config.sum_tol if config.stop == "sum" else target_rms(config)
        total = spent + torch.where(valid, rho, torch.zeros_like(rho)).sum(dim=1)
        whole = total <= budget * (win.num_steps - win.lo).to(rho.dtype) / win.num_steps
        whole = whole & (config.stop == "sum")
        # a window that does not reach x_0 must freeze states to move on: those within their share of the budget
        moving = (win.lo > 0)[:, None] & (rho <= budget / win.num_steps)
        bad = valid & ~whole[:, None] & ~moving
    u_star = torch.where(bad, j[None, :], torch.full_like(win.t, -1)).max(dim=1).values
    return u_star, valid & (j[None, :] > u_star[:, None])


def updated_positions(
    config: SolverConfig, valid: torch.Tensor, u_star: torch.Tensor, accepted: torch.Tensor
) -> torch.Tensor:
    """The positions that take the method's update: those below u*, and under the "sum" rule an accepted window
    too (it takes its last update before it freezes, docs/METHOD.md section 9)."""
    j = torch.arange(valid.shape[1], device=valid.device)
    below = valid & (j[None, :] < u_star[:, None])
    if config.stop == "sum":
        below = below | (accepted & (u_star < 0)[:, None])
    return below


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
    threshold_all = stop_thresholds(config, sched)
    if state.spent is None:
        state.spent = torch.zeros(noise.num_samples, dtype=torch.float64, device=state.x.device)
    while bool((state.frozen > 0).any()) and state.iteration < max_iters:
        book.begin()
        # 1. eps at every state of the window, one batched model call
        ev = evaluate_window(state, book, window, config.init == "copy")
        win, t, valid, x_cur = ev.win, ev.win.t, ev.win.valid, ev.x_cur
        # 2. first-order residuals R_t (the stopping rule's) and the splitting's order-k residuals F_t
        a_w = sched.a[t]
        g = sched.b[t][..., None] * ev.eps + sched.c[t][..., None] * xi[win.rows, t]
        g = torch.where(valid[..., None], g, torch.zeros_like(g))
        exact = step_rhs(a_w[..., None], ev.x_up, g)  # the sequential step from the current state above
        rho = rms(exact - x_cur)
        rhs = exact if order == 1 else splitting_rhs(config.splitting, a_w, g, ev.x_ext, win.width, order)
        # 3. u* = the highest step the stopping rule does not accept
        thr = threshold_all[t]
        u_star, accepted = stop_test(config, rho, valid, win, thr, state.spent)
        j = torch.arange(win.size, device=t.device)
        below = updated_positions(config, valid, u_star, accepted)
        # 4. accepted steps keep their values ("step"); x_{u*} takes the exact step; steps below u* the update
        new_vals, fallback = update(UpdateInput(x_cur, rhs - x_cur, valid, below, win, state, ev.vi, ev.vj))
        x_new = torch.where(below[..., None], new_vals, x_cur)
        x_new = torch.where((valid & (j[None, :] == u_star[:, None]))[..., None], exact, x_new)
        state.x[ev.vi, ev.tv] = x_new[ev.vi, ev.vj]
        u_star, accepted = target_accept(config, x_cur, x_new, valid, win, u_star, accepted)
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


def stop_thresholds(config: SolverConfig, schedule: Schedule) -> torch.Tensor:
    """Per-step threshold [T] logged with rho: max(abs_tol, rel_tol g_t) for "step"; the uniform share of the budget
    for "sum" and "target" (sum_tol / T, target_rms / T; those rules test more than that, see `stop_test`)."""
    if config.stop in ("sum", "target"):
        budget = config.sum_tol if config.stop == "sum" else target_rms(config)
        return torch.full_like(schedule.sigma, budget / schedule.num_steps)
    return torch.clamp(config.rel_tol * tolerance_scale(schedule, config.tol_scale), min=config.abs_tol)


# --- stop="target": the fidelity target (docs/METHOD.md section 9) ---------------------------------------------------
# The margin between the target and the PSNR-equivalent of x_0's change per iteration at which the rule stops,
# chosen on the tuning cells of benchmarks/validation_cells.yaml (benchmarks/RESULTS.md, "Validation suite").
TARGET_MARGIN_DB = 0.0


def target_rms(config: SolverConfig) -> float:
    """The RMS distance of x_0 (data range 2, [-1, 1]) at PSNR `target_db`: 2 * 10^(-target_db / 20)."""
    return 2.0 * 10.0 ** (-config.target_db / 20.0)


def target_accept(
    config: SolverConfig, x_cur: torch.Tensor, x_new: torch.Tensor, valid: torch.Tensor, win: Window,
    u_star: torch.Tensor, accepted: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """stop="target", after the update: a window that reaches x_0 (lo = 0) is accepted as a whole, and its sample
    finished with the updated trajectory, when the update changed x_0 by at most the target's RMS less the margin,
    RMS(x_0^new - x_0^cur) <= target_rms 10^(-TARGET_MARGIN_DB / 20). The checked iterate is the returned one: the
    change measures how far the update moved it, and where the iteration contracts by a factor r per iteration the
    remaining distance to the fixed point is r / (1 - r) times that change (at most the change while r <= 1/2).
    Returns (u*, accepted) with u* = -1 and the window's positions accepted where it stops; unchanged otherwise."""
    if config.stop != "target":
        return u_star, accepted
    change = rms(x_new[:, 0] - x_cur[:, 0])  # window position 0 is x_0 when lo = 0
    done = (win.lo == 0) & valid[:, 0] & (change <= target_rms(config) * 10.0 ** (-TARGET_MARGIN_DB / 20.0))
    return torch.where(done, torch.full_like(u_star, -1), u_star), accepted | (done[:, None] & valid)
