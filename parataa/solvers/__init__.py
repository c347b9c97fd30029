"""Solvers of the triangular system. One algorithm per file, one signature, one result type.

sequential   back-substitution, T model calls (the reference)
fixed_point  FP (order 1) and FP+ (order >= window)
anderson     standard type-II Anderson acceleration (one gamma per window)
taa          Triangular Anderson Acceleration (ParaTAA)
picard       ParaDiGMS-style Picard iteration
"""

from __future__ import annotations

from collections.abc import Callable

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


def preset(name: str, **overrides) -> SolverConfig:
    """Solver configs by the study's names: sequential, fp, fp+, aa, taa, picard."""
    base = {
        "sequential": dict(method="sequential"),
        "fp": dict(method="fp", order=1),
        "fp+": dict(method="fp", order=None),
        "aa": dict(method="aa", order=None),
        "taa": dict(method="taa", order=None),
        "picard": dict(method="picard", init="copy"),
    }
    if name not in base:
        import difflib

        close = difflib.get_close_matches(name, list(base), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"solver must be one of {sorted(base)}, got {name!r}{hint}")
    return SolverConfig(**{**base[name], **overrides})


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
