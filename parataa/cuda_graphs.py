"""CUDA-graph replay of a Denoiser: removes the launch overhead that dominates small-batch model calls.

Sequential sampling calls the network with a batch of 2 rows (CFG pair) T times; eager PyTorch spends most
of that time launching kernels. A fair sequential baseline replays a captured graph instead. One graph is
captured per input shape; inputs are copied into static buffers before each replay. With `buckets=True` the rows
of a call are padded (repeating the last row) to the next power of two, so the shrinking windows of a parallel
solve share a handful of graphs; padding changes which rows share a batch, so results match eager evaluation
only up to the kernels' batch invariance. The wrapped Denoiser must
be graph-safe: no host synchronisation and no host-to-device copies inside its call (keep its lookup tables
on the GPU).
"""

from __future__ import annotations

import torch

from .solvers.base import Denoiser

__all__ = ["GraphedDenoiser"]


class GraphedDenoiser:
    graph_safe = False  # replays its own graphs; give the static engine's "graphed" mode the inner model instead

    def __init__(self, inner: Denoiser, warmup: int = 3, buckets: bool = False) -> None:
        self.inner = inner
        self.warmup = warmup
        self.buckets = buckets
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...], torch.Tensor]] = {}

    def _capture(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor):
        static = (x.clone(), t.clone(), s.clone())
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(self.warmup):
                self.inner(*static)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            out = self.inner(*static)
        return graph, static, out

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda":
            return self.inner(x, timesteps, samples)
        timesteps = timesteps.to(x.device)
        samples = samples.to(x.device)
        n = x.shape[0]
        if self.buckets:
            size = 1 << (n - 1).bit_length()
            if size != n:
                pad = torch.full((size - n,), n - 1, device=x.device, dtype=torch.long)
                idx = torch.cat([torch.arange(n, device=x.device), pad])
                x, timesteps, samples = x[idx], timesteps[idx], samples[idx]
        key = (tuple(x.shape), x.dtype, timesteps.dtype, samples.dtype, x.device.index)
        if key not in self._graphs:
            self._graphs[key] = self._capture(x, timesteps, samples)
        graph, (sx, st, ss), out = self._graphs[key]
        sx.copy_(x)
        st.copy_(timesteps)
        ss.copy_(samples)
        graph.replay()
        return out[:n].clone()
