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
from ..solver_config import SOLVER_NAMES
from ..solvers import solve
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
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--steps", type=int, default=100, help="sampling steps T (default 100)")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--class", dest="label", type=int, default=None, help="class label (class-conditional models)")
    cond.add_argument("--prompt", default=None, help="text prompt (text-conditional models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance scale (default: the model's)")
    add_solver_arguments(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="model dtype: float32 (default), float16, bfloat16")
    p.add_argument("--chunk-size", type=int, default=None, help="network rows per call (memory bound only)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _condition(args: argparse.Namespace, class_conditional: bool) -> Any:
    if class_conditional:
        if args.prompt is not None:
            raise ValueError(f"--prompt: model {args.model} is class-conditional; pass --class N instead")
        return 0 if args.label is None else args.label
    if args.label is not None:
        if args.model == "tiny-sd":
            return args.label  # the registry turns a digit into its training prompt
        raise ValueError(f"--class: model {args.model} is text-conditional; pass --prompt TEXT instead")
    return args.prompt if args.prompt is not None else ""


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

    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    class_conditional = is_class_conditional(args.model)
    cond = _condition(args, class_conditional)
    cfg_scale = default_cfg_scale(args.model) if args.cfg_scale is None else args.cfg_scale
    den, spec = build_denoiser(
        args.model,
        [cond],
        cfg_scale=cfg_scale,
        device=args.device,
        dtype=args.dtype,
        chunk_size=args.chunk_size,
        path=args.model_path,
    )
    sched = spec(args.steps, sampler=args.sampler)
    config = solver_config(args.solver, args)
    noise = draw_noise([args.seed], args.steps, spec["sample_shape"]).to(args.device)

    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, desc=f"{args.solver} {args.model}", unit="it")

    def progress(info: Any) -> None:
        if bar is not None:
            done = args.steps - int(info.frozen.min())
            bar.set_postfix(converged_steps=done)
            bar.update(1)

    t0 = time.perf_counter()
    try:
        res = solve(den, sched, noise, config, callback=progress)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(res.x0.cpu(), out / "x0.pt")
    files = {"x0": "x0.pt"}
    if hasattr(den, "decode"):
        from ..models.images import save_png

        img = den.decode(res.x0)[0]
        files["image"] = save_png(img, out / "sample.png", scale=max(1, 256 // img.shape[-1])).name
    files["convergence"] = _write_table(res.log, out / "convergence.parquet").name
    files["timings"] = _write_table(res.timings, out / "timings.parquet").name
    summary = {
        "model": args.model,
        "model_source": spec.get("source"),
        "condition": cond if class_conditional else getattr(den, "prompts", [cond])[0],
        "cfg_scale": cfg_scale,
        "seed": args.seed,
        "schedule": sched.describe(),
        "solver": args.solver,
        "config": config.to_dict(),
        "result": res.summary(),
        "wall_s": wall,
        "device": str(args.device),
        "dtype": str(getattr(den, "dtype", "float64")),
        "chunk_size": args.chunk_size,
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
    return 0
