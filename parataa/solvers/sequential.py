"""Sequential sampling: back-substitution of the triangular system, t = T-1 down to 0, one model call per step.

This is the reference every parallel solver is compared with; its trajectory is the system's unique solution.
"""

from __future__ import annotations

import time

import torch

from ..noise import NoiseBundle
from ..schedules import Schedule
from ..system import step_rhs
from .base import (
    Callback,
    Denoiser,
    Evaluator,
    IterationInfo,
    SolverConfig,
    SolveResult,
    SolverState,
    make_result,
    sync,
)


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
    if noise.num_steps != schedule.num_steps:
        raise ValueError(
            f"noise bundle has {noise.num_steps} steps but the schedule has {schedule.num_steps}; "
            "draw the bundle with num_steps equal to the sampler's step count"
        )
    T, n = schedule.num_steps, noise.num_samples
    device = noise.x_T.device
    sched = schedule.to(device)
    xi = noise.xi.reshape(n, T, -1).to(torch.float64)
    if resume is None:
        x = torch.zeros(n, T + 1, xi.shape[2], dtype=torch.float64, device=device)
        x[:, T] = noise.x_T.reshape(n, -1).to(torch.float64)
        state = SolverState(
            x=x,
            frozen=torch.full((n,), T, dtype=torch.long, device=device),
            entered=torch.full((n,), T, dtype=torch.long, device=device),
            iterations=torch.zeros(n, dtype=torch.long, device=device),
            nfe=torch.zeros(n, dtype=torch.long, device=device),
        )
    else:
        state = resume
    evaluate = Evaluator(model, sched, noise, "sequential")
    samples = torch.arange(n, device=device)
    samples_cpu = torch.arange(n)
    while int(state.frozen[0]) > 0:
        t = int(state.frozen[0]) - 1
        steps = torch.full((n,), t, dtype=torch.long, device=device)
        sync(device)
        t0 = time.perf_counter()
        eps = evaluate(state.x[:, t + 1], steps, samples, state.iteration)
        t1 = time.perf_counter()
        g = sched.b[t] * eps + sched.c[t] * xi[:, t]
        state.x[:, t] = step_rhs(sched.a[t], state.x[:, t + 1], g)
        sync(device)
        t2 = time.perf_counter()
        state.frozen -= 1
        state.iterations += 1
        state.nfe += 1
        steps_cpu = torch.full((n,), t, dtype=torch.long)
        state.log.append(
            {
                "sample": samples_cpu,
                "iteration": torch.full((n,), state.iteration, dtype=torch.long),
                "step": steps_cpu,
                "rho": torch.zeros(n, dtype=torch.float64),
                "threshold": torch.zeros(n, dtype=torch.float64),
                "converged": torch.ones(n, dtype=torch.bool),
                "window_lo": steps_cpu,
                "window_hi": steps_cpu + 1,
                "fallback": torch.zeros(n, dtype=torch.bool),
            }
        )
        state.timings.append(
            {
                "iteration": state.iteration,
                "model_s": evaluate.model_s,
                "solver_s": (t2 - t0) - (t1 - t0) + 0.0,
                "comm_s": evaluate.comm_s,
                "rows": n,
            }
        )
        state.iteration += 1
        if callback is not None:
            callback(
                IterationInfo(
                    iteration=state.iteration - 1,
                    trajectory=state.x.view(n, T + 1, *noise.sample_shape),
                    frozen=state.frozen,
                    window_lo=steps,
                    window_hi=steps + 1,
                    rho=torch.zeros(n, 1, dtype=torch.float64, device=device),
                    state=state,
                )
            )
    return make_result(state, schedule, noise, config)
