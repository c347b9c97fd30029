"""Solver configurations, the solver registry, presets and the tags that name them: what the solvers, jobs, CLI and
analysis share.

The registry holds one `Method` record per algorithm (its reference loop, its window update rule, the options it
reads) and one `Solver` record per study name (its preset and what the preset fixes). The presets, the dispatch
of both engines (parataa/solvers), the CLI's solver flags and their choices, the study schema's solver names and
option choices (parataa/jobs/config.py `load_schema`), the run tags and the "option X does nothing for solver Y"
errors all follow from these records; adding an algorithm is its module plus one `Method` and one `Solver`.

Torch-free on purpose: the analysis (which never imports torch) expands a study's solver grid into the same tags
the workflow stored its runs under, from this one definition. Defaults live in `SolverConfig`'s fields and
nowhere else; a preset fixes some of them (FP is always order 1; Picard always starts from copies, as
ParaDiGMS does).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .stopping import RULES, TOL_SCALES, fmt_num

__all__ = [
    "METHODS",
    "METHOD_RECORDS",
    "Method",
    "SOLVER_RECORDS",
    "Solver",
    "read_options",
    "refuse_unread",
    "INITS",
    "TOL_SCALES",
    "SPLITTINGS",
    "USER_OPTIONS",
    "describe_choices",
    "option_choices",
    "PRESETS",
    "PRESET_FIXED",
    "SOLVER_NAMES",
    "PARALLEL_SOLVERS",
    "SolverConfig",
    "check_choice",
    "expand_solver_grid",
    "grid_applies",
    "fmt_num",
    "preset",
    "solver_tag",
]

INITS = ("gaussian", "copy", "trajectory")
SPLITTINGS = ("exact", "euler")


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}{hint}")


@dataclass(frozen=True)
class Method:
    """One solver algorithm (`SolverConfig.method`).

    loop: "module:function" in parataa.solvers of its reference loop, with the solvers' one signature; None for a
        window solver, whose loop is the sliding window's (`_window.run_window_solver`) with its update rule.
    update: "module:function" in parataa.solvers that makes its window update rule from a config (`UpdateRule`,
        both engines run it), or None for an algorithm with its own iteration (sequential, Picard).
    options: the `SolverConfig` fields it reads; a window solver (update not None) also reads its stopping rule's
        (parataa/stopping.py). Any other option changes nothing for it and is refused where a user gives it.
    """

    name: str
    loop: str | None
    update: str | None
    options: frozenset[str]


_ANY = frozenset({"window", "max_iters", "init", "freeze_from"})  # every parallel solver reads these
_WINDOW = _ANY | {"order", "splitting", "stop", "floor_freeze"}
METHOD_RECORDS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("sequential", "sequential:sequential", None, frozenset()),
        Method("fp", None, "_iteration:fixed_point_rule", _WINDOW),
        Method("aa", None, "anderson:anderson_update", _WINDOW | {"history", "ridge"}),
        Method("taa", None, "taa:taa_update", _WINDOW | {"history", "ridge"}),
        Method(
            "picard", "picard:picard", None, frozenset({"window", "max_iters", "init", "freeze_from"} | {"picard_tol"})
        ),
    )
}
METHODS = tuple(METHOD_RECORDS)


@dataclass(frozen=True)
class SolverConfig:
    """Every algorithmic knob of a solve. `window`/`order`/`max_iters` None mean "the whole trajectory"."""

    method: str = "taa"
    window: int | None = None  # W
    order: int | None = 1  # k; None = T ("FP+")
    history: int = 2  # m, stored iterates (m = 1 is plain fixed point)
    ridge: float = 1e-3  # lambda, absolute
    abs_tol: float = 1e-3
    rel_tol: float = 1e-3
    tol_scale: str = "sigma"  # g_t: posterior std, 1, or sqrt of the step's beta
    max_iters: int | None = None
    init: str = "gaussian"
    freeze_from: int | None = None  # with init="trajectory": states x_t, t >= freeze_from, stay fixed
    picard_tol: float = 0.1  # ParaDiGMS tolerance (RMS change <= picard_tol * sigma)
    splitting: str = "exact"  # order-k equations: "exact" (the paper) or "euler" (increments, as ParaDiGMS)
    stop: str = "step"  # "step": every rho_t <= max(abs_tol, rel_tol g_t); "sum": sum_t rho_t <= sum_tol;
    # "target": x0's change per iteration within the PSNR target_db (docs/METHOD.md section 9)
    sum_tol: float = 0.05  # with stop="sum": budget for the summed first-order residual RMS of the trajectory
    target_db: float = 40.0  # with stop="target": the PSNR of x0 against the sequential x0 to stop at (section 9)
    # with stop="sum": the fraction of sum_tol that states frozen before the whole trajectory is accepted may spend,
    # pro rata of the steps frozen (0 = off; docs/METHOD.md section 9, "Freezing a converged prefix")
    freeze_frac: float = 0.0
    # fp, aa, taa with a half-precision network: the window's prefix from the top whose first-order residuals are all
    # within floor_freeze times their estimated rounding noise keeps its values (0 = off; docs/METHOD.md section 9)
    floor_freeze: float = 0.0

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_choice("init", self.init, INITS)
        check_choice("tol_scale", self.tol_scale, TOL_SCALES)
        check_choice("splitting", self.splitting, SPLITTINGS)
        check_choice("stop", self.stop, tuple(RULES))
        if self.method in ("sequential", "picard") and (self.splitting, self.stop) != ("exact", "step"):
            raise ValueError(
                f"splitting and stop apply to fp, aa and taa; {self.method} has its own update and rule "
                f"(got splitting={self.splitting!r}, stop={self.stop!r}): leave them at 'exact' and 'step'"
            )
        for name in ("window", "order", "max_iters"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None (whole trajectory), got {v!r}")
        if not isinstance(self.history, int) or isinstance(self.history, bool) or self.history < 1:
            raise ValueError(f"history must be an integer >= 1 (1 = plain fixed point), got {self.history!r}")
        for name in ("ridge", "abs_tol", "rel_tol", "picard_tol", "sum_tol"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        f = self.freeze_frac
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not math.isfinite(f) or not 0 <= f <= 1:
            raise ValueError(
                f"freeze_frac must be a fraction of sum_tol in [0, 1] (0 = off, e.g. 0.02), got {f!r}"
            )
        ff = self.floor_freeze
        if not isinstance(ff, (int, float)) or isinstance(ff, bool) or not math.isfinite(ff) or ff < 0:
            raise ValueError(
                f"floor_freeze must be a finite multiple of the rounding noise >= 0 (0 = off, e.g. 2), got {ff!r}"
            )
        t = self.target_db
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"target_db must be a finite number of dB > 0 (e.g. 40), got {t!r}")
        if self.method != "picard":
            RULES[self.stop].check(self)
        if self.freeze_from is not None:
            if self.init != "trajectory":
                raise ValueError(f"freeze_from needs init='trajectory', got init={self.init!r}")
            if not isinstance(self.freeze_from, int) or isinstance(self.freeze_from, bool) or self.freeze_from < 1:
                raise ValueError(f"freeze_from must be a positive step index, got {self.freeze_from!r}")

    def replace(self, **changes: Any) -> SolverConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SolverConfig:
        names = cls.field_names()
        for k in d:
            if k not in names:
                close = difflib.get_close_matches(k, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown solver option {k!r}{hint}")
        return cls(**dict(d))


@dataclass(frozen=True)
class Solver:
    """One solver name of the study and the CLI: the options that make it what it is (`preset`, method included)
    and those a study's `solver_defaults` and the CLI's shared flags never change (`fixed`; its own block in a
    study config can, e.g. the m x k grid sets TAA's order). `flag_sets`: fixed options the CLI flag still sets."""

    name: str
    preset: Mapping[str, Any]
    fixed: frozenset[str] = frozenset()
    flag_sets: frozenset[str] = frozenset()


SOLVER_RECORDS: dict[str, Solver] = {
    s.name: s
    for s in (
        Solver("sequential", {"method": "sequential"}),
        Solver("fp", {"method": "fp", "order": 1}, frozenset({"order"})),
        Solver("fp+", {"method": "fp", "order": None}, frozenset({"order"}), frozenset({"order"})),
        Solver("aa", {"method": "aa", "order": None}, frozenset({"order"}), frozenset({"order"})),
        Solver("taa", {"method": "taa", "order": None}, frozenset({"order"}), frozenset({"order"})),
        Solver("picard", {"method": "picard", "init": "copy"}, frozenset({"init"})),
        # TAA on the Euler splitting from copies, stopped by the summed residual (docs/METHOD.md sections 8-9)
        Solver(
            "taa-euler",
            {"method": "taa", "order": None, "splitting": "euler", "init": "copy", "history": 5, "stop": "sum"},
            frozenset({"order", "splitting", "init", "history", "stop"}),
        ),
    )
}
PRESETS: dict[str, dict[str, Any]] = {n: dict(s.preset) for n, s in SOLVER_RECORDS.items()}
PRESET_FIXED: dict[str, frozenset[str]] = {n: s.fixed for n, s in SOLVER_RECORDS.items()}
SOLVER_NAMES = tuple(PRESETS)
PARALLEL_SOLVERS = tuple(n for n in SOLVER_NAMES if n != "sequential")
# The options a user sets by name (a study's solver blocks, the CLI's flags): every SolverConfig field but method
# (the solver's name chooses it) and freeze_from (with init="trajectory", which only the API takes).
USER_OPTIONS = tuple(f for f in SolverConfig.field_names() if f not in ("method", "freeze_from"))


def option_choices() -> dict[str, tuple[str, ...]]:
    """The values a user may give each option that takes a name (study configs, CLI flags). Read when called, so a
    stopping rule registered after import (parataa/stopping.py `register`) is among them."""
    return {
        "tol_scale": TOL_SCALES,
        "init": tuple(i for i in INITS if i != "trajectory"),
        "splitting": SPLITTINGS,
        "stop": tuple(RULES),
    }


def describe_choices(option: str) -> str:
    """The choices of `option` in words, 'a, b or c'; each stopping rule with its `summary` in parentheses."""
    words = [
        f"{c} ({RULES[c].summary})" if option == "stop" and RULES[c].summary else c for c in option_choices()[option]
    ]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _check_solver_name(name: str) -> None:
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), list(PRESETS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"solver must be one of {sorted(PRESETS)}, got {name!r}{hint}")


