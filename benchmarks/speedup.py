"""Wall-clock speedups at matched fidelity, measured side by side in one run (issue "Performance").

Sections (each writes one JSON file; `benchmarks/report.py` turns them into RESULTS.md and a figure):

  single   one GPU. (a) the embedded tiny-dit (trained), DDIM-100, cfg 5, one sample per solve: sequential
           (eager and CUDA-graph replay) against FP+, AA, TAA and ParaDiGMS-Picard over a tolerance sweep, with
           iterations, wall-clock per sample and distance to the sequential sample; (b) a DiT-XL/2-shaped model
           (random weights, fp16: only the cost of a call is meaningful) timed for a sequential step (eager and
           graphed) and for every window size the tiny-dit solves went through, plus the solver overhead.
  world    under torchrun: per-iteration time of the DiT-XL/2-shaped model at W = 100 with the window spread
           over the ranks (parataa.distributed.DistributedDenoiser), and peak memory per GPU.

    python benchmarks/speedup.py single --out single.json
    torchrun --nproc_per_node 2 benchmarks/speedup.py world --out world2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import sync, time_call, xl_denoiser

from parataa import dit_schedule, draw_noise
from parataa.cuda_graphs import GraphedDenoiser
from parataa.solvers import preset, solve

# label -> (preset, extra options, tolerances). "-copy": every new state starts as a copy of the one above it
# (the authors' code and ParaDiGMS); the others start from independent Gaussian states (the paper).
SWEEPS = {
    "fp+": ("fp+", {}, [3e-3, 1e-3, 3e-4]),
    "aa": ("aa", {}, [3e-3, 1e-3, 3e-4]),
    "taa": ("taa", {}, [3e-3, 1e-3, 3e-4, 1e-4]),
    "fp+-copy": ("fp+", {"init": "copy"}, [1e-3]),
    "taa-copy": ("taa", {"init": "copy"}, [3e-3, 1e-3, 3e-4, 1e-4]),
    "taa-m3-copy": ("taa", {"init": "copy", "history": 3}, [1e-3, 3e-4]),
    "picard": ("picard", {}, [0.3, 0.1, 0.03, 0.01]),
    # the same with the model calls replayed from CUDA graphs (rows padded to powers of two)
    "taa-graphed": ("taa", {}, [1e-3]),
    "taa-copy-graphed": ("taa", {"init": "copy"}, [1e-3]),
    "picard-graphed": ("picard", {}, [0.1]),
}


def run_single(args: argparse.Namespace) -> dict[str, Any]:
    from parataa.models.registry import build_denoiser

    device = torch.device(args.device)
    T = args.steps
    seeds = list(range(args.samples))
    labels = [s % 10 for s in seeds]
    tiny, spec = build_denoiser("tiny-dit", labels, cfg_scale=5.0, device=device,
                                dtype=torch.float32 if device.type == "cuda" else None)
    sched = spec(T, sampler=args.sampler)
    noise_all = draw_noise(seeds, T, spec.sample_shape).to(device)
    graphed = GraphedDenoiser(tiny)
    bucketed = GraphedDenoiser(tiny, buckets=True)
    # warm-up (kernels, allocator, graph capture for the batch-1 shape)
    for model in (tiny, graphed):
        solve(model, sched, noise_all.select([0]), preset("sequential"))
    for name in ("taa", "picard"):  # capture the bucket graphs outside the timed solves
        solve(bucketed, sched, noise_all.select([0]), preset(name))
    out: dict[str, Any] = {"embedded": [], "xl": {}}

    def one(name: str, model, i: int, cfg) -> dict[str, Any]:
        noise = noise_all.select([i])
        sync()
        t0 = time.perf_counter()
        res = solve(model, sched, noise, cfg)
        sync()
        wall = time.perf_counter() - t0
        tm = res.timings
        return {"res": res, "wall_s": wall, "iterations": int(res.iterations[0]), "nfe": int(res.nfe[0]),
                "model_s": float(tm.model_s.sum()), "solver_s": float(tm.solver_s.sum()),
                "rows": tm.rows.tolist()}

    refs = {}
    for mode, model in (("eager", tiny), ("graphed", graphed)):
        for i in seeds:
            r = one("sequential", model, i, preset("sequential"))
            refs.setdefault(i, r["res"].x0)
            out["embedded"].append({"solver": f"sequential-{mode}", "tol": None, "seed": i, "iterations": T,
                                    "nfe": T, "wall_s": r["wall_s"], "model_s": r["model_s"],
                                    "solver_s": r["solver_s"], "err_max": 0.0, "psnr": float("inf")})
    rows_seq: dict[str, list[int]] = {}
    for name, (base, extra, tols) in SWEEPS.items():
        for tol in tols:
            kw = {"picard_tol": tol} if base == "picard" else {"abs_tol": tol, "rel_tol": tol}
            cfg = preset(base, **extra, **kw)
            for i in seeds:
                r = one(name, bucketed if name.endswith("-graphed") else tiny, i, cfg)
                x0 = r["res"].x0
                err = float((x0 - refs[i]).abs().max())
                mse = float(((x0 - refs[i]) / 2).pow(2).mean())  # images in [-1, 1] -> range 1
                psnr = float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()
                out["embedded"].append({"solver": name, "tol": tol, "seed": i, "iterations": r["iterations"],
                                        "nfe": r["nfe"], "wall_s": r["wall_s"], "model_s": r["model_s"],
                                        "solver_s": r["solver_s"], "err_max": err, "psnr": psnr})
                key = f"{name}@{tol}"
                if i == 0:
                    rows_seq[key] = r["rows"]
    out["rows_sequences"] = rows_seq
    # DiT-XL/2-shaped model: cost of each window size the embedded solves used
    xl = xl_denoiser(device, [207], small=args.small)
    shape = (4, 32, 32)
    sizes = sorted({n for seq in rows_seq.values() for n in seq} | {1, args.window})
    xl_times = {n: time_call(xl, n, shape, device) for n in sizes}
    xl_graphed = GraphedDenoiser(xl)
    seq_step_graphed = time_call(xl_graphed, 1, shape, device, repeat=20)
    seq_step_eager = time_call(xl, 1, shape, device, repeat=20)
    # solver overhead at full window on the XL state size
    xs = dit_schedule(args.window)
    nx = draw_noise([0], args.window, shape).to(device)
    over = {}
    for name in ("fp+", "aa", "taa", "picard"):
        r = solve(lambda x, t, s: torch.zeros_like(x), xs, nx,
                  preset(name, max_iters=6, abs_tol=1e-30, rel_tol=1e-30, picard_tol=0.0))
        over[name] = statistics.median(r.timings.solver_s.tolist()[1:])
    out["xl"] = {
        "call_s_by_rows": {str(k): v for k, v in xl_times.items()},
        "sequential_step_s": {"eager": seq_step_eager, "graphed": seq_step_graphed},
        "solver_overhead_s_full_window": over,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None,
    }
    return out


def run_world(args: argparse.Namespace) -> dict[str, Any]:
    from parataa.distributed import DistributedDenoiser, cleanup, init_from_env

    env = init_from_env()
    device = env.device
    inner = xl_denoiser(device, [207], small=args.small)
    model = DistributedDenoiser(inner, chunk_size=args.chunk)
    T = args.window
    sched = dit_schedule(T)
    noise = draw_noise([0], T, (4, 32, 32)).to(device)
    cfg = preset("taa", max_iters=args.iters, abs_tol=1e-30, rel_tol=1e-30)
    solve(model, sched, noise, preset("taa", max_iters=2, abs_tol=1e-30, rel_tol=1e-30))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    res = solve(model, sched, noise, cfg)
    tm = res.timings
    iters = tm.iloc[1:]  # the first iteration has history 1 only
    per_iter = [m + s + c for m, s, c in zip(iters.model_s, iters.solver_s, iters.comm_s, strict=True)]
    result = {
        "world_size": model.world_size, "chunk_size": model.chunk_size, "window": T,
        "iteration_s_median": statistics.median(per_iter),
        "model_s_median": statistics.median(iters.model_s), "solver_s_median": statistics.median(iters.solver_s),
        "comm_s_median": statistics.median(iters.comm_s),
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    gathered = [None] * model.world_size
    if model.world_size > 1:
        torch.distributed.all_gather_object(gathered, result["peak_memory_gb"])
        result["peak_memory_gb_per_rank"] = gathered
    cleanup()
    return result if env.is_main else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("section", choices=("single", "world"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--sampler", default="ddim", choices=("ddim", "ddpm"))
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=50, help="world: states per network call")
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--small", action="store_true", help="2-layer stand-in for the XL model (CPU smoke run)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    data = run_single(args) if args.section == "single" else run_world(args)
    if not data:
        return
    data["setting"] = {k: v for k, v in vars(args).items() if k != "out"}
    data["setting"]["torch"] = torch.__version__
    data["setting"]["device_name"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    with open(args.out, "w") as f:
        json.dump(data, f, indent=1, default=float)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
