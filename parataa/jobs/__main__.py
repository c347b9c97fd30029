"""Small steps the workflow runs on the driver: `python -m parataa.jobs noise|aggregate ...`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _noise(args: argparse.Namespace) -> int:
    from ..noise import draw_noise, save_noise

    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.shape and not args.model:
        raise ValueError("noise: give --shape or --model")
    if args.shape:
        shape = [int(s) for s in args.shape.split(",")]
    else:
        from ..models.registry import sample_shape

        shape = list(sample_shape(args.model, json.loads(args.options), args.model_path))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = save_noise(draw_noise(seeds, args.steps, shape), out)
    print(f"[parataa] noise {out}: seeds {seeds}, {args.steps} steps, shape {shape}, sha256 {digest[:12]}")
    return 0


def _aggregate(args: argparse.Namespace) -> int:
    from ..storage import write_aggregate
    from .verify import run_dirs as verify_run_dirs

    run_dirs: list[Path] = []
    for item in args.inputs:
        p = Path(item)
        if p.name == "manifest.json":
            run_dirs.append(p.parent)
        else:  # a job-group record: the run directories that job wrote (relative to the record's root)
            run_dirs.extend(verify_run_dirs(p))
    out = Path(args.out)
    m = write_aggregate(out, run_dirs, root=out)
    print(f"[parataa] aggregate {out}: {len(m['runs'])} runs")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m parataa.jobs")
    sub = p.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("noise", help="draw and store one noise bundle")
    n.add_argument("out")
    n.add_argument("--seeds", required=True, help="comma-separated seeds")
    n.add_argument("--steps", type=int, required=True)
    n.add_argument("--shape", default=None, help="comma-separated state shape (default: the model's)")
    n.add_argument("--model", default=None, help="model name whose state shape to use")
    n.add_argument("--options", default="{}", help="the model's options (JSON)")
    n.add_argument("--model-path", default=None, help="the model's weights folder (its config gives the shape)")
    n.set_defaults(func=_noise)
    a = sub.add_parser("aggregate", help="concatenate verified runs into one table set")
    a.add_argument("out", help="output directory")
    a.add_argument("inputs", nargs="+", help="run manifest.json files and job-group records")
    a.set_defaults(func=_aggregate)
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as e:
        print(f"python -m parataa.jobs {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
