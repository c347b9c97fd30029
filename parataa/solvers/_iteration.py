"""One iteration of every parallel solver, on padded windows: the arithmetic both engines share.

Both engines (the reference loops in `_window.py` and `picard.py`, and the static / CUDA-graph engine in
`static.py`) call these functions on the same layout and differ only in how they index, log and synchronise:

- a padded window [N, B, D] of every sample's unknowns, position j holding step t = lo + j, valid while
  j < width; `x_ext` [N, B+1, D] adds the frozen state x_f at position width; `eps` [N, B, D] is the model
  output at x_{t+1} as the steps read it (`StepRule.output`), zero on padding; `xi` [N, B, D] the noise of each
  position's step;
- the engine supplies the step indices t of the padding (the reference clamps them into [0, T-1], the static
  engine points them at the step rule's scratch entry T): whatever padding holds is masked here, so a valid
  position's result depends only on valid positions;
- AA and TAA keep their iterates in a `History` whose `write` / `reset` are the engine's indexing.

Nothing here synchronises with the host, so the static engine can capture it in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..solver_config import SolverConfig
from ..stopping import ROUNDING_GAIN, StopRule
from ..system import StepRule, rms, splitting_rhs, step_rhs
from ._history import ridge_solve

__all__ = [
    "History",
    "UpdateInput",
    "UpdateRule",
    "WindowStep",
    "anderson_rule",
    "anderson_step",
    "count_iteration",
    "fixed_point_rule",
    "fixed_point_update",
    "floor_prefix",
    "picard_iteration",
    "push_history",
    "step_outputs",
    "window_iteration",
    "window_move",
]


class History:
    """Where AA and TAA keep each step's last m iterates (X, F), newest first, per absolute step (`_history.py`):
    hist_x, hist_f [N, T', m, D] and hist_len [N, T'], read at (rows [N, 1], t [N, B]). `gather` reads the window's
    rows; an engine's `write` stores the pushed rows at the valid positions and its `reset` cuts the history of the
    positions whose small solve failed back to the current pair."""

    def __init__(self, hist_x: torch.Tensor, hist_f: torch.Tensor, hist_len: torch.Tensor, rows, t) -> None:
        self.hist_x, self.hist_f, self.hist_len, self.rows, self.t = hist_x, hist_f, hist_len, rows, t

    def gather(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r, t = self.rows, self.t
        return self.hist_x[r, t], self.hist_f[r, t], self.hist_len[r, t]

    def write(self, hx: torch.Tensor, hf: torch.Tensor, length: torch.Tensor, valid: torch.Tensor) -> None:
        raise NotImplementedError

    def reset(self, fallback: torch.Tensor) -> None:
        raise NotImplementedError


@dataclass
class UpdateInput:
    x: torch.Tensor  # [N, B, D] current unknowns
    resid: torch.Tensor  # [N, B, D] order-k residual F
    valid: torch.Tensor  # [N, B] window positions in use
    below: torch.Tensor  # [N, B] positions that take the method's update
    history: History | None = None  # AA / TAA only
    solve: Callable[..., tuple[torch.Tensor, torch.Tensor]] = ridge_solve  # the small ridge solver
    ls_dtype: torch.dtype = torch.float64  # dtype of the least squares


# An update rule returns the new values of the positions below u* and a per-position fallback flag.
UpdateRule = Callable[[UpdateInput], tuple[torch.Tensor, torch.Tensor]]


def fixed_point_update(inp: UpdateInput) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-point iteration of order k: "FP" (k = 1) and "FP+" (k >= window), docs/METHOD.md sections 2-3 and 8.
    Every unknown of the window moves to the right-hand side of its order-k equation at once, x_t <- x_t + F^(k)_t(x);
    after i iterations the top i states of the window are exact, so a solve ends within T iterations."""
    return inp.x + inp.resid, torch.zeros_like(inp.valid)


def fixed_point_rule(config: SolverConfig) -> UpdateRule:
    """FP's update rule (the registry's factory signature: a rule from a config)."""
    return fixed_point_update


