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

Engines (`solve(..., engine=...)`, `StaticSolver(..., engine=...)`):

- "static": the static iteration, eager, on any device (the CPU tests compare it with the reference loops);
- "graphed": each bucket's iteration (window gather, model call, residuals, update, stopping test, window move)
  is captured once in CUDA graphs and replayed; the model must be graph-safe (no host synchronisation and no
  host-to-device copy inside its call);
- "graphed-solver": the solver's parts are captured, the model is called eagerly between them, for models that
  synchronise with the host such as `parataa.distributed.DistributedDenoiser` (its inner model can itself be a
  `parataa.cuda_graphs.GraphedDenoiser`).

Same semantics as the reference: the same window, residuals, stopping rule (parataa/stopping.py), safeguard,
updates, history and fallbacks, the same log rows (one per valid window position, in sample-then-step order)
and counts. Reductions over the window (Anderson's shared Gram matrix, Picard's window sum, the "sum" rule's
total) add B - w exact zeros after the valid values. tests/test_static.py checks on the CPU that every solver,
splitting, rule and window gives the reference's iterates bit for bit, and on a GPU that graph replay gives the
static engine's; the static engine against the reference loops on a GPU (other kernels, other summation orders)
is not compared.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..noise import NoiseBundle
from ..schedules import Schedule
from ..stopping import RULES
from ..system import step_rule
from ._history import elimination_solve, ridge_solve
from ._iteration import History, count_iteration, fixed_point_update, picard_iteration, window_iteration
from ._loop import log_record
from ._window import new_state
from .anderson import anderson_update
from .base import (
    Callback,
    Denoiser,
    IterationInfo,
    ModelOutputError,
    SolverConfig,
    SolveResult,
    SolverState,
    check_inputs,
    make_result,
)
from .picard import inverse_next_variance
from .sequential import sequential_state
from .taa import taa_update

__all__ = ["ENGINES", "GraphCaptureError", "StaticSolver", "default_buckets", "solve_static"]

ENGINES = ("eager", "static", "graphed", "graphed-solver")
LINSOLVES = ("lapack", "elimination")


class GraphCaptureError(RuntimeError):
    """A part of the iteration could not be captured in a CUDA graph (usually: the model is not graph-safe)."""


UPDATES = {"fp": lambda config: fixed_point_update, "aa": anderson_update, "taa": taa_update}


class PaddedHistory(History):
    """The static engine's history: [N, T+1, m, D], padding positions read and write the scratch row T."""

    def write(self, hx: torch.Tensor, hf: torch.Tensor, length: torch.Tensor, valid: torch.Tensor) -> None:
        r, t = self.rows, self.t
        self.hist_x[r, t], self.hist_f[r, t], self.hist_len[r, t] = hx, hf, length

    def reset(self, fallback: torch.Tensor) -> None:
        r, t = self.rows, self.t
        self.hist_len[r, t] = torch.where(fallback, torch.ones_like(self.hist_len[r, t]), self.hist_len[r, t])


def default_buckets(window: int) -> tuple[int, ...]:
    """Window-size buckets: the powers of two below `window`, and `window` itself."""
    out, b = [], 1
    while b < window:
        out.append(b)
        b *= 2
    return (*out, window)


def _check_engine(model: Denoiser, engine: str, device: torch.device) -> torch.device:
    """The device the engine runs on (cuda:<current> for a bare "cuda"), after checking that it can."""
    if engine not in ENGINES[1:]:
        raise ValueError(f"engine must be one of {ENGINES[1:]} for StaticSolver, got {engine!r}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if engine != "static":
        if device.type != "cuda":
            raise ValueError(
                f"engine={engine!r} captures CUDA graphs and needs a CUDA device, but the noise bundle is on "
                f"{device}; move the noise (noise.to('cuda')) and the model to a GPU, or use engine='static'"
            )
        if engine == "graphed" and getattr(model, "graph_safe", True) is False:
            raise GraphCaptureError(
                f"the model {type(model).__name__} declares graph_safe = False (it synchronises with the host "
                "inside its call), so it cannot be captured with the iteration; use engine='graphed-solver' "
                "(the model is called eagerly between captured solver graphs) or engine='static'"
            )
    return device


def _check_numerics(engine: str, ls_dtype: torch.dtype, linsolve: str | None, warmup: int) -> str:
    """The least-squares solver to use (lapack for the static engine, elimination when graphed), checked."""
    if ls_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"ls_dtype must be torch.float64 (the reference) or torch.float32, got {ls_dtype!r}")
    linsolve = linsolve or ("lapack" if engine == "static" else "elimination")
    if linsolve not in LINSOLVES:
        raise ValueError(f"linsolve must be one of {LINSOLVES}, got {linsolve!r}")
    if not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"warmup must be a positive integer (eager runs before a capture), got {warmup!r}")
    return linsolve