def preset(name: str, **overrides: Any) -> SolverConfig:
    """Solver configs by the study's names: sequential, fp, fp+, aa, taa, picard, taa-euler."""
    _check_solver_name(name)
    return SolverConfig(**{**PRESETS[name], **overrides})


def read_options(c: Mapping[str, Any]) -> frozenset[str]:
    """The options that change the result of the config c (as a dict): its method's and, for a window solver, its
    stopping rule's; at order 1 both splittings are the same first-order step, so splitting is not among them."""
    m = METHOD_RECORDS[c["method"]]
    out = set(m.options) | (set(RULES[c["stop"]].options) if m.update is not None else set())
    if c.get("order") == 1:
        out.discard("splitting")
    return frozenset(out)


def refuse_unread(name: str, cfg: SolverConfig, given: Any, fix: str) -> None:
    """ValueError for the first option in `given` that changes nothing for solver `name` at config `cfg`."""
    reads = read_options(cfg.to_dict())
    m = METHOD_RECORDS[cfg.method]
    for k in given:
        if k in reads:
            continue
        if k == "splitting" and k in m.options:
            why = "at order 1 both splittings are the same first-order step"
        elif m.update is not None and any(k in r.options for r in RULES.values()):
            why = f"its stopping rule stop={cfg.stop!r} reads {', '.join(RULES[cfg.stop].options)}"
        else:
            why = f"method {cfg.method!r} reads {', '.join(sorted(reads)) or 'no option'}"
        raise ValueError(f"{k} does nothing for solver {name!r}: {why}; {fix}")