def anderson_rule(config: SolverConfig, coefficients: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> UpdateRule:
    """The update rule of an Anderson-type method (AA, TAA): push the history, fit gamma with `coefficients((dX, dF),
    F, valid, ridge, solve)` (in the least-squares dtype) and take the Anderson step; plain FP when m = 1."""
    m = config.history
    if m == 1:
        return fixed_point_update

    def update(inp: UpdateInput) -> tuple[torch.Tensor, torch.Tensor]:
        dx, df, count = push_history(inp, m)
        lsd = inp.ls_dtype
        gamma, ok = coefficients((dx, df.to(lsd)), inp.resid.to(lsd), inp.valid, config.ridge, inp.solve)
        return anderson_step(inp, dx, df, count, gamma, ok)

    return update


def push_history(inp: UpdateInput, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Store the current (X, F) of every window step; return dX, dF [N, B, m-1, D] and the iterate counts [N, B].

    Column i of a step (i = 0 .. m-2) is the difference of consecutive stored iterates and is usable while the
    step has at least i + 2 of them."""
    assert inp.history is not None
    old_x, old_f, old_len = inp.history.gather()
    hx = torch.cat([inp.x[:, :, None], old_x[:, :, :-1]], dim=2)
    hf = torch.cat([inp.resid[:, :, None], old_f[:, :, :-1]], dim=2)
    length = torch.clamp(old_len + 1, max=m)
    inp.history.write(hx, hf, length, inp.valid)
    count = torch.where(inp.valid, length, torch.zeros_like(length))
    cols = torch.arange(m - 1, device=count.device)
    col_ok = cols[None, None, :] + 2 <= count[..., None]  # [N, B, m-1]
    dx = (hx[:, :, :-1] - hx[:, :, 1:]) * col_ok[..., None]
    df = (hf[:, :, :-1] - hf[:, :, 1:]) * col_ok[..., None]
    return dx, df, count


def anderson_step(
    inp: UpdateInput,
    dx: torch.Tensor,
    df: torch.Tensor,
    count: torch.Tensor,
    gamma: torch.Tensor,
    ok: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x + F - (dX + dF) gamma where accelerated; plain FP where a step has < 2 iterates or its solve failed.

    A failed solve resets that step's history to the current iterate alone.
    """
    gamma = gamma.to(torch.float64)
    corr = torch.einsum("nwid,nwi->nwd", dx + df, gamma)
    accel = count >= 2
    use = accel & ok
    fallback = inp.below & accel & ~ok
    new = inp.x + inp.resid - torch.where(use[..., None], corr, torch.zeros_like(corr))
    assert inp.history is not None
    inp.history.reset(fallback)
    return new, fallback


def step_outputs(step: StepRule, eps: torch.Tensor, width: torch.Tensor, above: torch.Tensor | None):
    """The model outputs each window position's step reads (`StepRule.reads`): eps [N, B, D] at x_{t+1} and, for a
    rule that reads two, the output at x_{t+2}: eps one position up, and at the window's top the output at the
    frozen state above it (`above` [N, D], zeros above x_T)."""
    if step.reads == 1:
        return (eps,)
    assert above is not None
    j = torch.arange(eps.shape[1], device=eps.device)
    up = torch.cat([eps[:, 1:], torch.zeros_like(eps[:, :1])], dim=1)
    return (eps, torch.where((j[None, :] == width[:, None] - 1)[..., None], above[:, None], up))


@dataclass
class WindowStep:
    """What one window iteration decided (all [N, B] but frozen and spent, [N])."""

    x_new: torch.Tensor  # [N, B, D] the window's new values (valid positions)
    rho: torch.Tensor  # first-order residual RMS of the iterate before the update
    accepted: torch.Tensor
    fallback: torch.Tensor
    frozen: torch.Tensor  # [N] the new frozen boundary
    spent: torch.Tensor  # [N] summed rho of the states accepted so far


def window_iteration(
    config: SolverConfig,
    stop: StopRule,
    step: StepRule,
    order: int,
    num_steps: int,
    win: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    x_ext: torch.Tensor,
    eps: torch.Tensor,
    xi: torch.Tensor,
    thr: torch.Tensor,
    spent: torch.Tensor,
    update: UpdateRule,
    history: History | None,
    above: torch.Tensor | None = None,
    roundoff: float = 0.0,
    **least_squares: Any,
) -> WindowStep:
    """Steps 2-5 of the window solvers (`_window.py`'s docstring). win = (lo, width, t, valid); `update` is the
    method's rule, on this engine's `history` (AA/TAA) with its `least_squares` (`UpdateInput`'s solve,
    ls_dtype). above: the output at each window's frozen state above it, for a step rule that reads two."""
    lo, width, t, valid = win
    x_cur, x_up = x_ext[:, :-1], x_ext[:, 1:]
    # 2. first-order residuals R_t (the stopping rule's) and the splitting's order-k residuals F_t
    a_w = step.a(t)
    outs = step_outputs(step, eps, width, above)
    g = step.g(t, outs, xi)
    g = torch.where(valid[..., None], g, torch.zeros_like(g))
    # the precision floor, only where the stopping rule or floor_freeze reads it (an iteration's work otherwise)
    noise = rounding_noise(step, t, outs, valid, roundoff) if stop.reads_floor or config.floor_freeze > 0 else None
    exact = step_rhs(a_w[..., None], x_up, g)  # the sequential step from the current state above
    rho = rms(exact - x_cur)
    rhs = exact if order == 1 else splitting_rhs(config.splitting, a_w, g, x_ext, width, order)
    # the change of the window's bottom state made by the previous iteration (its newest stored iterate), for a rule
    # that asks a change to persist; +inf where there is none (no history, or none stored yet)
    prev_change = None
    if history is not None and stop.reads_floor:
        hx0 = history.hist_x[history.rows[:, 0], history.t[:, 0], 0]  # [N, D]
        stored = history.hist_len[history.rows[:, 0], history.t[:, 0]] >= 1
        prev_change = torch.where(stored, rms(x_cur[:, 0] - hx0), torch.full_like(rho[:, 0], float("inf")))
    # 3. u* = the highest step the stopping rule does not accept
    u_star, accepted = stop.test(config, rho, valid, lo, thr, spent, num_steps)
    below = stop.updated(valid, u_star, accepted)
    # 4. accepted steps keep their values ("step"); x_{u*} takes the exact step; steps below u* the update
    new_vals, fallback = update(UpdateInput(x_cur, rhs - x_cur, valid, below, history, **least_squares))
    j = torch.arange(x_cur.shape[1], device=t.device)
    x_new = torch.where(below[..., None], new_vals, x_cur)
    if config.floor_freeze > 0 and noise is not None:  # the prefix at the precision floor keeps its values
        x_new = torch.where(floor_prefix(rho, noise, valid, config.floor_freeze)[..., None], x_cur, x_new)
    x_new = torch.where((valid & (j[None, :] == u_star[:, None]))[..., None], exact, x_new)
    rsum = spent + torch.where(valid, rho, torch.zeros_like(rho)).sum(dim=1)
    floor = None if noise is None else noise.sum(dim=1)
    u_star, accepted = stop.after_update(config, x_cur, x_new, valid, lo, u_star, accepted, rsum, floor, prev_change)
    # 5. the frozen boundary moves to u* (to the window bottom when every step was accepted)
    spent = spent + torch.where(accepted, rho, torch.zeros_like(rho)).sum(dim=1)
    frozen = torch.where(u_star >= 0, lo + u_star.clamp(min=0), lo)
    return WindowStep(x_new, rho, accepted, fallback, frozen, spent)


def floor_prefix(rho: torch.Tensor, noise: torch.Tensor, valid: torch.Tensor, factor: float) -> torch.Tensor:
    """[N, B] the window's longest prefix from its top whose first-order residuals are all within `factor` times
    their estimated rounding noise (`rounding_noise`): states that the network's precision no longer lets the
    iteration improve. `SolverConfig.floor_freeze` keeps their values, so that they stop moving by rounding and the
    Anderson differences of the states below them see only their own convergence (docs/METHOD.md section 9).
    Where the prefix is the whole window, nothing is kept: every state is at the floor, and the iteration goes on
    as without the option, so that its exact steps still carry the window to the sequential solution."""
    at_floor = (rho <= factor * noise) | ~valid
    prefix = torch.flip(torch.cumprod(torch.flip(at_floor.long(), [1]), dim=1), [1]).bool() & valid
    return prefix & ~(prefix == valid).all(dim=1, keepdim=True)


def model_roundoff(model: Any) -> float:
    """The unit roundoff of a model's precision: its `roundoff` attribute where it declares one, else half the
    machine epsilon of its floating `dtype` (2^-8 for bfloat16, 2^-11 for float16, 2^-24 for float32), else 0."""
    declared = getattr(model, "roundoff", None)
    if declared is not None:
        return float(declared)
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return torch.finfo(dtype).eps / 2
    return 0.0


def rounding_noise(step: StepRule, t: torch.Tensor, outs: tuple[torch.Tensor, ...], valid: torch.Tensor,
                   roundoff: float) -> torch.Tensor | None:
    """[N, B] the estimated rounding noise (RMS) of each valid position's first-order residual, from the model's
    unit roundoff: ROUNDING_GAIN roundoff RMS(drift_t), drift_t the model-output part of step t
    (`StepRule.drift`); None for roundoff 0 (docs/METHOD.md section 9, "The precision floor")."""
    if roundoff <= 0:
        return None
    drift = step.drift(t, outs)
    return torch.where(valid, ROUNDING_GAIN * roundoff * rms(drift), torch.zeros_like(valid, dtype=drift.dtype))


def picard_iteration(
    step: StepRule,
    win: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    x_ext: torch.Tensor,
    eps: torch.Tensor,
    xi: torch.Tensor,
    frozen: tuple[torch.Tensor, torch.Tensor],
    inv_var: torch.Tensor,
    tol: float,
    window: int,
    above: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Picard's steps 2-5 (`picard.py`'s docstring): the window's new values [N, B, D], rho [N, B] (for the log),
    bad [N, B], the logged threshold [N, B] and the new frozen boundary [N]. frozen = (f [N], x_f [N, 1, D]);
    inv_var [N, B]: the inverse next-step variance of each position's state; window: W."""
    _, width, t, valid = win
    x_cur, x_up = x_ext[:, :-1], x_ext[:, 1:]
    # 2. drifts, and the first-order residual for the log (this package's common metric)
    a_w, drift, noise = step.a(t)[..., None], step.drift(t, step_outputs(step, eps, width, above)), step.noise(t, xi)
    rho = rms(step_rhs(a_w, x_up, drift + noise) - x_cur)
    inc = torch.where(valid[..., None], (a_w * x_up + drift) - x_up + noise, torch.zeros_like(x_cur))
    # 3. cumulative sums from the frozen state down the window (top position width-1 down to position j)
    below_sum = torch.cumsum(inc, dim=1) - inc  # sum over positions < j
    x_new = frozen[1] + (inc.sum(dim=1, keepdim=True) - below_sum)
    # 4. error = squared change over the next step's variance
    bad = valid & ~(torch.mean((x_new - x_cur) ** 2, dim=-1) * inv_var <= tol**2)
    # 5. the window slides past the converged states to the first bad one
    move = window_move(bad, width, window)
    f = torch.where(width > 0, torch.clamp(frozen[0] - move, min=0), frozen[0])
    return x_new, rho, bad, tol / torch.sqrt(inv_var), f


def window_move(bad: torch.Tensor, width: torch.Tensor, window: int) -> torch.Tensor:
    """How far Picard's frozen boundary falls: past the converged states from the top to the first bad one
    (included), at most W states."""
    j = torch.arange(bad.shape[1], device=bad.device)
    from_top = width[:, None] - 1 - j[None, :]
    first_bad = torch.where(bad, from_top, torch.full_like(from_top, 10**9)).min(dim=1).values
    first_bad = torch.minimum(first_bad, width)
    return torch.minimum(first_bad + 1, torch.full_like(first_bad, window))


def count_iteration(iterations: torch.Tensor, nfe: torch.Tensor, width: torch.Tensor) -> None:
    """In place: one more iteration for every sample still running, `width` more states evaluated."""
    iterations += (width > 0).long()
    nfe += width
