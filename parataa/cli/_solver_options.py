"""Solver options shared by the subcommands: one definition of the flags and of which flag applies to which
solver (FP is always order 1; Picard always starts from copies, as ParaDiGMS; sequential takes none)."""

from __future__ import annotations

import argparse
from typing import Any

from ..solver_config import TOL_SCALES, SolverConfig, preset

_DEFAULT = SolverConfig()


def add_solver_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window", type=int, default=None, help="window W (default: T)")
    d = _DEFAULT
    p.add_argument("--history", type=int, default=d.history, help=f"history m of AA/TAA (default {d.history})")
    p.add_argument("--order", type=int, default=None, help="order k of FP+/AA/TAA (default T; FP is always 1)")
    p.add_argument("--ridge", type=float, default=d.ridge, help=f"ridge lambda of AA/TAA (default {d.ridge:g})")
    p.add_argument("--abs-tol", type=float, default=d.abs_tol, help=f"(default {d.abs_tol:g})")
    p.add_argument("--rel-tol", type=float, default=d.rel_tol, help=f"(default {d.rel_tol:g})")
    p.add_argument("--tol-scale", choices=TOL_SCALES, default=d.tol_scale)
    p.add_argument("--max-iters", type=int, default=None, help="iteration cap (default: T)")
    p.add_argument(
        "--picard-tol", type=float, default=d.picard_tol, help=f"ParaDiGMS tolerance (default {d.picard_tol:g})"
    )
    p.add_argument(
        "--init",
        choices=("gaussian", "copy"),
        default=d.init,
        help="initial guess of FP/FP+/AA/TAA (Picard always starts from copies, as ParaDiGMS)",
    )


def solver_config(name: str, args: argparse.Namespace) -> SolverConfig:
    """The config of solver `name` from the parsed flags."""
    over: dict[str, Any] = dict(
        window=args.window,
        history=args.history,
        ridge=args.ridge,
        abs_tol=args.abs_tol,
        rel_tol=args.rel_tol,
        tol_scale=args.tol_scale,
        max_iters=args.max_iters,
        picard_tol=args.picard_tol,
    )
    if name not in ("fp", "sequential") and args.order is not None:
        over["order"] = args.order
    if name not in ("picard", "sequential"):
        over["init"] = args.init
    return preset(name, **over)
