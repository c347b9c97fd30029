"""Solver options shared by the subcommands: one definition of the flags, and which flag applies to which solver
from the solver registry (parataa/solver_config.py). Every flag defaults to "not given": the solver's preset and
then `SolverConfig`'s fields decide, so the defaults live in one place. A flag that is given applies to every
chosen solver that reads it (`read_options`: its method's options and its stopping rule's) and whose preset does
not fix it (`Solver.fixed`, as a study's `solver_defaults`; --order still reaches FP+/AA/TAA, `Solver.flag_sets`).
A flag that no chosen solver reads changes nothing and is refused, naming the flag, the solvers and the fix."""

from __future__ import annotations

import argparse
from typing import Any

from ..solver_config import (
    METHOD_RECORDS,
    SOLVER_RECORDS,
    USER_OPTIONS,
    SolverConfig,
    describe_choices,
    option_choices,
    preset,
    read_options,
    refuse_unread,
)

_DEFAULT = SolverConfig()
_FLAGS = USER_OPTIONS  # each has its flag below (max_iters: --max-iters); the choices are read when a parser is built


def add_solver_arguments(p: argparse.ArgumentParser) -> None:
    d, choices = _DEFAULT, option_choices()
    g = p.add_argument_group("solver options (default: each solver's preset, then parataa.SolverConfig)")
    g.add_argument("--window", type=int, default=None, help="window W (default: T)")
    g.add_argument("--history", type=int, default=None, help=f"history m of AA/TAA (default {d.history})")
    g.add_argument("--order", type=int, default=None, help="order k of FP+/AA/TAA (default T; FP is always 1)")
    g.add_argument("--ridge", type=float, default=None, help=f"ridge lambda of AA/TAA (default {d.ridge:g})")
    g.add_argument("--splitting", choices=choices["splitting"], default=None,
                   help=f"order-k equations (default {d.splitting})")
    g.add_argument("--stop", choices=choices["stop"], default=None,
                   help=f"stopping rule (default {d.stop}): {describe_choices('stop')}")
    g.add_argument(
        "--target-db",
        type=float,
        default=None,
        help=f"stop at this PSNR of x0 against the sequential x0 (implies --stop target, also for taa-euler; "
        f"default {d.target_db:g})",
    )
    g.add_argument("--sum-tol", type=float, default=None, help=f"budget of --stop sum (default {d.sum_tol:g})")
    g.add_argument(
        "--freeze-frac",
        type=float,
        default=None,
        help=f"with --stop sum: freeze the window's converged prefix while its residuals stay within this fraction "
        f"of the budget, pro rata of the steps frozen (default {d.freeze_frac:g}: off)",
    )
    g.add_argument(
        "--floor-freeze",
        type=float,
        default=None,
        help=f"fp/aa/taa with a half-precision network: keep the window's prefix from the top whose residuals are "
        f"within this many times their estimated rounding noise (default {d.floor_freeze:g}: off)",
    )
    g.add_argument("--abs-tol", type=float, default=None, help=f"per-step rule (default {d.abs_tol:g})")
    g.add_argument("--rel-tol", type=float, default=None, help=f"per-step rule (default {d.rel_tol:g})")
    g.add_argument("--tol-scale", choices=choices["tol_scale"], default=None, help=f"(default {d.tol_scale})")
    g.add_argument("--max-iters", type=int, default=None, help="iteration cap (default: T)")
    g.add_argument("--picard-tol", type=float, default=None, help=f"ParaDiGMS tolerance (default {d.picard_tol:g})")
    g.add_argument(
        "--init",
        choices=choices["init"],
        default=None,
        help="initial guess of FP/FP+/AA/TAA (default: gaussian; copy for taa-euler; Picard always copies)",
    )


def solver_config(name: str, args: argparse.Namespace) -> SolverConfig:
    """The config of solver `name` from its preset and the flags the user gave. The solvers of the command are
    `args.solvers` (comma-separated) where it has them, else `name` alone: a given flag none of them reads is
    refused."""
    given = {k: getattr(args, k) for k in _FLAGS if getattr(args, k, None) is not None}
    if "target_db" in given:  # the fidelity target chooses its rule
        if given.get("stop", "target") != "target":
            raise ValueError(f"--target-db {given['target_db']:g} sets the target rule; drop --stop {given['stop']} "
                             "or pass --stop target")
        given["stop"] = "target"
    chosen = [s.strip() for s in (getattr(args, "solvers", None) or name).split(",") if s.strip()]
    for k in given:
        if not any(k in _applies(s, given) for s in chosen if s in SOLVER_RECORDS):
            cfg = _config(chosen[0], given)
            refuse_unread(", ".join(chosen), cfg, [k], f"drop --{k.replace('_', '-')} or choose a solver that reads it")
    return _config(name, given)


def _applies(name: str, given: dict[str, Any]) -> frozenset[str]:
    """The given flags that change solver `name`: those it reads (with the flags applied) and its preset leaves."""
    rec = SOLVER_RECORDS[name]
    # --target-db chooses the rule also for a preset that fixes its own (taa-euler)
    settable = set(given) - (rec.fixed - rec.flag_sets - ({"stop"} if "target_db" in given else set()))
    first = preset(name, **{k: v for k, v in given.items() if k in settable and k in _static_reads(name)})
    return frozenset(settable & read_options(first.to_dict()))


def _static_reads(name: str) -> frozenset[str]:
    return METHOD_RECORDS[SOLVER_RECORDS[name].preset["method"]].options


def _config(name: str, given: dict[str, Any]) -> SolverConfig:
    return preset(name, **{k: v for k, v in given.items() if k in _applies(name, given)})
