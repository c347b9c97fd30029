"""Solver overhead per iteration against the model call it accompanies, measured side by side in one run.

Goal (issue "parataa core"): everything the solver does besides the model call (residuals, order-k sums,
Anderson algebra in float64, bookkeeping, logging) costs <= 5% of the model call at W = 100 with 4x32x32
states (DiT-XL/2's latent at 256 px). The model here is a DiT-XL/2-shaped transformer with random weights in
fp16, guided with the conditional and unconditional halves in one batch of 2W rows: the cost of a real
iteration. Convergence is switched off (tolerance 1e-30) so every iteration evaluates the full window.

    python benchmarks/solver_overhead.py --device cuda --out results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import xl_denoiser  # noqa: E402

from parataa import dit_schedule, draw_noise
from parataa.solvers import preset, solve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--small", action="store_true", help="a 2-layer transformer (for a CPU smoke run)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = xl_denoiser(device, [207], small=args.small)
    T = args.window
    sched = dit_schedule(T)
    noise = draw_noise([0], T, (4, 32, 32)).to(device)
    # warm-up: kernels, cuBLAS handles, allocator
    solve(model, sched, noise, preset("taa", max_iters=2, abs_tol=1e-30, rel_tol=1e-30))
    rows = []
    for name, kw in [("fp+", {}), ("aa", {}), ("taa", {}), ("taa", {"history": 3}), ("picard", {"picard_tol": 0.0})]:
        cfg_s = preset(name, max_iters=args.iters, abs_tol=1e-30, rel_tol=1e-30, **kw)
        t0 = time.perf_counter()
        res = solve(model, sched, noise, cfg_s)
        wall = time.perf_counter() - t0
        t = res.timings
        model_ms = statistics.median(t.model_s) * 1e3
        solver_ms = statistics.median(t.solver_s) * 1e3
        rows.append({
            "solver": name + (f"(m={kw['history']})" if "history" in kw else ""),
            "iterations": len(t), "rows_per_iter": int(t.rows.iloc[0]),
            "model_ms_per_iter": model_ms, "solver_ms_per_iter": solver_ms,
            "overhead_ratio": solver_ms / model_ms, "wall_s": wall,
        })
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    meta = {"device": dev_name, "torch": torch.__version__, "window": T, "state": [4, 32, 32],
            "model": "DiT-XL/2-shaped, random weights" if not args.small else "2-layer DiT, random weights",
            "dtype": str(dtype), "cfg_rows_per_call": 2 * T}
    print(f"device: {dev_name}  model: {meta['model']} ({dtype})  W={T}  state 4x32x32")
    print(f"{'solver':<12}{'model ms/it':>12}{'solver ms/it':>14}{'solver/model':>14}")
    for r in rows:
        print(f"{r['solver']:<12}{r['model_ms_per_iter']:>12.2f}{r['solver_ms_per_iter']:>14.2f}"
              f"{100 * r['overhead_ratio']:>13.1f}%")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"setting": meta, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
