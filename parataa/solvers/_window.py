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
from ..system import StepRule, Window, make_window, step_rule
from ._iteration import History, UpdateRule, count_iteration, model_roundoff, window_iteration
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
    eps: torch.Tensor  # [N, Wmax, D] the model's output at x_{t+1}, tau_t (`StepRule.output`), zero on padding

    @property
    def x_cur(self) -> torch.Tensor:
        return self.x_ext[:, :-1]

    @property
    def x_up(self) -> torch.Tensor:
        return self.x_ext[:, 1:]


class StateHistory(History):
    """The reference loops' history: `SolverState.hist_*` [N, T, m, D], allocated on first use; the valid
    positions are written through their (sample, step) indices."""

    def __init__(self, state: SolverState, ev: WindowEval, m: int) -> None:
        if state.hist_x is None:
            n, T1, d = state.x.shape
            state.hist_x = torch.zeros(n, T1 - 1, m, d, dtype=torch.float64, device=state.x.device)
            state.hist_f = torch.zeros_like(state.hist_x)
            state.hist_len = torch.zeros(n, T1 - 1, dtype=torch.long, device=state.x.device)
        assert state.hist_f is not None and state.hist_len is not None
        super().__init__(state.hist_x, state.hist_f, state.hist_len, ev.win.rows, ev.win.t)
        self.vi, self.vj, self.tv = ev.vi, ev.vj, ev.tv

    def write(self, hx: torch.Tensor, hf: torch.Tensor, length: torch.Tensor, valid: torch.Tensor) -> None:
        vi, vj, tv = self.vi, self.vj, self.tv
        self.hist_x[vi, tv] = hx[vi, vj]
        self.hist_f[vi, tv] = hf[vi, vj]
        self.hist_len[vi, tv] = length[vi, vj]

    def reset(self, fallback: torch.Tensor) -> None:
        if bool(fallback.any()):
            self.hist_len[self.rows.expand_as(self.t)[fallback], self.t[fallback]] = 1


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


def evaluate_window(state: SolverState, book: Bookkeeper, step: StepRule, window: int, copy_init: bool) -> WindowEval:
    """Initialise states entering the window (copy init), then the model's output at all its states in one batched
    call, as the steps read it (`StepRule.output`)."""
    if copy_init:
        enter_copies(state, window)  # a state entering the window starts as the state above it
    win = make_window(state.frozen, window, state.x.shape[1] - 1)
    x_ext = state.x[win.rows, win.t_up]
    vi, vj = torch.nonzero(win.valid, as_tuple=True)
    tv = win.t[vi, vj]
    eps = torch.zeros_like(x_ext[:, :-1])
    x_rows = x_ext[vi, vj + 1]
    eps[vi, vj] = step.output(tv, x_rows, book.eps(x_rows, tv, vi))
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
    stop, step = RULES[config.stop], step_rule(sched)
    threshold_all = stop.thresholds(config, sched)
    if state.spent is None:
        state.spent = torch.zeros(noise.num_samples, dtype=torch.float64, device=state.x.device)
    roundoff = model_roundoff(model)
    while bool((state.frozen > 0).any()) and state.iteration < max_iters:
        book.begin()
        # 1. eps at every state of the window, one batched model call
        ev = evaluate_window(state, book, step, window, config.init == "copy")
        win, thr, above = ev.win, threshold_all[ev.win.t], outputs_above(state, ev, step.reads)
        # 2-5. residuals, stopping test, update, window move (_iteration.window_iteration)
        out = window_iteration(
            config, stop, step, order, T, (win.lo, win.width, win.t, win.valid), ev.x_ext, ev.eps,
            xi[win.rows, win.t], thr, state.spent, update, StateHistory(state, ev, config.history), above, roundoff,
        )  # fmt: skip
        state.x[ev.vi, ev.tv] = out.x_new[ev.vi, ev.vj]
        hi = state.frozen.clone()
        state.spent, state.frozen = out.spent, out.frozen
        count_iteration(state.iterations, state.nfe, win.width)
        vi, vj = ev.vi, ev.vj
        rows = (out.rho[vi, vj], thr[vi, vj], out.accepted[vi, vj], out.fallback[vi, vj])
        book.end(log_record(book.iteration, vi, ev.tv, win.lo[vi], hi[vi], *rows), win.lo, hi, nan_pad(out.rho, win))
    return make_result(state, schedule, noise, config)


def outputs_above(state: SolverState, ev: WindowEval, reads: int) -> torch.Tensor | None:
    """For a step rule that reads two model outputs: keep this window's outputs by state (`SolverState.out`) and
    return the output at each window's frozen state above it (zeros above x_T). None for rules that read one."""
    if reads == 1:
        return None
    if state.out is None:
        n, T1, d = state.x.shape
        state.out = torch.zeros(n, T1 + 1, d, dtype=torch.float64, device=state.x.device)
    state.out[ev.vi, ev.tv + 1] = ev.eps[ev.vi, ev.vj]
    return state.out[ev.win.rows[:, 0], state.frozen + 1]


def nan_pad(rho: torch.Tensor, win: Window) -> torch.Tensor:
    """rho [N, Wmax] with NaN on padding, as the callback shows it."""
    return torch.where(win.valid, rho, torch.full_like(rho, float("nan")))


def window_solver(make_update: Callable[[SolverConfig], UpdateRule]) -> Callable[..., SolveResult]:
    """The reference loop of a window solver: the sliding window with the update rule `make_update(config)`."""

    def solver(model, schedule, noise, config, **kwargs) -> SolveResult:
        return run_window_solver(model, schedule, noise, config, make_update(config), **kwargs)

    return solver
