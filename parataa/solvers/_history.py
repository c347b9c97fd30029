"""Iterate/residual history and the ridge least squares shared by AA and TAA.

History is kept per absolute step t (shape [N, T, m, D], newest first), so it survives the window sliding.
Column i of step t (i = 0 .. m-2) is the difference of consecutive stored iterates,
    dX_t[:, i] = X_t^(newest - i) - X_t^(newest - i - 1),   dF_t likewise,
and is usable while step t has at least i + 2 stored iterates.
"""

from __future__ import annotations

import torch

from ._window import UpdateInput


def push_history(inp: UpdateInput, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Store the current (X, F) of every window step; return dX, dF [N, Wmax, m-1, D] and column masks."""
    st, win = inp.state, inp.window
    n, T = st.x.shape[0], st.x.shape[1] - 1
    d = st.x.shape[2]
    if st.hist_x is None:
        st.hist_x = torch.zeros(n, T, m, d, dtype=torch.float64, device=st.x.device)
        st.hist_f = torch.zeros_like(st.hist_x)
        st.hist_len = torch.zeros(n, T, dtype=torch.long, device=st.x.device)
    assert st.hist_f is not None and st.hist_len is not None
    rows, t, valid = win.rows, win.t, inp.valid
    rr, tt = inp.vi, t[inp.vi, inp.vj]
    hx = torch.cat([inp.x[:, :, None], st.hist_x[rows, t][:, :, :-1]], dim=2)
    hf = torch.cat([inp.resid[:, :, None], st.hist_f[rows, t][:, :, :-1]], dim=2)
    st.hist_x[rr, tt] = hx[inp.vi, inp.vj]
    st.hist_f[rr, tt] = hf[inp.vi, inp.vj]
    st.hist_len[rr, tt] = torch.clamp(st.hist_len[rr, tt] + 1, max=m)
    count = torch.where(valid, st.hist_len[rows, t], torch.zeros_like(t))
    cols = torch.arange(m - 1, device=t.device)
    col_ok = cols[None, None, :] + 2 <= count[..., None]  # [N, Wmax, m-1]
    dx = (hx[:, :, :-1] - hx[:, :, 1:]) * col_ok[..., None]
    df = (hf[:, :, :-1] - hf[:, :, 1:]) * col_ok[..., None]
    return dx, df, count


def ridge_system(gram: torch.Tensor, rhs: torch.Tensor, ridge: float) -> torch.Tensor:
    """gram + ridge I, with a unit diagonal for columns with no data at all (zero row and column, zero rhs) when
    ridge = 0, so that they solve to 0 instead of making the system singular."""
    k = gram.shape[-1]
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    empty = (gram.abs().sum(dim=-1) == 0) & (rhs == 0)
    return gram + ridge * eye + torch.diag_embed(empty.to(gram.dtype)) * (ridge == 0)


def ridge_solve(gram: torch.Tensor, rhs: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve (gram + ridge I) gamma = rhs in batch (`ridge_system`); return gamma and a per-system ok flag.

    A genuinely singular or non-finite system is reported, never patched.
    """
    system = ridge_system(gram, rhs, ridge)
    gamma, info = torch.linalg.solve_ex(system, rhs[..., None])
    gamma = gamma[..., 0]
    ok = (info == 0) & torch.isfinite(gamma).all(dim=-1)
    return torch.where(ok[..., None], gamma, torch.zeros_like(gamma)), ok


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
    corr = torch.einsum("nwid,nwi->nwd", dx + df, gamma)
    accel = count >= 2
    use = accel & ok
    fallback = inp.below & accel & ~ok
    new = inp.x + inp.resid - torch.where(use[..., None], corr, torch.zeros_like(corr))
    if bool(fallback.any()):
        st, win = inp.state, inp.window
        assert st.hist_len is not None
        st.hist_len[win.rows.expand_as(win.t)[fallback], win.t[fallback]] = 1
    return new, fallback
