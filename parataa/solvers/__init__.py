"""Solvers of the triangular system. One algorithm per file, one signature, one result type.

sequential   back-substitution, T model calls (the reference)
fixed_point  FP (order 1) and FP+ (order >= window)
anderson     standard type-II Anderson acceleration (one gamma per window)
taa          Triangular Anderson Acceleration (ParaTAA)
picard       ParaDiGMS-style Picard iteration
"""

from __future__ import annotations

from collections.abc import Callable

from ..solver_config import preset
from .anderson import anderson
from .base import (
    Denoiser,
    IterationInfo,
    ModelOutputError,
    SolverConfig,
    SolveResult,
    SolverState,
)
from .fixed_point import fixed_point
from .picard import picard
from .sequential import sequential
from .taa import taa

SOLVERS: dict[str, Callable[..., SolveResult]] = {
    "sequential": sequential,
    "fp": fixed_point,
    "aa": anderson,
    "taa": taa,
    "picard": picard,
}


def solve(model, schedule, noise, config: SolverConfig, **kwargs) -> SolveResult:
    """Run the solver `config.method` names."""
    return SOLVERS[config.method](model, schedule, noise, config, **kwargs)


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
