"""Standard (type-II) Anderson acceleration over the whole window: the baseline TAA improves on.

One coefficient vector per sample, shared by every step of the window:
    gamma = argmin ||F - dF gamma||^2 + lambda ||gamma||^2   over the stacked window,
    x    <- x + F - (dX + dF) gamma.
"""

from __future__ import annotations

import torch

from ._iteration import UpdateInput, anderson_step, fixed_point_update, push_history
from .base import SolverConfig


def anderson_update(config: SolverConfig):
    m = config.history

    def update(inp: UpdateInput) -> tuple[torch.Tensor, torch.Tensor]:
        if m == 1:
            return fixed_point_update(inp)
        dx, df, count = push_history(inp, m)
        v, dfl = inp.valid[..., None, None], df.to(inp.ls_dtype)
        gram = torch.einsum("nwid,nwjd->nij", dfl * v, dfl * v)
        rhs = torch.einsum("nwid,nwd->ni", dfl * v, inp.resid.to(inp.ls_dtype) * inp.valid[..., None])
        gamma, ok = inp.solve(gram, rhs, config.ridge)
        wmax = inp.x.shape[1]
        return anderson_step(inp, dx, df, count, gamma[:, None].expand(-1, wmax, -1), ok[:, None].expand(-1, wmax))

    return update
