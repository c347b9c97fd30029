"""Solvers of the triangular system. One algorithm per file, one signature, one result type.

sequential   back-substitution, T model calls (the reference)
_iteration   FP (order 1) and FP+ (order >= window): `fixed_point_update`
anderson     standard type-II Anderson acceleration (one gamma per window)
taa          Triangular Anderson Acceleration (ParaTAA)
picard       ParaDiGMS-style Picard iteration

FP, AA and TAA run the sliding window (`_window.py`) with their update rule; every method is registered in
parataa/solver_config.py (`METHOD_RECORDS`), from which `SOLVERS` follows.
"""

from __future__ import annotations

from collections.abc import Callable

from ..solver_config import METHOD_RECORDS, preset
from ._window import window_solver
from .base import (
    Denoiser,
    IterationInfo,
    ModelOutputError,
    SolverConfig,
    SolveResult,
    SolverState,
    registered,
)

# the reference loop of every registered method (parataa/solver_config.py: METHOD_RECORDS)
SOLVERS: dict[str, Callable[..., SolveResult]] = {
    n: registered(m.loop) if m.loop else window_solver(registered(m.update)) for n, m in METHOD_RECORDS.items()
}
sequential, fixed_point, anderson = SOLVERS["sequential"], SOLVERS["fp"], SOLVERS["aa"]
taa, picard = SOLVERS["taa"], SOLVERS["picard"]


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
