"""parataa: parallel sampling of diffusion models with Triangular Anderson Acceleration (ParaTAA)."""

from .noise import NoiseBundle, draw_noise, load_noise, save_noise
from .schedules import Schedule, dit_schedule, from_alphas, from_diffusers_config
from .solvers import SolverConfig, SolveResult, preset, solve

__version__ = "0.1.0"

__all__ = [
    "NoiseBundle",
    "Schedule",
    "SolveResult",
    "SolverConfig",
    "dit_schedule",
    "draw_noise",
    "from_alphas",
    "from_diffusers_config",
    "load_noise",
    "preset",
    "save_noise",
    "solve",
]
