"""Static-shape solver iterations, run eagerly or replayed from CUDA graphs (docs/METHOD.md section 11).

The reference loops (`_window.run_window_solver`, `picard.picard`, `sequential.sequential`) size every tensor by
the current window and move the valid rows with torch.nonzero, so an iteration launches many small kernels and
waits for the host several times. `StaticSolver` runs the same algorithm on fixed shapes:

- each sample's window is padded to a bucket size B (by default the powers of two below W, and W itself),
  picked per iteration from the frozen boundaries; masks replace torch.nonzero;
- padding positions read and write scratch slots (state index T+1, step index T, history row T), never a real
  state or history row;
- log rows stay on the device and are copied to the host once, at the end; per-iteration model time is measured
  with CUDA events read at the end;
- one small device-to-host copy per iteration (the frozen boundaries and a non-finite flag) picks the next bucket
  and decides when to stop. Sequential sampling needs none: its T steps are known in advance.

Engines ("static", "graphed", "graphed-solver"): parataa/solvers/_graphs.py. The iteration segments on the padded
window: _segments.py. The device-side log: _device_log.py.

Same semantics as the reference, by construction: both run the iteration core (`_iteration.py`: residuals, stopping
rule, safeguard, updates, history and fallbacks) on the same padded layout, and give the same log rows (one per
valid window position, in sample-then-step order) and counts. Reductions over the window (Anderson's shared Gram
matrix, Picard's window sum, the "sum" rule's total) add B - w exact zeros after the valid values.
tests/test_static.py checks on the CPU that every solver, splitting, rule and window gives the reference's iterates
bit for bit, and on a GPU that graph replay gives the static engine's; the static engine against the reference loops
on a GPU (other kernels, other summation orders) is not compared.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..noise import NoiseBundle
from ..schedules import Schedule
from ..solver_config import METHOD_RECORDS
from ..stopping import RULES
from ..system import step_rule
from ._device_log import DeviceLog
from ._graphs import ENGINES, GraphCaptureError, GraphedSegments, check_engine, check_numerics, seconds
from ._history import elimination_solve, ridge_solve
from ._iteration import model_roundoff
from ._segments import Segments
from ._window import new_state
from .base import (
    Callback,
    Denoiser,
    SolverConfig,
    SolveResult,
    SolverState,
    check_inputs,
    make_result,
    registered,
)
from .picard import inverse_next_variance
from .sequential import sequential_state

__all__ = [
    "ENGINES",
    "GraphCaptureError",
    "StaticSolver",
    "default_buckets",
    "elimination_solve",
    "solve_static",
]


def default_buckets(window: int) -> tuple[int, ...]:
    """Window-size buckets: the powers of two below `window`, and `window` itself."""
    out, b = [], 1
    while b < window:
        out.append(b)
        b *= 2
    return (*out, window)


class StaticSolver(GraphedSegments, Segments, DeviceLog):
    """A solver on fixed shapes for one (model, schedule, config, number of samples, sample shape), reusable across
    noise bundles: buffers and captured graphs are kept, so only the first solve pays for the captures.

    Parameters
    ----------
    engine
        "static", "graphed" or "graphed-solver" (module docstring).
    buckets
        Window sizes the padded window can take (each in [1, W]; W is always added). None: `default_buckets(W)`.
    ls_dtype
        dtype of the Anderson/TAA least squares (Gram matrices, right-hand sides, the small solves): float64 (the
        reference) or float32 (an option; benchmarks/wallclock.py measures the distance to float64).
    linsolve
        "lapack" (`torch.linalg.solve_ex`, as the reference) or "elimination" (`elimination_solve`). None: lapack
        for "static", elimination for the graphed engines.
    warmup
        Eager runs of an iteration (on a copy of the state, restored afterwards) before a bucket is captured.
    """

    def __init__(
        self,
        model: Denoiser,
        schedule: Schedule,
        config: SolverConfig,
        *,
        num_samples: int,
        sample_shape: Sequence[int],
        device: str | torch.device,
        engine: str = "static",
        buckets: Sequence[int] | None = None,
        ls_dtype: torch.dtype = torch.float64,
        linsolve: str | None = None,
        warmup: int = 2,
    ) -> None:
        self.device = check_engine(model, engine, torch.device(device))
        linsolve = check_numerics(engine, ls_dtype, linsolve, warmup)
        self.model, self.config, self.engine = model, config, engine
        self.roundoff = model_roundoff(model)  # the network's unit roundoff (the precision floor's scale)
        self.ls_dtype, self.linsolve, self.warmup = ls_dtype, linsolve, warmup
        self.solve_ls = elimination_solve if linsolve == "elimination" else ridge_solve
        self.schedule = schedule
        T = self.T = schedule.num_steps
        self.N = n = int(num_samples)
        self.shape = tuple(int(s) for s in sample_shape)
        self.D = d = math.prod(self.shape)
        self.method = config.method
        self.W = 1 if self.method == "sequential" else min(config.window or T, T)
        self.order = config.order or T
        self.max_iters = config.max_iters or T
        self.m = config.history if "history" in METHOD_RECORDS[self.method].options else 1
        if buckets is None:
            bs = default_buckets(self.W)
        else:
            bs = tuple(int(b) for b in buckets)
            bad = [b for b in bs if not 1 <= b <= self.W]
            if bad:
                raise ValueError(f"buckets must lie in [1, W={self.W}], got {bad}; W is added automatically")
        self.buckets = tuple(sorted(set(bs) | {self.W}))
        self._tables(schedule.to(self.device))
        self._allocate(n, d)
        # per-bucket model inputs and outputs (persistent, so graphs can read and write them)
        self.in_x: dict[int, torch.Tensor] = {}
        self.in_tau: dict[int, torch.Tensor] = {}
        self.in_s: dict[int, torch.Tensor] = {}
        self.eps_buf: dict[int, torch.Tensor] = {}
        self.pos: dict[int, torch.Tensor] = {}
        self._graphs: dict[int, list[Any]] = {}
        self._pool = None
        self.capture_s = 0.0  # seconds spent warming up and capturing graphs (not part of any iteration's time)

    def _tables(self, sched: Schedule) -> None:
        """The step rule, the method's update and per-step tables, each with a scratch entry at index T (what
        padding positions read)."""
        self.rule = step_rule(sched)
        self.tau_p = torch.cat([sched.timesteps, sched.timesteps[-1:]])
        if self.method == "picard":
            self.inv_var_p = inverse_next_variance(sched)
        elif self.method != "sequential":
            self.stop = RULES[self.config.stop]
            self.update = registered(METHOD_RECORDS[self.method].update)(self.config)  # the reference's rule
            self.thr_p = torch.cat([self.stop.thresholds(self.config, sched), sched.sigma.new_zeros(1)])

    def _allocate(self, n: int, d: int) -> None:
        """The solver state, its history and the device-side log, each with the scratch slots padding uses."""
        T, dev, f64 = self.T, self.device, torch.float64
        # state, with scratch slots: state index T+1, step index T
        self.xs = torch.zeros(n, T + 2, d, dtype=f64, device=dev)
        self.xi_p = torch.zeros(n, T + 1, d, dtype=f64, device=dev)
        self.frozen = torch.zeros(n, dtype=torch.long, device=dev)
        self.entered = torch.zeros_like(self.frozen)
        self.iterations = torch.zeros_like(self.frozen)
        self.nfe = torch.zeros_like(self.frozen)
        self.spent = torch.zeros(n, dtype=f64, device=dev)
        self.rows = torch.arange(n, device=dev)[:, None]
        self.out_p = torch.zeros(n, T + 2, d, dtype=f64, device=dev) if self.rule.reads == 2 else None
        self.accel = self.m > 1
        if self.accel:
            self.hist_x = torch.zeros(n, T + 1, self.m, d, dtype=f64, device=dev)
            self.hist_f = torch.zeros_like(self.hist_x)
            self.hist_len = torch.zeros(n, T + 1, dtype=torch.long, device=dev)
        self._allocate_log(n)

    # ------------------------------------------------------------------------------------------------ buffers
    def _bucket(self, width: int) -> int:
        return next(b for b in self.buckets if b >= width)

    def _buffers(self, B: int) -> None:
        if B in self.in_x:
            return
        n, dev = self.N, self.device
        self.in_x[B] = torch.zeros(n * B, *self.shape, dtype=torch.float64, device=dev)
        self.in_tau[B] = torch.zeros(n * B, dtype=self.tau_p.dtype, device=dev)
        self.in_s[B] = self.rows.expand(n, B).reshape(-1).clone()
        self.eps_buf[B] = torch.zeros(n, B, self.D, dtype=torch.float64, device=dev)
        self.pos[B] = torch.arange(B + 1, device=dev)

    def _mutable(self) -> list[torch.Tensor]:
        out = [self.xs, self.frozen, self.entered, self.iterations, self.nfe, self.spent, self.it_dev, self.pack]
        if self.accel:
            out += [self.hist_x, self.hist_f, self.hist_len]
        if self.out_p is not None:
            out.append(self.out_p)
        if self.method != "sequential":
            out += [self.log_rho, self.log_thr, self.log_conv, self.log_fb, self.log_lo, self.log_hi, self.log_w]
        return out


    # ------------------------------------------------------------------------------------------- the driver
    def _load(self, noise: NoiseBundle, init: torch.Tensor | None) -> SolverState:
        check_inputs(self.schedule, noise, init, self.config)
        if noise.num_samples != self.N or tuple(noise.sample_shape) != self.shape:
            raise ValueError(
                f"this StaticSolver was built for {self.N} samples of shape {self.shape}, got a noise bundle of "
                f"{noise.num_samples} samples of shape {tuple(noise.sample_shape)}; build another solver"
            )
        if noise.x_T.device != self.device and not (noise.x_T.device.type == self.device.type == "cpu"):
            raise ValueError(f"noise is on {noise.x_T.device} but the solver on {self.device}; use noise.to(...)")
        T, n = self.T, self.N
        st = sequential_state(noise) if self.method == "sequential" else new_state(noise, self.config, init)
        self.xs[:, : T + 1].copy_(st.x)
        self.xs[:, T + 1].copy_(noise.x_T.reshape(n, -1).to(torch.float64))  # scratch: a finite state
        self.xi_p[:, :T].copy_(noise.xi.reshape(n, T, -1).to(torch.float64))
        self.frozen.copy_(st.frozen)
        self.entered.copy_(st.entered)
        for v in (self.iterations, self.nfe, self.spent, self.it_dev, self.pack):
            v.zero_()
        for v in (self.hist_x, self.hist_f, self.hist_len) if self.accel else ():
            v.zero_()
        if self.out_p is not None:
            self.out_p.zero_()
        return st

    def solve(
        self, noise: NoiseBundle, *, init: torch.Tensor | None = None, callback: Callback | None = None
    ) -> SolveResult:
        """Solve for one noise bundle (same number of samples and shape as the solver was built for)."""
        self._load(noise, init)
        self.seeds = noise.seeds
        n, W = self.N, self.W
        sequential = self.method == "sequential"
        # the host's view of the frozen boundaries, as Python ints: between an iteration's copy arriving and the next
        # launch the GPU waits for the host, so that work stays in plain Python (a torch op on a CPU tensor costs
        # microseconds each)
        f_host = self.frozen.tolist()
        it, walls, models, comms, rows = 0, [], [], [], []
        if sequential:
            self._ready(1)
        t_solve = time.perf_counter()
        while max(f_host) > 0 and it < self.max_iters:
            width = [min(f, W) for f in f_host]
            B = self._bucket(max(width))
            self._ready(B)
            t0 = time.perf_counter()
            comm, model = self._iterate(B)
            if sequential:
                f_host = [f - 1 for f in f_host]  # known in advance: no copy, no wait
                if callback is not None:
                    self._sync()
            else:
                pack = self.pack.tolist()  # the iteration's one device-to-host copy
                f_host = pack[:n]
                self._raise_if_nonfinite(pack, it)
            walls.append(time.perf_counter() - t0)
            models.append(model)
            comms.append(comm)
            rows.append(n if sequential else sum(w for w in width if w > 0))
            it += 1
            if callback is not None:
                self._callback(callback, it - 1)
        self._sync()
        if sequential:
            self._raise_if_nonfinite(self.pack.to("cpu", copy=True), None)
            walls = [(time.perf_counter() - t_solve) / max(it, 1)] * it  # one wait for all T steps: their mean
        timings = [
            {
                "iteration": i,
                "model_s": seconds(models[i]) - comms[i],
                "solver_s": walls[i] - seconds(models[i]),
                "comm_s": comms[i],
                "rows": rows[i],
            }
            for i in range(it)
        ]
        return make_result(self._final_state(it, self._log_rows(it), timings), self.schedule, noise, self.config)

    def _ready(self, B: int) -> None:
        self._buffers(B)
        if self.engine != "static" and B not in self._graphs:
            self._capture(B)

    def prepare(self, noise: NoiseBundle, init: torch.Tensor | None = None) -> float:
        """Capture every bucket's graphs now (graphed engines), so that no later solve pays for a capture; returns the
        seconds spent. The warm-up iterations run on `noise`'s initial state, which `solve` reloads anyway."""
        self._load(noise, init)
        self.seeds = noise.seeds
        t0 = self.capture_s
        for B in self.buckets:
            self._ready(B)
        return self.capture_s - t0

    # ---------------------------------------------------------------------------------------------- results
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def solve_static(
    model: Denoiser,
    schedule: Schedule,
    noise: NoiseBundle,
    config: SolverConfig,
    *,
    engine: str = "static",
    init: torch.Tensor | None = None,
    callback: Callback | None = None,
    resume: SolverState | None = None,
    **options: Any,
) -> SolveResult:
    """One solve on the static path (a fresh `StaticSolver`; keep one for repeated solves to reuse its graphs).
    `options`: buckets, ls_dtype, linsolve, warmup (see `StaticSolver`)."""
    if resume is not None:
        raise ValueError(
            f"resume is not supported by engine={engine!r}: resume a checkpointed solve with the eager engine "
            "(engine='eager'), which continues it bit for bit"
        )
    solver = StaticSolver(
        model,
        schedule,
        config,
        num_samples=noise.num_samples,
        sample_shape=noise.sample_shape,
        device=noise.x_T.device,
        engine=engine,
        **options,
    )
    return solver.solve(noise, init=init, callback=callback)
