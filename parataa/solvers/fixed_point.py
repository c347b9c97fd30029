"""Fixed-point iteration of order k: "FP" (k = 1) and "FP+" (k >= window), docs/METHOD.md sections 2-3 and 8.

Every unknown of the window moves to the right-hand side of its order-k equation at once:
    x_t <- x_t + F^(k)_t(x).
After i iterations the top i states of the window are exact, so it ends within T iterations.
"""

from __future__ import annotations

import torch

from ..noise import NoiseBundle
from ..schedules import Schedule
from ._iteration import fixed_point_update
from ._window import run_window_solver
from .base import Callback, Denoiser, SolverConfig, SolveResult, SolverState


def fixed_point(
    model: Denoiser,
    schedule: Schedule,
    noise: NoiseBundle,
    config: SolverConfig,
    *,
    init: torch.Tensor | None = None,
    callback: Callback | None = None,
    resume: SolverState | None = None,
) -> SolveResult:
    return run_window_solver(
        model, schedule, noise, config, fixed_point_update, init=init, callback=callback, resume=resume
    )
