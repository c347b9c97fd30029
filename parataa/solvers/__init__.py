"""Solvers of the triangular system. One algorithm per file, one signature, one result type.

sequential   back-substitution, T model calls (the reference)
fixed_point  FP (order 1) and FP+ (order >= window)
anderson     standard type-II Anderson acceleration (one gamma per window)
taa          Triangular Anderson Acceleration (ParaTAA)
picard       ParaDiGMS-style Picard iteration
"""

from __future__ import annotations

from collections.abc import Callable

from ..solver_config import METHOD_RECORDS, preset
from .anderson import anderson
from .base import (
    Denoiser,
    IterationInfo,
    ModelOutputError,
    SolverConfig,
    SolveResult,
    SolverState,
    registered,
)
from .fixed_point import fixed_point
from .picard import picard
from .sequential import sequential
from .taa import taa

# the reference loop of every registered method (parataa/solver_config.py: METHOD_RECORDS)
SOLVERS: dict[str, Callable[..., SolveResult]] = {n: registered(m.loop) for n, m in METHOD_RECORDS.items()}


def solve(model, schedule, noise, config: SolverConfig, *, engine: str = "eager", **kwargs) -> SolveResult:
    """Run the solver `config.method` names.

    engine: "eager" (the reference loops), "static" (fixed shapes, masks, one small device-to-host copy per
    iteration; any device), "graphed" (each window-size bucket's whole iteration, model call included, captured
    in CUDA graphs and replayed; the model must be graph-safe), "graphed-solver" (the solver captured, the model
    called eagerly, e.g. a DistributedDenoiser). The non-eager engines take `buckets`, `ls_dtype`, `linsolve` and
    `warmup` (parataa/solvers/static.py) and give the same SolveResult (docs/METHOD.md section 11).
    """
    if engine == "eager":
        return SOLVERS[config.method](model, schedule, noise, config, **kwargs)
    from .static import ENGINES, solve_static

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    return solve_static(model, schedule, noise, config, engine=engine, **kwargs)


__all__ = [
    "SOLVERS",
    "Denoiser",
    "IterationInfo",
    "ModelOutputError",
    "SolveResult",
    "SolverConfig",
    "SolverState",
    "anderson",
    "fixed_point",
    "picard",
    "preset",
    "sequential",
    "solve",
    "taa",
]