def solver_tag(name: str, cfg: SolverConfig | Mapping[str, Any], steps: int) -> str:
    """Directory name of a solver and its hyperparameters, e.g. taa_m2_k25_w25_tol1e-3 (docs/STORAGE.md). The
    parts follow from the solver's records: its method's options, its stopping rule's `tag_parts`."""
    c = cfg if isinstance(cfg, Mapping) else cfg.to_dict()
    m = METHOD_RECORDS[PRESETS[name]["method"]]
    if not m.options:
        return name
    default = SolverConfig(**PRESETS[name]).to_dict()
    parts = [name.replace("+", "plus")]
    if "history" in m.options:
        parts.append(f"m{c['history']}")
    if "order" in m.options and PRESETS[name].get("order") != 1:
        parts.append(f"k{c['order'] or steps}")
    parts.append(f"w{c['window'] or steps}")
    if c["splitting"] != default["splitting"]:
        parts.append(c["splitting"])
    if "picard_tol" in m.options:
        parts.append(f"ptol{fmt_num(c['picard_tol'])}")
    else:
        parts.extend(RULES[c["stop"]].tag_parts(c))
    if "floor_freeze" in m.options and c.get("floor_freeze", 0.0):
        parts.append(f"ff{fmt_num(c['floor_freeze'])}")
    if "ridge" in m.options and c["ridge"] != default["ridge"]:
        parts.append(f"ridge{fmt_num(c['ridge'])}")
    if c["tol_scale"] != default["tol_scale"]:
        parts.append(f"g{c['tol_scale']}")
    if c["init"] != default["init"]:
        parts.append(f"init{c['init']}")
    if c["max_iters"] is not None:
        parts.append(f"it{c['max_iters']}")
    return "_".join(parts)


