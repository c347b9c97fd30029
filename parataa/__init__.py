"""parataa: parallel sampling of diffusion models with Triangular Anderson Acceleration (ParaTAA).

The names below load their modules on first use, so that torch-free parts (`parataa.solver_config`, used by the
analysis) can be imported without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "NoiseBundle": "noise",
    "draw_noise": "noise",
    "load_noise": "noise",
    "save_noise": "noise",
    "Schedule": "schedules",
    "dit_schedule": "schedules",
    "from_alphas": "schedules",
    "from_diffusers_config": "schedules",
    "SolverConfig": "solver_config",
    "preset": "solver_config",
    "SolveResult": "solvers",
    "solve": "solvers",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
