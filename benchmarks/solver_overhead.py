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
import time

import torch

from parataa import dit_schedule, draw_noise
from parataa.solvers import preset, solve

DIT_XL_2 = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
    sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
    norm_elementwise_affine=False, activation_fn="gelu-approximate", attention_bias=True,
)


class GuidedTransformer:
    """Denoiser over a class-conditional DiT: 2B rows per call (conditional, then null class), guided eps."""

    def __init__(self, net: torch.nn.Module, labels: list[int], null: int, scale: float, dtype: torch.dtype):
        self.net, self.null, self.scale, self.dtype = net, null, scale, dtype
        self.labels = torch.tensor(labels)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        y = self.labels.to(x.device)[samples]
        xx = torch.cat([x, x]).to(self.dtype)
        tt = torch.cat([timesteps, timesteps]).to(self.dtype)
        yy = torch.cat([y, torch.full_like(y, self.null)])
        out = self.net(xx, timestep=tt, class_labels=yy).sample[:, : x.shape[1]].double()
        cond, uncond = out[:b], out[b:]
        return uncond + self.scale * (cond - uncond)


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
    cfg = dict(DIT_XL_2, num_layers=2, num_attention_heads=4) if args.small else DIT_XL_2
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    net = DiTTransformer2DModel(**cfg).to(device, dtype).eval()
    model = GuidedTransformer(net, [207], 1000, 5.0, dtype)
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
