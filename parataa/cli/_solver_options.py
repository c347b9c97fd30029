"""Solver options shared by the subcommands: one definition of the flags and of which flag applies to which
solver. Every flag defaults to "not given": the solver's preset and then `SolverConfig`'s fields decide, so the
defaults live in one place (parataa/solver_config.py). A flag that is given applies to every chosen solver it
means something to and that its preset does not fix (`PRESET_FIXED`, as a study's `solver_defaults`; --order
still reaches FP+/AA/TAA): FP is always order 1; Picard has its own update, rule and copy initialisation (its
flags are --window, --picard-tol and --max-iters); taa-euler keeps its splitting, copies, history and summed rule
(unless --target-db sets the target rule);
sequential takes none."""

from __future__ import annotations

import argparse
from typing import Any

from ..solver_config import INITS, PRESET_FIXED, SPLITTINGS, STOPS, TOL_SCALES, SolverConfig, preset

_DEFAULT = SolverConfig()
# options that mean nothing to a solver (beyond what its preset fixes)
_NOT_FOR = {
    "sequential": None,  # none at all
    "fp": {"history", "ridge"},
    "picard": {"order", "history", "ridge", "splitting", "stop", "sum_tol", "target_db", "abs_tol", "rel_tol",
               "tol_scale"},
}
_ORDER_FROM_FLAG = {"fp+", "aa", "taa"}  # the --order flag sets their k (a study sets it in the solver's block)


def add_solver_arguments(p: argparse.ArgumentParser) -> None:
    d = _DEFAULT
    g = p.add_argument_group("solver options (default: each solver's preset, then parataa.SolverConfig)")
    g.add_argument("--window", type=int, default=None, help="window W (default: T)")
    g.add_argument("--history", type=int, default=None, help=f"history m of AA/TAA (default {d.history})")
    g.add_argument("--order", type=int, default=None, help="order k of FP+/AA/TAA (default T; FP is always 1)")
    g.add_argument("--ridge", type=float, default=None, help=f"ridge lambda of AA/TAA (default {d.ridge:g})")
    g.add_argument("--splitting", choices=SPLITTINGS, default=None, help="order-k equations (default exact)")
    g.add_argument("--stop", choices=STOPS, default=None,
                   help="stopping rule: per step, summed, or the fidelity target (default step)")
    g.add_argument("--sum-tol", type=float, default=None, help=f"budget of --stop sum (default {d.sum_tol:g})")
    g.add_argument(
        "--target-db",
        type=float,
        default=None,
        help=f"stop at this PSNR of x0 against the sequential x0 (implies --stop target; default {d.target_db:g})",
    )
    g.add_argument("--abs-tol", type=float, default=None, help=f"per-step rule (default {d.abs_tol:g})")
    g.add_argument("--rel-tol", type=float, default=None, help=f"per-step rule (default {d.rel_tol:g})")
    g.add_argument("--tol-scale", choices=TOL_SCALES, default=None, help=f"(default {d.tol_scale})")
    g.add_argument("--max-iters", type=int, default=None, help="iteration cap (default: T)")
    g.add_argument("--picard-tol", type=float, default=None, help=f"ParaDiGMS tolerance (default {d.picard_tol:g})")
    g.add_argument(
        "--init",
        choices=[i for i in INITS if i != "trajectory"],
        default=None,
        help="initial guess of FP/FP+/AA/TAA (default: gaussian; copy for taa-euler; Picard always copies)",
    )


def solver_config(name: str, args: argparse.Namespace) -> SolverConfig:
    """The config of solver `name` from its preset and the flags the user gave."""
    given: dict[str, Any] = {
        k: getattr(args, k)
        for k in ("window", "history", "order", "ridge", "splitting", "stop", "sum_tol", "target_db", "abs_tol")
        + ("rel_tol",)
        + ("tol_scale", "max_iters", "picard_tol", "init")
        if getattr(args, k, None) is not None
    }
    if "target_db" in given:
        if given.get("stop", "target") != "target":
            raise ValueError(f"--target-db {given['target_db']:g} sets the target rule; drop --stop {given['stop']} "
                             "or pass --stop target")
        given["stop"] = "target"
    skip = _NOT_FOR.get(name, set())
    if skip is None:
        return preset(name)
    skip = skip | (PRESET_FIXED.get(name, frozenset()) - ({"order"} if name in _ORDER_FROM_FLAG else set()))
    if "target_db" in given and "target_db" not in skip:
        skip = skip - {"stop"}  # --target-db chooses the rule, also for a preset that fixes its own (taa-euler)
    return preset(name, **{k: v for k, v in given.items() if k not in skip})
