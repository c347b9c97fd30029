"""`parataa sample`: one model, one solver, one class or prompt -> the final image, the convergence log, timings."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from ..noise import draw_noise
from ..samplers import check_sampler, default_sampler
from ..solver_config import SOLVER_NAMES
from ..solvers import solve
from . import _checks, _processes
from ._progress import IterationBar, loading_bars
from ._solver_options import add_solver_arguments, solver_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="sample one image with one solver and save it with its convergence log",
        description="Sample one image (one seed, one class or prompt) with one solver. Writes OUT/sample.png "
        "(models with images), OUT/x0.pt, OUT/convergence.parquet (one row per sample, iteration and step), "
        "OUT/timings.parquet (one row per iteration) and OUT/summary.json.",
    )
    p.add_argument(
        "--model", default="tiny-dit", help="gmm, tiny-dit, tiny-sd, dit-xl-2-256, sd-v1-5 (default tiny-dit)"
    )
    p.add_argument(
        "--model-path",
        default=None,
        help="local weights folder, a diffusers-format snapshot; a missing folder is an error (default: the "
        "embedded model, or the model's hub id read from the Hugging Face cache: HF_HUB_CACHE, HF_HUB_OFFLINE)",
    )
    p.add_argument("--solver", default="taa", choices=SOLVER_NAMES)
    _checks.add_sampler_arguments(p)
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--class", dest="label", type=int, default=None, help="class label (class-conditional models)")
    cond.add_argument("--prompt", default=None, help="text prompt (text-conditional models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance scale (default: the model's)")
    add_solver_arguments(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="model dtype: float32 (default), float16, bfloat16")
    _processes.add_arguments(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> tuple[Any, Path]:
    """Every value checked before a model is built or a step solved: (the condition, the output folder)."""
    from ..conditions import MODELS, is_class_conditional

    if args.model not in MODELS:
        raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {args.model!r}")
    if args.sampler is None:
        args.sampler = default_sampler(args.model)
    check_sampler(args.model, args.sampler, "--sampler")
    _checks.check_steps(args.steps)
    _checks.check_seeds([args.seed], "--seed")
    _checks.check_number("--cfg-scale", args.cfg_scale)
    if args.dtype is not None and args.dtype not in _checks.DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(_checks.DTYPES)}, got {args.dtype!r}")
    try:
        solver_config(args.solver, args)
    except ValueError as e:  # name the flag: "abs_tol must be ..." comes from --abs-tol
        raise ValueError(f"--{str(e).split()[0].replace('_', '-')}: {e}") from None
    cond = _condition(args, is_class_conditional(args.model))
    _checks.check_conditions(args.model, [cond], "--class" if args.label is not None else "--prompt")
    _checks.check_device(args.device)
    return cond, _checks.check_out_dir(args.out)


def _condition(args: argparse.Namespace, class_conditional: bool) -> Any:
    if class_conditional:
        if args.prompt is not None:
            raise ValueError(f"--prompt: model {args.model} is class-conditional; pass --class N instead")
        return 0 if args.label is None else args.label
    if args.label is not None:
        if args.model == "tiny-sd":
            return args.label  # the registry turns a digit into its training prompt
        raise ValueError(f"--class: model {args.model} is text-conditional; pass --prompt TEXT instead")
    if args.prompt is None:
        raise ValueError(f"--prompt: model {args.model} is text-conditional; pass --prompt TEXT")
    return args.prompt


def _write_table(df: Any, path: Path) -> Path:
    try:
        df.to_parquet(path, index=False)
        return path
    except ImportError:  # no parquet engine: CSV keeps the log usable
        csv = path.with_suffix(".csv")
        df.to_csv(csv, index=False)
        return csv


def run(args: argparse.Namespace) -> int:
    from ..models.registry import build_denoiser, default_cfg_scale, is_class_conditional
    from ..models.weights import weights_identity

    cond, out = check_args(args)
    status, env = _processes.start(args)
    if status is not None:
        return status
    if not _processes.writes(env):
        args.no_progress = True
    class_conditional = is_class_conditional(args.model)
    cfg_scale = default_cfg_scale(args.model) if args.cfg_scale is None else args.cfg_scale
    with loading_bars(not args.no_progress):
        den, spec = build_denoiser(
            args.model,
            [cond],
            cfg_scale=cfg_scale,
            device=args.device,
            dtype=args.dtype,
            path=args.model_path,
        )
    model = den
    den = _processes.spread(den, args, env)
    sched = spec(args.steps, sampler=args.sampler)
    config = solver_config(args.solver, args)
    noise = draw_noise([args.seed], args.steps, spec["sample_shape"]).to(args.device)

    bar = None
    if not args.no_progress:
        bar = IterationBar(f"{args.solver} {args.model}", config.max_iters or args.steps, args.steps)

    t0 = time.perf_counter()
    try:
        res = solve(den, sched, noise, config, callback=bar)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    if not _processes.writes(env):
        _processes.finish(env)
        return 0

    out.mkdir(parents=True, exist_ok=True)
    torch.save(res.x0.cpu(), out / "x0.pt")
    files = {"x0": "x0.pt"}
    if hasattr(model, "decode"):
        from ..models.images import save_png

        img = model.decode(res.x0)[0]
        files["image"] = save_png(img, out / "sample.png", scale=max(1, 256 // img.shape[-1])).name
    files["convergence"] = _write_table(res.log, out / "convergence.parquet").name
    files["timings"] = _write_table(res.timings, out / "timings.parquet").name
    summary = {
        "model": args.model,
        "model_source": spec.get("source"),
        "weights": weights_identity(args.model, args.model_path),  # sha256 of every weight file read
        "condition": cond if class_conditional else getattr(model, "prompts", [cond])[0],
        "cfg_scale": cfg_scale,
        "seed": args.seed,
        "schedule": sched.describe(),
        "solver": args.solver,
        "config": config.to_dict(),
        "result": res.summary(),
        "wall_s": wall,
        "device": str(args.device),
        "dtype": str(getattr(model, "dtype", "float64")),
        "chunk_size": args.chunk_size,
        "processes": 1 if env is None else env.world_size,
        "torch": torch.__version__,
        "host": platform.node(),
        "files": files,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    s = summary["result"]
    print(
        f"{args.solver} on {args.model}: {s['iterations_max']} iterations for T={args.steps} "
        f"(NFE {s['nfe_mean']:.0f}, finished={s['finished']}), {wall:.2f}s wall; wrote {out}"
    )
    _processes.finish(env)
    return 0
