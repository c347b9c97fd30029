"""Standard (type-II) Anderson acceleration over the whole window: the baseline TAA improves on.

One coefficient vector per sample, shared by every step of the window:
    gamma = argmin ||F - dF gamma||^2 + lambda ||gamma||^2   over the stacked window,
    x    <- x + F - (dX + dF) gamma.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._iteration import UpdateRule, anderson_rule
from .base import SolverConfig


def anderson_coefficients(
    dx_df: tuple[torch.Tensor, torch.Tensor],
    resid: torch.Tensor,
    valid: torch.Tensor,
    ridge: float,
    solve: Callable[..., tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One gamma per sample from the normal equations stacked over its window, repeated at every position."""
    _, df = dx_df
    v = valid[..., None, None]
    gram = torch.einsum("nwid,nwjd->nij", df * v, df * v)
    rhs = torch.einsum("nwid,nwd->ni", df * v, resid * valid[..., None])
    gamma, ok = solve(gram, rhs, ridge)
    wmax = df.shape[1]
    return gamma[:, None].expand(-1, wmax, -1), ok[:, None].expand(-1, wmax)


def anderson_update(config: SolverConfig) -> UpdateRule:
    return anderson_rule(config, anderson_coefficients)
