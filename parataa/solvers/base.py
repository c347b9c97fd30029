"""What every solver shares: the model protocol, the configuration, the result, the resumable state.

Every solver has one signature::

    solver(model, schedule, noise, config, *, init=None, callback=None, resume=None) -> SolveResult

`model` is any `Denoiser`: it maps states x [B, *S] (float64, on the solver's device) at model timesteps
[B] of samples [B] (indices into the bundle) to guided noise predictions eps [B, *S]. Adapters absorb model
differences, classifier-free guidance, dtype casts, micro-batching and multi-GPU evaluation; solvers never
touch files, models' internals, randomness or distributed code.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..noise import NoiseBundle
from ..schedules import Schedule
from ..solver_config import INITS, METHODS, TOL_SCALES, SolverConfig

__all__ = [
    "Denoiser",
    "SolverConfig",
    "SolveResult",
    "SolverState",
    "IterationInfo",
    "ModelOutputError",
    "METHODS",
    "INITS",
    "TOL_SCALES",
]


@runtime_checkable
class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor: ...


class ModelOutputError(FloatingPointError):
    """The model returned NaN or Inf. Never replaced: the run stops and names where it happened."""

    def __init__(self, sample: int, seed: int, step: int, iteration: int, solver: str) -> None:
        self.sample, self.seed, self.step, self.iteration, self.solver = sample, seed, step, iteration, solver
        super().__init__(
            f"model output is not finite for sample {sample} (seed {seed}) at step t={step} "
            f"(reading state x_{step + 1}), iteration {iteration} of solver {solver!r}"
        )


@dataclass
class IterationInfo:
    """What a callback sees after each iteration. Observing it must not change the solve."""

    iteration: int
    trajectory: torch.Tensor  # [N, T+1, *S], float64, live view: copy what you keep
    frozen: torch.Tensor  # [N] lowest frozen state index after this iteration
    window_lo: torch.Tensor  # [N]
    window_hi: torch.Tensor  # [N] frozen index before this iteration (window = steps lo .. hi-1)
    rho: torch.Tensor  # [N, Wmax] first-order residual RMS per window position (NaN on padding)
    state: SolverState


@dataclass
class SolverState:
    """Everything needed to resume a solve bit for bit (see `state_dict`)."""

    x: torch.Tensor  # [N, T+1, D]
    frozen: torch.Tensor  # [N]
    entered: torch.Tensor  # [N] lowest state index initialised so far
    iteration: int = 0
    iterations: torch.Tensor | None = None  # [N]
    nfe: torch.Tensor | None = None  # [N]
    hist_x: torch.Tensor | None = None  # [N, T, m, D], newest first
    hist_f: torch.Tensor | None = None
    hist_len: torch.Tensor | None = None  # [N, T]
    spent: torch.Tensor | None = None  # [N] summed rho of the states accepted so far (the "sum" stopping rule)
    out: torch.Tensor | None = None  # [N, T+2, D] model output at each state, mapped (StepRule.output; 2-output rules)
    log: list[dict[str, torch.Tensor]] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> SolverState:
        return cls(**dict(d))


@dataclass
class SolveResult:
    trajectory: torch.Tensor  # [N, T+1, *S] float64; index t = state x_t
    iterations: torch.Tensor  # [N] parallel iterations (model calls) each sample took
    nfe: torch.Tensor  # [N] states evaluated by the model (each counts once, CFG halves included)
    finished: torch.Tensor  # [N] bool: all states converged (False when max_iters cut it short)
    config: SolverConfig
    schedule: dict[str, Any]
    seeds: tuple[int, ...]
    log_records: list[dict[str, torch.Tensor]]
    timings_records: list[dict[str, float]]

    @property
    def x0(self) -> torch.Tensor:
        return self.trajectory[:, 0]

    @property
    def log(self) -> Any:
        """Tidy convergence log: one row per (sample, iteration, step) evaluated."""
        import pandas as pd

        if not self.log_records:
            return pd.DataFrame(
                columns=[
                    "sample",
                    "seed",
                    "iteration",
                    "step",
                    "rho",
                    "threshold",
                    "converged",
                    "window_lo",
                    "window_hi",
                    "fallback",
                ]
            )
        cols = {k: torch.cat([r[k] for r in self.log_records]).numpy() for k in self.log_records[0]}
        df = pd.DataFrame(cols)
        df.insert(1, "seed", np.asarray(self.seeds, dtype=np.int64)[df["sample"].to_numpy()])
        return df

    @property
    def timings(self) -> Any:
        """One row per iteration: model, solver and communication seconds, rows evaluated."""
        import pandas as pd

        return pd.DataFrame(self.timings_records, columns=["iteration", "model_s", "solver_s", "comm_s", "rows"])

    def summary(self) -> dict[str, Any]:
        t = self.timings
        return {
            "method": self.config.method,
            "iterations_mean": float(self.iterations.double().mean()),
            "iterations_max": int(self.iterations.max()),
            "nfe_mean": float(self.nfe.double().mean()),
            "finished": bool(self.finished.all()),
            "model_s": float(t["model_s"].sum()) if len(t) else 0.0,
            "solver_s": float(t["solver_s"].sum()) if len(t) else 0.0,
            "comm_s": float(t["comm_s"].sum()) if len(t) else 0.0,
        }


Callback = Callable[[IterationInfo], None]


def make_result(state: SolverState, schedule: Schedule, noise: NoiseBundle, config: SolverConfig) -> SolveResult:
    """The result of a solve from its final state (a sample is finished once its frozen boundary reached 0)."""
    n, T1 = state.x.shape[0], state.x.shape[1]
    return SolveResult(
        trajectory=state.x.view(n, T1, *noise.sample_shape).clone(),
        iterations=state.iterations.cpu().clone(),
        nfe=state.nfe.cpu().clone(),
        finished=(state.frozen == 0).cpu(),
        config=config,
        schedule=schedule.describe(),
        seeds=noise.seeds,
        log_records=state.log,
        timings_records=state.timings,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Evaluator:
    """Calls the model on the valid window rows, checks the output, and times the call."""

    def __init__(self, model: Denoiser, schedule: Schedule, noise: NoiseBundle, method: str) -> None:
        self.model = model
        self.schedule = schedule
        self.seeds = noise.seeds
        self.shape = noise.sample_shape
        self.method = method
        self.model_s = 0.0
        self.comm_s = 0.0

    def __call__(
        self, x_rows: torch.Tensor, steps: torch.Tensor, samples: torch.Tensor, iteration: int
    ) -> torch.Tensor:
        """x_rows [R, D] float64 states x_{t+1}; steps [R] step indices t; samples [R]."""
        device = x_rows.device
        sync(device)
        t0 = time.perf_counter()
        comm0 = float(getattr(self.model, "comm_seconds", 0.0))
        tau = self.schedule.timesteps.to(device)[steps]
        out = self.model(x_rows.reshape(-1, *self.shape), tau, samples)
        if out.shape != (x_rows.shape[0], *self.shape):
            raise ValueError(
                f"model returned shape {tuple(out.shape)} for {x_rows.shape[0]} states of shape {self.shape}; "
                "a Denoiser must return one eps per input state (guidance applied, learned-sigma channels dropped)"
            )
        out = out.reshape(x_rows.shape[0], -1).to(torch.float64)
        finite = torch.isfinite(out).all(dim=1)
        if not bool(finite.all()):
            bad = int(torch.nonzero(~finite)[0, 0])
            s = int(samples[bad])
            raise ModelOutputError(s, self.seeds[s], int(steps[bad]), iteration, self.method)
        sync(device)
        self.comm_s = float(getattr(self.model, "comm_seconds", 0.0)) - comm0
        self.model_s = time.perf_counter() - t0 - self.comm_s
        return out


def registered(spec: str) -> Any:
    """The function a registry record (parataa/solver_config.py) names: "module:function" in parataa.solvers."""
    module, name = spec.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def check_inputs(schedule: Schedule, noise: NoiseBundle, init: torch.Tensor | None, config: SolverConfig) -> None:
    if noise.num_steps != schedule.num_steps:
        raise ValueError(
            f"noise bundle has {noise.num_steps} steps but the schedule has {schedule.num_steps}; "
            "draw the bundle with num_steps equal to the sampler's step count"
        )
    if config.init == "trajectory":
        expected = (noise.num_samples, schedule.num_steps + 1, *noise.sample_shape)
        if init is None:
            raise ValueError("init='trajectory' needs an initial trajectory: pass init=<tensor of shape [N, T+1, *S]>")
        if tuple(init.shape) != expected:
            raise ValueError(f"init trajectory must have shape {expected}, got {tuple(init.shape)}")
        if config.freeze_from is not None and config.freeze_from > schedule.num_steps:
            raise ValueError(f"freeze_from must be <= T={schedule.num_steps}, got {config.freeze_from}")
    elif init is not None:
        raise ValueError(f"an init trajectory was given but config.init is {config.init!r}; set init='trajectory'")
