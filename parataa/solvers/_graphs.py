"""CUDA-graph capture and replay of the static engine's iteration segments (docs/METHOD.md section 11), a mixin of
`static.StaticSolver`, and the checks of the engine options.

Engines (`solve(..., engine=...)`, `StaticSolver(..., engine=...)`):

- "static": the static iteration, eager, on any device (the CPU tests compare it with the reference loops);
- "graphed": each bucket's iteration (window gather, model call, residuals, update, stopping test, window move)
  is captured once in CUDA graphs and replayed; the model must be graph-safe (no host synchronisation and no
  host-to-device copy inside its call);
- "graphed-solver": the solver's parts are captured, the model is called eagerly between them, for models that
  synchronise with the host such as `parataa.distributed.DistributedDenoiser` (its inner model can itself be a
  `parataa.cuda_graphs.GraphedDenoiser`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from ..noise import NoiseBundle
from .base import Denoiser

__all__ = ["ENGINES", "LINSOLVES", "GraphCaptureError", "GraphedSegments", "check_engine", "check_numerics", "seconds"]

ENGINES = ("eager", "static", "graphed", "graphed-solver")
LINSOLVES = ("lapack", "elimination")


class GraphCaptureError(RuntimeError):
    """A part of the iteration could not be captured in a CUDA graph (usually: the model is not graph-safe)."""


def check_engine(model: Denoiser, engine: str, device: torch.device) -> torch.device:
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


def check_numerics(engine: str, ls_dtype: torch.dtype, linsolve: str | None, warmup: int) -> str:
    """The least-squares solver to use (lapack for the static engine, elimination when graphed), checked."""
    if ls_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"ls_dtype must be torch.float64 (the reference) or torch.float32, got {ls_dtype!r}")
    linsolve = linsolve or ("lapack" if engine == "static" else "elimination")
    if linsolve not in LINSOLVES:
        raise ValueError(f"linsolve must be one of {LINSOLVES}, got {linsolve!r}")
    if not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"warmup must be a positive integer (eager runs before a capture), got {warmup!r}")
    return linsolve


def seconds(model: Any) -> float:
    """A model-call time from `_iterate`: seconds, or a pair of CUDA events (read after the final sync)."""
    return model[0].elapsed_time(model[1]) / 1e3 if isinstance(model, tuple) else float(model)


class GraphedSegments:
    """Mixin: each bucket's segments (`_pre`, `_model`, `_post`) captured once in CUDA graphs and replayed."""

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
            out.append({"width": int(w), "bucket": B, "wall_s": wall, "model_s": seconds(model) - comm, "comm_s": comm})
        return out