def grid_applies(grid: Mapping[str, Any], model: str | None, sampler: str | None, steps: int) -> bool:
    """Whether a study's `grids` entry ({models, samplers, steps, solvers}; a missing list means every value)
    covers the cell (model, sampler, steps). With model or sampler None, no grid applies."""
    if model is None or sampler is None:
        return False
    return all(
        want is None or value in list(want)
        for want, value in ((grid.get("models"), model), (grid.get("samplers"), sampler), (grid.get("steps"), steps))
    )


def expand_solver_grid(
    config: Mapping[str, Any], steps: int, model: str | None = None, sampler: str | None = None
) -> list[dict[str, Any]]:
    """Every parallel solver configuration of a study config at `steps`: [{"solver", "tag", "config"}] in config
    order. A solver block `{option: value | [grid]}` is expanded as a Cartesian product over its lists; the study's
    `solver_defaults` apply except where the preset fixes an option. W >= T and k >= T both mean "the whole
    trajectory" and are one cell, stored as None. Raises ValueError naming the solver on a bad option or on two
    grid points that share a tag but differ.

    `grids` (optional): a list of `{models, samplers, steps, solvers}` whose solver blocks are added only in the
    cells they name (`grid_applies`), after the study-wide `solvers`; a setting both produce is one cell. Given
    `model` and `sampler`, the configurations of that cell; without them, the study-wide ones only. A model and
    a sampler that do not go together (`parataa.samplers.applies`: flow models take flow-euler only) make no
    cell: none."""
    from .samplers import applies

    if model is not None and sampler is not None and not applies(model, sampler):
        return []
    defaults = dict(config.get("solver_defaults") or {})
    out: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    blocks = [("solvers", config["solvers"])]
    for i, grid in enumerate(config.get("grids") or []):
        if grid_applies(grid, model, sampler, steps):
            blocks.append((f"grids[{i}].solvers", grid.get("solvers") or {}))
    for where, solvers in blocks:
        _expand(where, solvers, defaults, steps, seen, out)
    return out


def _expand(
    where: str,
    solvers: Mapping[str, Any],
    defaults: Mapping[str, Any],
    steps: int,
    seen: dict[str, dict[str, Any]],
    out: list[dict[str, Any]],
) -> None:
    for name, block in solvers.items():
        _check_solver_name(name)
        block = dict(block or {})
        keys = list(block)
        values = [v if isinstance(v, list) else [v] for v in block.values()]
        for combo in itertools.product(*values) if keys else [()]:
            over = {k: v for k, v in defaults.items() if k not in PRESET_FIXED[name]}
            over.update(dict(zip(keys, combo, strict=True)))
            try:
                cfg = preset(name, **over)
                refuse_unread(name, cfg, keys, "remove it from the block")
            except (ValueError, TypeError) as e:
                raise ValueError(f"{where}.{name}: {e}") from e
            if cfg.window is not None and cfg.window >= steps:
                cfg = cfg.replace(window=None)
            if cfg.order is not None and cfg.order >= steps and name != "fp":
                cfg = cfg.replace(order=None)
            tag = solver_tag(name, cfg, steps)
            d = cfg.to_dict()
            if tag in seen:
                if seen[tag] != d:
                    raise ValueError(
                        f"{where}.{name}: two grid points share the tag {tag!r} but differ: {seen[tag]} vs {d}"
                    )
                continue
            seen[tag] = d
            out.append({"solver": name, "tag": tag, "config": d})
