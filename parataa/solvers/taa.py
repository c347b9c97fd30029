"""Triangular Anderson Acceleration (TAA), the paper's method (docs/METHOD.md section 3).

Step t gets its own coefficients, fitted only on the sub-system that determines x_t (step t and the noisier
steps above it in the window):

    gamma_t = argmin_g  sum_{s=t}^{top} ||F_s - dF_s g||^2 + lambda ||g||^2
    x_t    <- x_t + F_t - (dX_t + dF_t) gamma_t

The normal equations of every t are suffix sums of small (m-1)x(m-1) Gram matrices: flip along t,
cumulative-sum, flip back, one batched solve. No Python loop over t.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..system import suffix_sum
from ._history import ridge_solve
from ._iteration import UpdateRule, anderson_rule
from .base import SolverConfig


def taa_coefficients(
    dx_df: tuple[torch.Tensor, torch.Tensor],
    resid: torch.Tensor,
    valid: torch.Tensor,
    ridge: float,
    solve: Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]] = ridge_solve,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step gamma_t [N, Wmax, m-1] from suffix-summed normal equations, and the per-step ok flag. `solve` is the
    small ridge solver (the static engine's graph-safe `elimination_solve` where LAPACK cannot be captured)."""
    _, df = dx_df
    df = df * valid[..., None, None]
    gram = torch.einsum("nwid,nwjd->nwij", df, df)
    rhs = torch.einsum("nwid,nwd->nwi", df, resid * valid[..., None])
    return solve(suffix_sum(gram), suffix_sum(rhs), ridge)


def taa_update(config: SolverConfig) -> UpdateRule:
    return anderson_rule(config, taa_coefficients)