class StaticSolver:
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
        self.device = _check_engine(model, engine, torch.device(device))
        linsolve = _check_numerics(engine, ls_dtype, linsolve, warmup)
        self.model, self.config, self.engine = model, config, engine
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
        self.m = config.history if self.method in ("aa", "taa") else 1
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
            self.stop, self.update = RULES[self.config.stop], UPDATES[self.method](self.config)
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
        self.accel = self.method in ("aa", "taa") and self.m > 1
        if self.accel:
            self.hist_x = torch.zeros(n, T + 1, self.m, d, dtype=f64, device=dev)
            self.hist_f = torch.zeros_like(self.hist_x)
            self.hist_len = torch.zeros(n, T + 1, dtype=torch.long, device=dev)
        # device-side log, one slot per iteration; pack = (frozen [N], non-finite flag, its sample, its step)
        cap = T if self.method == "sequential" else min(self.max_iters, T)
        self.cap = cap
        self.it_dev = torch.zeros((), dtype=torch.long, device=dev)
        if self.method != "sequential":
            self.log_rho = torch.zeros(cap, n, self.W, dtype=f64, device=dev)
            self.log_thr = torch.zeros_like(self.log_rho)
            self.log_conv = torch.zeros(cap, n, self.W, dtype=torch.bool, device=dev)
            self.log_fb = torch.zeros_like(self.log_conv)
            self.log_lo = torch.zeros(cap, n, dtype=torch.long, device=dev)
            self.log_hi = torch.zeros_like(self.log_lo)
            self.log_w = torch.zeros_like(self.log_lo)
        self.pack = torch.zeros(n + 3, dtype=torch.long, device=dev)

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
        if self.method != "sequential":
            out += [self.log_rho, self.log_thr, self.log_conv, self.log_fb, self.log_lo, self.log_hi, self.log_w]
        return out

    def _window(self, B: int):
        """Static window of every sample: lo, width, position j, valid, step t (scratch T), write index (scratch
        T+1), state index of the extended window (scratch T+1 above the frozen state)."""
        T, j = self.T, self.pos[B]
        lo = torch.clamp(self.frozen - self.W, min=0)
        width = self.frozen - lo
        valid = j[None, :B] < width[:, None]
        t = torch.where(valid, lo[:, None] + j[None, :B], torch.full_like(valid, T, dtype=torch.long))
        ts = torch.where(valid, t, torch.full_like(t, T + 1))
        t_up = torch.where(j[None, :] <= width[:, None], lo[:, None] + j[None, :], torch.full_like(lo[:, None], T + 1))
        return lo, width, valid, t, ts, t_up

    # ------------------------------------------------------------------------------------ iteration segments
    def _pre(self, B: int) -> None:
        """Copy initialisation of states entering the window, then the model inputs x_{t+1}, tau_t, sample."""
        n = self.N
        if self.method == "sequential":
            t = self.frozen - 1
            self.in_x[B].view(n, self.D).copy_(self.xs[self.rows[:, 0], t + 1])
            self.in_tau[B].copy_(self.tau_p[t])
            return
        lo, width, valid, t, ts, t_up = self._window(B)
        if self.config.init == "copy":  # a state entering the window starts as a copy of the state above it
            need = valid & (t < self.entered[:, None])
            src = self.xs[self.rows[:, 0], self.entered][:, None]
            self.xs[self.rows, ts] = torch.where(need[..., None], src, self.xs[self.rows, ts])
            self.entered.copy_(torch.minimum(self.entered, lo))
        self.in_x[B].view(n, B, self.D).copy_(self.xs[self.rows, t_up[:, 1:]])
        self.in_tau[B].view(n, B).copy_(self.tau_p[t])

    def _model(self, B: int) -> None:
        out = self.model(self.in_x[B], self.in_tau[B], self.in_s[B])
        if tuple(out.shape) != (self.N * B, *self.shape):
            raise ValueError(
                f"model returned shape {tuple(out.shape)} for {self.N * B} states of shape {self.shape}; a Denoiser "
                "must return one eps per input state (guidance applied, learned-sigma channels dropped)"
            )
        self.eps_buf[B].view(self.N * B, self.D).copy_(out.reshape(self.N * B, self.D))

    def _flag_nonfinite(self, valid: torch.Tensor, t: torch.Tensor, B: int) -> None:
        bad = valid & ~torch.isfinite(self.eps_buf[B]).all(dim=-1)
        first = torch.argmax(bad.reshape(-1).to(torch.uint8))
        new = bad.any() & (self.pack[self.N] == 0)  # keep the first one (sequential checks only at the end)
        self.pack[self.N + 1] = torch.where(new, first // B, self.pack[self.N + 1])
        self.pack[self.N + 2] = torch.where(new, t.reshape(-1).index_select(0, first.view(1))[0], self.pack[self.N + 2])
        self.pack[self.N] = torch.where(new, torch.ones_like(self.pack[self.N]), self.pack[self.N])

    def _post(self, B: int) -> None:
        if self.method == "sequential":
            self._post_sequential(B)
        elif self.method == "picard":
            self._post_picard(B)
        else:
            self._post_window(B)
        self.it_dev += 1
        self.pack[: self.N].copy_(self.frozen)

    def _post_sequential(self, B: int) -> None:
        n, r = self.N, self.rows[:, 0]
        t = self.frozen - 1
        eps = self.eps_buf[B].view(n, self.D)
        self._flag_nonfinite(torch.ones(n, 1, dtype=torch.bool, device=self.device), t[:, None], B)
        self.xs[r, t] = self.rule.step(t, self.xs[r, t + 1], (eps,), self.xi_p[r, t])
        self.frozen -= 1
        count_iteration(self.iterations, self.nfe, torch.ones_like(t))

    def _log(self, B: int, rho, thr, conv, fb, lo, hi, width) -> None:
        # a solve makes at most `cap` iterations; the warm-up runs before a capture (on a copy of the state, restored
        # afterwards) can count past it, and write into the last slot instead
        k = torch.clamp(self.it_dev, max=self.cap - 1).view(1)
        self.log_rho[:, :, :B].index_copy_(0, k, rho[None])
        self.log_thr[:, :, :B].index_copy_(0, k, thr[None])
        self.log_conv[:, :, :B].index_copy_(0, k, conv[None])
        self.log_fb[:, :, :B].index_copy_(0, k, fb[None])
        self.log_lo.index_copy_(0, k, lo[None])
        self.log_hi.index_copy_(0, k, hi[None])
        self.log_w.index_copy_(0, k, width[None])

    def _eps(self, B: int):
        """The window and the model's eps on it (zero on padding), the first non-finite eps flagged."""
        lo, width, valid, t, ts, t_up = self._window(B)
        self._flag_nonfinite(valid, t, B)
        eps = torch.where(valid[..., None], self.eps_buf[B], torch.zeros_like(self.eps_buf[B]))
        return (lo, width, t, valid), ts, self.xs[self.rows, t_up], eps, self.xi_p[self.rows, t]

    def _post_window(self, B: int) -> None:
        """run_window_solver's steps 2-5 on the padded window (_iteration.window_iteration)."""
        rows = self.rows
        win, ts, x_ext, eps, xi = self._eps(B)
        lo, width, t, _ = win
        thr = self.thr_p[t]
        history = PaddedHistory(self.hist_x, self.hist_f, self.hist_len, rows, t) if self.accel else None
        out = window_iteration(
            self.config, self.stop, self.rule, self.order, self.T, win, x_ext, eps, xi, thr, self.spent,
            self.update, history, solve=self.solve_ls, ls_dtype=self.ls_dtype,
        )  # fmt: skip
        self.xs[rows, ts] = out.x_new
        hi = self.frozen.clone()
        self.spent.copy_(out.spent)
        self.frozen.copy_(out.frozen)
        count_iteration(self.iterations, self.nfe, width)
        self._log(B, out.rho, thr, out.accepted, out.fallback, lo, hi, width)

    def _post_picard(self, B: int) -> None:
        """picard's steps 2-5 on the padded window (_iteration.picard_iteration)."""
        rows = self.rows
        win, ts, x_ext, eps, xi = self._eps(B)
        lo, width, t, _ = win
        x_f = self.xs[rows[:, 0], self.frozen][:, None]
        x_new, rho, bad, thr, frozen = picard_iteration(
            self.rule, win, x_ext, eps, xi, (self.frozen, x_f), self.inv_var_p[t], self.config.picard_tol, self.W
        )
        self.xs[rows, ts] = x_new
        hi = self.frozen.clone()
        self.frozen.copy_(frozen)
        count_iteration(self.iterations, self.nfe, width)
        self._log(B, rho, thr, ~bad, torch.zeros_like(bad), lo, hi, width)

    # ------------------------------------------------------------------------------------------- the driver
    def _capture(self, B: int) -> None:
        t0 = time.perf_counter()
        dev = self.device
        snapshot = [v.clone() for v in self._mutable()]
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(self.warmup):
                self._pre(B)
                self._model(B)
                self._post(B)
        torch.cuda.current_stream(dev).wait_stream(side)
        for v, s in zip(self._mutable(), snapshot, strict=True):
            v.copy_(s)
        del snapshot
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graphs: list[Any] = []
        for name, fn in (("pre", self._pre), ("model", self._model), ("post", self._post)):
            if name == "model" and self.engine == "graphed-solver":
                graphs.append(None)
                continue
            g = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(g, pool=self._pool), torch.no_grad():
                    fn(B)
            except Exception as err:
                what = (
                    f"the model {type(self.model).__name__} is not graph-safe: capturing its call failed. A graph-safe "
                    "Denoiser neither synchronises with the host nor copies host tensors to the device inside its "
                    "call (keep its lookup tables on the GPU); use engine='graphed-solver' (the model is called "
                    "eagerly) or engine='static'"
                    if name == "model"
                    else f"capturing the solver's {name!r} segment failed"
                )
                raise GraphCaptureError(
                    f"{what} (window bucket {B}; cause: {type(err).__name__}: {err}). A failed capture can leave "
                    "this process's CUDA context unusable: run the other engine in a new process"
                ) from err
            graphs.append(g)
        self._graphs[B] = graphs
        torch.cuda.synchronize(dev)
        self.capture_s += time.perf_counter() - t0

    def _iterate(self, B: int) -> tuple[float, Any]:
        """One iteration at bucket B: (communication seconds the model reported, the model call's time: a pair of
        CUDA events read at the end, or seconds on the CPU)."""
        comm0 = float(getattr(self.model, "comm_seconds", 0.0))
        graphs = self._graphs.get(B)
        cuda = self.device.type == "cuda"
        with torch.no_grad():
            graphs[0].replay() if graphs else self._pre(B)
            if cuda:
                model = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                model[0].record()
            else:
                t0 = time.perf_counter()
            if graphs and graphs[1] is not None:
                graphs[1].replay()
            else:
                self._model(B)
            if cuda:
                model[1].record()
            else:
                model = time.perf_counter() - t0
            graphs[2].replay() if graphs else self._post(B)
        return float(getattr(self.model, "comm_seconds", 0.0)) - comm0, model

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
        if self.accel:
            for v in (self.hist_x, self.hist_f, self.hist_len):
                v.zero_()
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
                "model_s": _seconds(models[i]) - comms[i],
                "solver_s": walls[i] - _seconds(models[i]),
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

    def replay(self, noise: NoiseBundle, widths: Sequence[int]) -> list[dict[str, float]]:
        """Benchmarks only: run one iteration per entry of `widths` with every sample's window forced to that
        width (the frozen boundary set to it), whatever the iterates, and time each: the window sequence of another
        solve replayed on this model (the iterates solve nothing). Rows: width, bucket, wall_s, model_s, comm_s."""
        if self.method == "sequential":
            raise ValueError("replay applies to the parallel solvers; sequential has no window to replay")
        if self.config.init == "trajectory":
            raise ValueError("replay needs a solver whose init is 'gaussian' or 'copy'")
        self._load(noise, None)
        self.seeds = noise.seeds
        out = []
        for w in widths:
            if not 1 <= int(w) <= self.W:
                raise ValueError(f"replay widths must lie in [1, W={self.W}], got {w}")
            B = self._bucket(int(w))
            self._ready(B)
            self.frozen.fill_(int(w))
            self.it_dev.zero_()
            self._sync()
            t0 = time.perf_counter()
            comm, model = self._iterate(B)
            self.pack.to("cpu", copy=True)
            wall = time.perf_counter() - t0
            out.append(
                {"width": int(w), "bucket": B, "wall_s": wall, "model_s": _seconds(model) - comm, "comm_s": comm}
            )
        return out

    # ---------------------------------------------------------------------------------------------- results
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _raise_if_nonfinite(self, pack: torch.Tensor | list[int], iteration: int | None) -> None:
        n = self.N
        if int(pack[n]):
            s, t = int(pack[n + 1]), int(pack[n + 2])
            it = iteration if iteration is not None else self.T - 1 - t
            raise ModelOutputError(s, self.seeds[s], t, it, self.method)

    def _log_rows(self, it: int) -> list[dict[str, torch.Tensor]]:
        """The convergence log of `it` iterations, copied to the host once, as the reference writes it."""
        if self.method == "sequential":
            samples, zero, done = (
                torch.arange(self.N),
                torch.zeros(self.N, dtype=torch.float64),
                torch.ones(self.N, dtype=torch.bool),
            )
            steps = [torch.full((self.N,), self.T - 1 - i, dtype=torch.long) for i in range(it)]
            return [log_record(i, samples, t, t, t + 1, zero, zero, done, ~done) for i, t in enumerate(steps)]
        rho, thr, conv, fb, lo, hi, w = (
            v[:it].to("cpu", copy=True)
            for v in (self.log_rho, self.log_thr, self.log_conv, self.log_fb, self.log_lo, self.log_hi, self.log_w)
        )
        j = torch.arange(self.W)
        out = []
        for i in range(it):
            vi, vj = torch.nonzero(j[None, :] < w[i][:, None], as_tuple=True)
            rows = (rho[i][vi, vj], thr[i][vi, vj], conv[i][vi, vj], fb[i][vi, vj])
            out.append(log_record(i, vi, lo[i][vi] + vj, lo[i][vi], hi[i][vi], *rows))
        return out

    def _final_state(self, it: int, log: list, timings: list) -> SolverState:
        T = self.T
        st = SolverState(
            x=self.xs[:, : T + 1].contiguous(),
            frozen=self.frozen.clone(),
            entered=self.entered.clone(),
            iteration=it,
            iterations=self.iterations.clone(),
            nfe=self.nfe.clone(),
            spent=self.spent.clone() if self.method not in ("sequential", "picard") else None,
            log=log,
            timings=timings,
        )
        if self.accel:
            st.hist_x, st.hist_f = self.hist_x[:, :T].contiguous(), self.hist_f[:, :T].contiguous()
            st.hist_len = self.hist_len[:, :T].contiguous()
        return st

    def _callback(self, callback: Callback, iteration: int) -> None:
        T, n = self.T, self.N
        view = SolverState(
            x=self.xs[:, : T + 1],
            frozen=self.frozen,
            entered=self.entered,
            iteration=iteration + 1,
            iterations=self.iterations,
            nfe=self.nfe,
            spent=self.spent,
        )
        if self.method == "sequential":
            lo, hi = self.frozen, self.frozen + 1
            rho = torch.zeros(n, 1, dtype=torch.float64, device=self.device)
        else:
            lo, hi, w = self.log_lo[iteration], self.log_hi[iteration], self.log_w[iteration]
            j = torch.arange(self.W, device=self.device)
            rho = torch.where(j[None, :] < w[:, None], self.log_rho[iteration], math.nan)
        callback(
            IterationInfo(
                iteration=iteration,
                trajectory=self.xs[:, : T + 1].view(n, T + 1, *self.shape),
                frozen=self.frozen,
                window_lo=lo,
                window_hi=hi,
                rho=rho,
                state=view,
            )
        )


def _seconds(model: Any) -> float:
    """A model-call time from `_iterate`: seconds, or a pair of CUDA events (read after the final sync)."""
    return model[0].elapsed_time(model[1]) / 1e3 if isinstance(model, tuple) else float(model)


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
