"""`parataa compare`: sequential and parallel solvers on the same noise, side by side."""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import torch

from ..fidelity import FidelityRecorder, psnr_db
from ..models.registry import GMM_OPTIONS
from ..noise import draw_noise
from ..samplers import check_sampler, default_sampler
from ..schedules import Schedule
from ..solver_config import SOLVER_NAMES
from ..solvers import preset, solve
from . import _checks, _processes
from ._progress import IterationBar, loading_bars
from ._solver_options import add_solver_arguments, solver_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="run sequential and parallel solvers on the same noise and compare them",
        description="Run the chosen solvers on one noise bundle and print iterations, NFE, distance to the "
        "sequential sample and wall time per solver.",
    )
    p.add_argument("--model", default="gmm", help="gmm (analytic), or a registered model name (default: gmm)")
    p.add_argument("--model-path", default=None, help="local path of real weights (real models only)")
    _checks.add_sampler_arguments(p)
    p.add_argument(
        "--solvers",
        default="sequential,fp,fp+,aa,taa,picard,taa-euler",
        help=f"comma-separated, from {','.join(SOLVER_NAMES)}",
    )
    add_solver_arguments(p)
    p.add_argument("--cfg-scale", type=float, default=5.0)
    p.add_argument(
        "--seeds",
        default="0-3",
        help=f"noise seeds, e.g. 0-7 or 1,5,9 (default 0-3; at most {_checks.SEEDS_MAX:,}, solved as one batch)",
    )
    p.add_argument(
        "--conditions",
        default=None,
        help="one per seed or one for all: class labels, comma-separated (0,1); prompts separated by '|'; "
        "tiny-sd also takes digits (3, or 0,1 or 0|1) for their training prompts ('a handwritten digit three')",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dim", type=int, default=GMM_OPTIONS["dim"], help="gmm: dimension")
    p.add_argument("--classes", type=int, default=GMM_OPTIONS["classes"], help="gmm: number of classes")
    p.add_argument("--spread", type=float, default=GMM_OPTIONS["spread"], help="gmm: per-class standard deviation")
    p.add_argument("--gmm-seed", type=int, default=GMM_OPTIONS["seed"], help="gmm: seed of the class means")
    p.add_argument(
        "--fidelity-db",
        type=float,
        default=40.0,
        help="report iterations to this PSNR (dB, a finite number > 0) against the sequential x0, range [-1, 1] "
        "(default 40)",
    )
    _processes.add_arguments(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars (on stderr)")
    p.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> tuple[list[str], list[int], list[Any]]:
    """Every value checked before a model is built or a step solved: (solver names, seeds, conditions)."""
    from ..conditions import MODELS

    names = [s.strip() for s in args.solvers.split(",") if s.strip()]
    if not names:
        raise ValueError(f"--solvers names no solver; choose from {','.join(SOLVER_NAMES)}")
    for s in names:
        if s not in SOLVER_NAMES:
            raise ValueError(f"--solvers: unknown solver {s!r}; choose from {','.join(SOLVER_NAMES)}")
        try:
            solver_config(s, args)
        except ValueError as e:  # name the flag: "abs_tol must be ..." comes from --abs-tol
            raise ValueError(f"--{str(e).split()[0].replace('_', '-')}: {e}") from None
    if args.model not in MODELS:
        raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {args.model!r}")
    if args.sampler is None:
        args.sampler = default_sampler(args.model)
    check_sampler(args.model, args.sampler, "--sampler")
    _checks.check_steps(args.steps)
    seeds = _checks.parse_seeds(args.seeds)
    _checks.check_seeds(seeds)
    _checks.check_number("--cfg-scale", args.cfg_scale)
    if not (math.isfinite(args.fidelity_db) and args.fidelity_db > 0):
        raise ValueError(
            f"--fidelity-db must be a finite number of dB > 0 (0 dB: an error as large as the whole range [-1, 1]), "
            f"got {args.fidelity_db}"
        )
    options = None
    if args.model == "gmm":
        for flag, v in (("--dim", args.dim), ("--classes", args.classes)):
            if v < 1:
                raise ValueError(f"{flag} must be an integer >= 1, got {v}")
        if not (math.isfinite(args.spread) and args.spread > 0):
            raise ValueError(f"--spread must be a finite number > 0, got {args.spread}")
        _checks.check_seeds([args.gmm_seed], "--gmm-seed")
        options = {"classes": args.classes}
    conds = _conditions(args.conditions, len(seeds), args.model)
    _checks.check_conditions(args.model, conds, "--conditions", options)
    _checks.check_device(args.device)
    return names, seeds, conds


def _digit(part: str) -> int | None:
    try:
        return int(part)
    except ValueError:
        return None


def _conditions(text: str | None, n: int, model: str) -> list[Any]:
    """One condition per seed from --conditions: ints for class-conditional models, prompts otherwise; for tiny-sd
    an integer stands for its digit's training prompt (a comma list of integers is a list of digits, so "0,1" is
    the prompts of 0 and 1, never the literal prompt "0,1")."""
    from ..conditions import is_class_conditional

    numeric = is_class_conditional(model)
    if text is None:
        return list(range(n)) if numeric else ["a handwritten digit"] * n
    if numeric:
        parts = [s.strip() for s in text.split(",")]
        vals: list[Any] = [_digit(s) for s in parts]
        if None in vals:
            raise ValueError(f"--conditions: class labels must be integers, got {text!r}")
    else:
        parts = [s.strip() for s in text.split("|")]
        if model == "tiny-sd":
            commas = [s.strip() for s in text.split(",")]
            if "|" not in text and len(commas) > 1 and all(_digit(s) is not None for s in commas):
                parts = commas
            vals = [_digit(s) if _digit(s) is not None else s for s in parts]
        else:
            vals = parts
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise ValueError(f"--conditions must give one value or one per seed ({n}), got {len(vals)}")
    return vals


def condition_texts(model: str, conditions: list[Any]) -> list[Any]:
    """What each seed is conditioned on, as the model sees it: the class label, or the prompt (a tiny-sd digit
    replaced by its training prompt)."""
    if model != "tiny-sd":
        return list(conditions)
    from ..models.embedded import digit_prompt

    return [digit_prompt(c) if isinstance(c, int) else c for c in conditions]


def build(args: argparse.Namespace, n: int) -> tuple[Any, Schedule, tuple[int, ...]]:
    """The denoiser, the schedule and the state shape for the chosen model (through the model registry)."""
    from ..models import registry

    conds = _conditions(args.conditions, n, args.model)
    options = None
    if args.model == "gmm":
        options = {"dim": args.dim, "classes": args.classes, "spread": args.spread, "seed": args.gmm_seed}
    den, spec = registry.build_denoiser(
        args.model, conds, cfg_scale=args.cfg_scale, device=args.device, path=args.model_path, options=options
    )
    return den, spec(args.steps, sampler=args.sampler), tuple(spec.sample_shape)


def _solve_one(name: str, args: argparse.Namespace, den, sched: Schedule, noise, ref) -> dict[str, Any]:
    """One solver on the bundle, with the x0 of every iteration measured against the sequential x0."""
    cfg = preset("sequential") if name == "sequential" else solver_config(name, args)
    fidelity = FidelityRecorder(ref.x0) if ref is not None else None
    bar = None if args.quiet else IterationBar(f"{name:<10}", cfg.max_iters or sched.num_steps, sched.num_steps,
                                                  leave=False)  # fmt: skip

    def callback(info) -> None:
        if fidelity is not None:
            fidelity(info)
        if bar is not None:
            bar(info)

    t0 = time.perf_counter()
    res = solve(den, sched, noise, cfg, callback=callback)
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return {"result": res, "wall_s": wall, "fidelity": fidelity}


def run(args: argparse.Namespace) -> int:
    names, seeds, conds = check_args(args)
    status, env = _processes.start(args)
    if status is not None:
        return status
    if not _processes.writes(env):
        args.quiet = True
    with loading_bars(not args.quiet):
        den, sched, shape = build(args, len(seeds))
    den = _processes.spread(den, args, env)
    noise = draw_noise(seeds, args.steps, shape).to(args.device)
    seq = _solve_one("sequential", args, den, sched, noise, None)
    ref = seq["result"]
    rows = []
    for name in names:
        out = seq if name == "sequential" else _solve_one(name, args, den, sched, noise, ref)
        res = out["result"]
        err = (res.x0 - ref.x0).abs().reshape(len(seeds), -1).max(dim=1).values
        psnr = psnr_db(res.x0, ref.x0)
        if name == "sequential":
            to_db = [float(args.steps)] * len(seeds)
        else:
            to_db = [float(v) for v in out["fidelity"].iterations_to(args.fidelity_db)]
        reached = [v for v in to_db if not math.isnan(v)]
        s = res.summary()
        rows.append(
            {
                "solver": name,
                "config": res.config.to_dict(),
                "iterations_mean": s["iterations_mean"],
                "iterations_max": s["iterations_max"],
                "iterations": [int(v) for v in res.iterations.tolist()],
                "step_speedup": args.steps / s["iterations_mean"],
                "nfe_mean": s["nfe_mean"],
                "psnr_min_db": float(psnr.min()) if math.isfinite(float(psnr.min())) else None,
                "psnr_db": [float(p) if math.isfinite(float(p)) else None for p in psnr.tolist()],
                "iterations_to_db_mean": sum(reached) / len(reached) if len(reached) == len(seeds) else None,
                "iterations_to_db": [None if math.isnan(v) else v for v in to_db],
                "seeds_reaching_db": len(reached),
                "max_abs_err_vs_sequential": float(err.max()),
                "finished": s["finished"],
                "wall_s": out["wall_s"],
                "model_s": s["model_s"],
                "solver_s": s["solver_s"],
            }
        )
    meta = {
        "model": args.model,
        "sampler": args.sampler,
        "steps": args.steps,
        "seeds": seeds,
        "conditions": condition_texts(args.model, conds),
        "cfg_scale": args.cfg_scale,
        "fidelity_db": args.fidelity_db,
        "device": str(args.device),
        "torch": torch.__version__,
    }
    meta["processes"] = 1 if env is None else env.world_size
    meta["chunk_size"] = args.chunk_size  # None: every model call whole; results depend on the chunking
    if _processes.writes(env):
        print(json.dumps({"setting": meta, "results": rows}, indent=2) if args.json else _table(meta, rows))
    _processes.finish(env)
    return 0


def _table(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    db = f"{meta['fidelity_db']:g}"
    lines = [
        f"model={meta['model']} sampler={meta['sampler']} T={meta['steps']} seeds={meta['seeds']} "
        f"cfg={meta['cfg_scale']} device={meta['device']}",
        "conditions: "
        + ", ".join(
            f"seed {s}: " + (f"class {c}" if isinstance(c, int) else repr(c))
            for s, c in zip(meta["seeds"], meta["conditions"], strict=True)
        ),
        f"{'solver':<11}{'iters mean':>11}{'max':>6}{'speedup':>9}{'PSNR min':>10}{'to ' + db + ' dB':>10}"
        f"{'NFE':>9}{'max|x0-seq|':>13}{'wall s':>9}",
    ]
    lines.insert(3, "-" * len(lines[2]))
    for r in rows:
        psnr = "inf" if r["psnr_min_db"] is None else f"{r['psnr_min_db']:.1f}"
        n = len(r["iterations"])
        to = (
            f"{r['iterations_to_db_mean']:.2f}"
            if r["iterations_to_db_mean"] is not None
            else f"({r['seeds_reaching_db']}/{n})"
        )
        lines.append(
            f"{r['solver']:<11}{r['iterations_mean']:>11.2f}{r['iterations_max']:>6d}{r['step_speedup']:>8.2f}x"
            f"{psnr:>10}{to:>10}{r['nfe_mean']:>9.1f}{r['max_abs_err_vs_sequential']:>13.2e}{r['wall_s']:>9.3f}"
            + ("" if r["finished"] else "  (hit max_iters)")
        )
    lines.append(
        f"PSNR min: at the stop, over seeds, against the sequential x0 (range [-1, 1]); to {db} dB: mean first "
        "iteration whose x0 is that close, from x0 at every iteration ((k/n): only k of n seeds got there)"
    )
    return "\n".join(lines)
