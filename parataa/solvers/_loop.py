"""What every solver loop does around its algorithm: timers, the convergence log, timings, the callback.

`Bookkeeper` keeps that out of the loops, so each reads as its algorithm box:

    book.begin()                       # start the iteration's clock
    eps = book.eps(x_rows, steps, samples)   # the one batched model call (timed apart, checked for NaN/Inf)
    ...                                # the method
    book.end(log=..., window_lo=..., window_hi=..., rho=...)   # log rows, timings, callback, iteration += 1
"""

from __future__ import annotations

import time

import torch

from ..noise import NoiseBundle
from ..schedules import Schedule
from .base import Callback, Denoiser, Evaluator, IterationInfo, SolverState, sync

__all__ = ["Bookkeeper", "log_record"]


def log_record(
    iteration: int,
    sample: torch.Tensor,
    step: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    rho: torch.Tensor,
    threshold: torch.Tensor,
    converged: torch.Tensor,
    fallback: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """One iteration's rows of the convergence log, moved to the CPU in three copies instead of nine."""
    longs = torch.stack([sample, step, lo, hi]).cpu()
    floats = torch.stack([rho, threshold]).cpu()
    flags = torch.stack([converged, fallback]).cpu()
    return {
        "sample": longs[0],
        "iteration": torch.full((longs.shape[1],), iteration, dtype=torch.long),
        "step": longs[1],
        "rho": floats[0],
        "threshold": floats[1],
        "converged": flags[0],
        "window_lo": longs[2],
        "window_hi": longs[3],
        "fallback": flags[1],
    }


class Bookkeeper:
    """Times an iteration (model call apart from the solver's own work), appends its log rows and timings to the
    state, advances the iteration counter and shows the callback the new iterate."""

    def __init__(
        self,
        state: SolverState,
        model: Denoiser,
        schedule: Schedule,
        noise: NoiseBundle,
        method: str,
        callback: Callback | None,
    ) -> None:
        self.state = state
        self.evaluate = Evaluator(model, schedule, noise, method)
        self.callback = callback
        self.device = noise.x_T.device
        self.shape = (noise.num_samples, schedule.num_steps + 1, *noise.sample_shape)
        self._t_start = 0.0
        self._model_wall = 0.0

    @property
    def iteration(self) -> int:
        return self.state.iteration

    def begin(self) -> None:
        sync(self.device)
        self._t_start = time.perf_counter()
        self._model_wall = 0.0

    def eps(self, x_rows: torch.Tensor, steps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """The model's guided eps at states x_rows [R, D] (x_{t+1} of steps [R]) of samples [R], float64."""
        t0 = time.perf_counter()
        out = self.evaluate(x_rows, steps, samples, self.state.iteration)
        self._model_wall += time.perf_counter() - t0
        return out

    def end(
        self,
        log: dict[str, torch.Tensor],
        window_lo: torch.Tensor,
        window_hi: torch.Tensor,
        rho: torch.Tensor,
    ) -> None:
        """Close the iteration: `log` from `log_record`; window bounds and the per-position rho [N, Wmax] (NaN on
        padding) are what the callback sees."""
        st = self.state
        sync(self.device)
        elapsed = time.perf_counter() - self._t_start
        st.log.append(log)
        st.timings.append(
            {
                "iteration": st.iteration,
                "model_s": self.evaluate.model_s,
                "solver_s": elapsed - self._model_wall,
                "comm_s": self.evaluate.comm_s,
                "rows": int(log["sample"].numel()),
            }
        )
        st.iteration += 1
        if self.callback is not None:
            self.callback(
                IterationInfo(
                    iteration=st.iteration - 1,
                    trajectory=st.x.view(self.shape),
                    frozen=st.frozen,
                    window_lo=window_lo,
                    window_hi=window_hi,
                    rho=rho,
                    state=st,
                )
            )
