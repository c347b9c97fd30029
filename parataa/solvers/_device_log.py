"""The static engine's device-side log (a mixin of `static.StaticSolver`): log rows accumulated on the device, one
slot per iteration, and copied to the host once at the end; the first non-finite model output flagged on the
device; the final state and the callback's view built from the engine's buffers."""

from __future__ import annotations

import math

import torch

from ._loop import log_record
from .base import Callback, IterationInfo, ModelOutputError, SolverState

__all__ = ["DeviceLog"]


class DeviceLog:
    """Mixin: needs the StaticSolver attributes N, T, W, D, shape, method, max_iters, device, xs, frozen, entered,
    iterations, nfe, spent, m, accel, hist_*, seeds."""

    def _allocate_log(self, n: int) -> None:
        T, dev, f64 = self.T, self.device, torch.float64
        # one slot per iteration; pack = (frozen [N], non-finite flag, its sample, its step)
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

    def _flag_nonfinite(self, valid: torch.Tensor, t: torch.Tensor, B: int) -> None:
        bad = valid & ~torch.isfinite(self.eps_buf[B]).all(dim=-1)
        first = torch.argmax(bad.reshape(-1).to(torch.uint8))
        new = bad.any() & (self.pack[self.N] == 0)  # keep the first one (sequential checks only at the end)
        self.pack[self.N + 1] = torch.where(new, first // B, self.pack[self.N + 1])
        self.pack[self.N + 2] = torch.where(new, t.reshape(-1).index_select(0, first.view(1))[0], self.pack[self.N + 2])
        self.pack[self.N] = torch.where(new, torch.ones_like(self.pack[self.N]), self.pack[self.N])

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
