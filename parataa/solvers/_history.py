"""The small ridge least squares of AA and TAA: by LAPACK (`ridge_solve`, the reference) or by Gaussian elimination
in elementwise tensor operations (`elimination_solve`, which CUDA graphs can capture).

The history they fit is kept per absolute step t (shape [N, T, m, D], newest first), so it survives the window
sliding. Column i of step t (i = 0 .. m-2) is the difference of consecutive stored iterates,
    dX_t[:, i] = X_t^(newest - i) - X_t^(newest - i - 1),   dF_t likewise,
and is usable while step t has at least i + 2 stored iterates (`_iteration.push_history`).
"""

from __future__ import annotations

import torch


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


def elimination_solve(gram: torch.Tensor, rhs: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`ridge_solve` by Gaussian elimination without pivoting, written in batched elementwise tensor operations.

    The same system as `_history.ridge_solve` ((gram + ridge I) gamma = rhs, a unit diagonal for columns with no
    data when ridge = 0). Without pivoting it is stable for these symmetric positive (semi)definite systems; a zero
    pivot gives a non-finite gamma, reported as not ok exactly like a singular LAPACK solve. It launches only
    elementwise kernels and small reductions, which every CUDA graph can capture (batched LAPACK/cuSOLVER calls are
    not all capturable): each elimination step and each back-substitution step works on the whole batch and every
    row at once, about 8 kernels per unknown, since inside a replayed graph an iteration's cost is mostly kernel
    count.
    """
    k = gram.shape[-1]
    # the augmented system [.., k, k + 1], eliminated in place
    m = torch.cat([ridge_system(gram, rhs, ridge), rhs[..., None]], dim=-1)
    for p in range(k - 1):
        f = m[..., p + 1 :, p] / m[..., p, p, None]
        m[..., p + 1 :, p:] -= f[..., None] * m[..., p, None, p:]
    x = torch.zeros_like(rhs)
    for p in reversed(range(k)):
        s = m[..., p, k] - (m[..., p, p + 1 : k] * x[..., p + 1 :]).sum(dim=-1) if p < k - 1 else m[..., p, k]
        x[..., p] = s / m[..., p, p]
    ok = torch.isfinite(x).all(dim=-1)
    return torch.where(ok[..., None], x, torch.zeros_like(x)), ok
