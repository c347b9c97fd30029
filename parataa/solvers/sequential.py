"""Sequential sampling: back-substitution of the triangular system, t = T-1 down to 0, one model call per step.

This is the reference every parallel solver is compared with; its trajectory is the system's unique solution.
"""

from __future__ import annotations

import torch

from ..noise import NoiseBundle
from ..schedules import Schedule
from ..system import step_rule
from ._loop import Bookkeeper, log_record
from .base import Callback, Denoiser, SolverConfig, SolveResult, SolverState, check_inputs, make_result


def sequential(
    model: Denoiser,
    schedule: Schedule,
    noise: NoiseBundle,
    config: SolverConfig | None = None,
    *,
    init: torch.Tensor | None = None,
    callback: Callback | None = None,
    resume: SolverState | None = None,
) -> SolveResult:
    config = config or SolverConfig(method="sequential")
    check_inputs(schedule, noise, init, config)
    T, n = schedule.num_steps, noise.num_samples
    device = noise.x_T.device
    sched = schedule.to(device)
    xi = noise.xi.reshape(n, T, -1).to(torch.float64)
    state = resume if resume is not None else sequential_state(noise)
    book = Bookkeeper(state, model, sched, noise, "sequential", callback)
    rule = step_rule(sched)
    samples = torch.arange(n, device=device)
    zero = torch.zeros(n, dtype=torch.float64, device=device)
    while int(state.frozen[0]) > 0:
        book.begin()
        t = int(state.frozen[0]) - 1
        steps = torch.full((n,), t, dtype=torch.long, device=device)
        eps = rule.output(steps, state.x[:, t + 1], book.eps(state.x[:, t + 1], steps, samples))
        state.x[:, t] = rule.step(steps, state.x[:, t + 1], outputs(state, eps, t, rule.reads), xi[:, t])
        state.frozen -= 1
        state.iterations += 1
        state.nfe += 1
        done = torch.ones(n, dtype=torch.bool, device=device)
        log = log_record(book.iteration, samples, steps, steps, steps + 1, zero, zero, done, ~done)
        book.end(log, steps, steps + 1, zero[:, None])
    return make_result(state, schedule, noise, config)


def outputs(state: SolverState, eps: torch.Tensor, t: int, reads: int) -> tuple[torch.Tensor, ...]:
    """The model outputs step t reads: eps at x_{t+1} and, for a step rule that reads two, the output at x_{t+2}
    (kept in `SolverState.out`; zeros above x_T)."""
    if reads == 1:
        return (eps,)
    if state.out is None:
        n, T1, d = state.x.shape
        state.out = torch.zeros(n, T1 + 1, d, dtype=torch.float64, device=state.x.device)
    state.out[:, t + 1] = eps
    return (eps, state.out[:, t + 2])


def sequential_state(noise: NoiseBundle) -> SolverState:
    """The start of a sequential solve: x_T the noise, nothing else known yet."""
    n, T = noise.num_samples, noise.num_steps
    device = noise.x_T.device
    x = torch.zeros(n, T + 1, noise.x_T[0].numel(), dtype=torch.float64, device=device)
    x[:, T] = noise.x_T.reshape(n, -1).to(torch.float64)
    full = torch.full((n,), T, dtype=torch.long, device=device)
    zeros = torch.zeros(n, dtype=torch.long, device=device)
    return SolverState(x=x, frozen=full, entered=full.clone(), iterations=zeros, nfe=zeros.clone())
