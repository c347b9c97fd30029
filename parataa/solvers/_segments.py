"""The static engine's iteration segments, a mixin of `static.StaticSolver`: the padded window, the model inputs
before the model call (`_pre`), the call (`_model`) and the iteration after it (`_post`: the sequential step, the
window iteration, Picard's iteration), each run by the shared core (_iteration.py). The graphed engines capture
these three segments (_graphs.py)."""

from __future__ import annotations

import torch

from ._iteration import History, count_iteration, picard_iteration, window_iteration

__all__ = ["PaddedHistory", "Segments"]


class PaddedHistory(History):
    """The static engine's history: [N, T+1, m, D], padding positions read and write the scratch row T."""

    def write(self, hx: torch.Tensor, hf: torch.Tensor, length: torch.Tensor, valid: torch.Tensor) -> None:
        r, t = self.rows, self.t
        self.hist_x[r, t], self.hist_f[r, t], self.hist_len[r, t] = hx, hf, length

    def reset(self, fallback: torch.Tensor) -> None:
        r, t = self.rows, self.t
        self.hist_len[r, t] = torch.where(fallback, torch.ones_like(self.hist_len[r, t]), self.hist_len[r, t])


class Segments:
    """Mixin: needs the StaticSolver attributes N, T, W, D, shape, method, config, model, roundoff, rule, stop, update,
    order, tau_p, thr_p, inv_var_p, xs, xi_p, out_p, frozen, entered, iterations, nfe, spent, rows, accel, hist_*,
    the per-bucket buffers (in_x, in_tau, in_s, eps_buf, pos), solve_ls, ls_dtype and DeviceLog's methods."""

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
        eps = self.rule.output(t, self.xs[r, t + 1], self.eps_buf[B].view(n, self.D))
        self._flag_nonfinite(torch.ones(n, 1, dtype=torch.bool, device=self.device), t[:, None], B)
        outs = (eps,)
        if self.rule.reads == 2:  # as sequential.outputs
            self.out_p[r, t + 1] = eps
            outs = (eps, self.out_p[r, t + 2])
        self.xs[r, t] = self.rule.step(t, self.xs[r, t + 1], outs, self.xi_p[r, t])
        self.frozen -= 1
        count_iteration(self.iterations, self.nfe, torch.ones_like(t))

    def _eps(self, B: int):
        """The window and the model's output on it as the steps read it (`StepRule.output`; zero on padding), the first
        non-finite output flagged."""
        lo, width, valid, t, ts, t_up = self._window(B)
        self._flag_nonfinite(valid, t, B)
        x_ext = self.xs[self.rows, t_up]
        out = self.rule.output(t, x_ext[:, 1:], self.eps_buf[B])
        eps = torch.where(valid[..., None], out, torch.zeros_like(out))
        return (lo, width, t, valid), ts, x_ext, eps, self.xi_p[self.rows, t]

    def _above(self, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor | None:
        """As _window.outputs_above, for a step rule that reads two outputs (padding writes zeros to state T+1)."""
        if self.rule.reads == 1:
            return None
        self.out_p[self.rows, t + 1] = eps
        return self.out_p[self.rows[:, 0], self.frozen + 1]

    def _post_window(self, B: int) -> None:
        """run_window_solver's steps 2-5 on the padded window (_iteration.window_iteration)."""
        rows = self.rows
        win, ts, x_ext, eps, xi = self._eps(B)
        lo, width, t, _ = win
        thr = self.thr_p[t]
        history = PaddedHistory(self.hist_x, self.hist_f, self.hist_len, rows, t) if self.accel else None
        out = window_iteration(
            self.config, self.stop, self.rule, self.order, self.T, win, x_ext, eps, xi, thr, self.spent,
            self.update, history, self._above(t, eps), self.roundoff, solve=self.solve_ls,
            ls_dtype=self.ls_dtype,
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
            self.rule, win, x_ext, eps, xi, (self.frozen, x_f), self.inv_var_p[t], self.config.picard_tol, self.W,
            self._above(t, eps),
        )  # fmt: skip
        self.xs[rows, ts] = x_new
        hi = self.frozen.clone()
        self.frozen.copy_(frozen)
        count_iteration(self.iterations, self.nfe, width)
        self._log(B, rho, thr, ~bad, torch.zeros_like(bad), lo, hi, width)
