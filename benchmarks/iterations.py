"""Iterations to the sequential image: every solver, splitting, history, initialisation and stopping rule on the
embedded models, measured with the rule-free yardstick (docs/METHOD.md section 9).

For each cell (model x sampler x steps) the script solves the sequential baseline of `--seeds` seeds, then every
variant with a `FidelityRecorder` (x0 of every iteration against the sequential x0), and writes one JSON line per
(cell, variant) with per-seed numbers: iterations at the stop, PSNR at the stop, iterations to 30/40/50 dB, NFE,
the per-iteration PSNR curve, and the solver's own wall time. "nostop" variants disable the stopping rule
(abs_tol 1e-7, rel_tol 0, as when the yardstick was first measured) so the curve runs to T.

    python benchmarks/iterations.py --out iterations.jsonl                 # the full study (GPU: minutes)
    python benchmarks/iterations.py --out it.jsonl --models tiny-dit --samplers ddim --steps 25 --seeds 2 \\
        --groups core --device cpu                                         # a CPU smoke run
    python benchmarks/iterations_report.py iterations.jsonl                # tables (Markdown) from the lines

Groups: "core" (every cell), "explore" (100-step cells: history, ridge, initialisation, history restart,
standard AA on the Euler splitting), "windows" (100-step cells: W in 8, 16, 32, 50 for the window sizing of
benchmarks/RESULTS.md), "freeze" (every cell: the taa-euler preset with freeze_frac 0.02 ... 0.25 beside the
preset and Picard; `nfe_to_40` counts the states evaluated up to the first iteration at 40 dB).

The tuning sweep of freeze_frac (cfg 5, seeds 0-7, the 2-core CPU, one thread):

    python benchmarks/iterations.py --out benchmarks/results/freeze_tuning.jsonl --groups freeze --device cpu \
        --models tiny-dit,tiny-sd --samplers ddim,ddpm --steps 25,50,100
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from parataa import draw_noise
from parataa.fidelity import FidelityRecorder, psnr_db
from parataa.solvers import preset, solve
from parataa.solvers._iteration import UpdateInput, anderson_step, push_history
from parataa.solvers._window import run_window_solver
from parataa.solvers.taa import taa_coefficients

NOSTOP = {"stop": "step", "abs_tol": 1e-7, "rel_tol": 0.0}
SIGMA = {"abs_tol": 1e-12, "rel_tol": 1e-3, "tol_scale": "sigma"}  # the paper's text: rho_t <= tau * sigma_t
EULER = {"splitting": "euler", "init": "copy"}

# label -> (preset, options, special); special is None, "jump" (init from the one-step prediction of x_T),
# "coarse<c>" (init from a c-step sequential DDIM run) or "restart" (TAA whose steps drop their history when their
# residual grows)
CORE: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "fp+": ("fp+", {}, None),
    "fp+ nostop": ("fp+", NOSTOP, None),
    "fp+ sum": ("fp+", {"stop": "sum"}, None),
    "aa": ("aa", {}, None),
    "aa sum": ("aa", {"stop": "sum"}, None),
    "taa (paper)": ("taa", {}, None),
    "taa (paper) sigma-rule": ("taa", SIGMA, None),
    "taa (paper) sum": ("taa", {"stop": "sum"}, None),
    "taa (paper) nostop": ("taa", NOSTOP, None),
    "taa m3 copy": ("taa", {"history": 3, "init": "copy"}, None),
    "taa m3 copy nostop": ("taa", {"history": 3, "init": "copy", **NOSTOP}, None),
    "picard": ("picard", {}, None),
    "picard ptol0.05": ("picard", {"picard_tol": 0.05}, None),
    "picard nostop": ("picard", {"picard_tol": 0.0}, None),
    "fp+ euler copy": ("fp+", EULER, None),
    "fp+ euler copy sum": ("fp+", {**EULER, "stop": "sum"}, None),
    "taa-euler m2": ("taa-euler", {"history": 2}, None),
    "taa-euler m3": ("taa-euler", {"history": 3}, None),
    "taa-euler m3 nostop": ("taa-euler", {"history": 3, **NOSTOP}, None),
    "taa-euler m4": ("taa-euler", {"history": 4}, None),
    "taa-euler": ("taa-euler", {}, None),
    "taa-euler nostop": ("taa-euler", NOSTOP, None),
    "taa-euler sum0.02": ("taa-euler", {"sum_tol": 0.02}, None),
    "taa-euler sum0.08": ("taa-euler", {"sum_tol": 0.08}, None),
    "taa-euler flat-rule": ("taa-euler", {"stop": "step"}, None),
}
EXPLORE: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "taa-euler m6": ("taa-euler", {"history": 6}, None),
    "taa-euler gaussian": ("taa-euler", {"init": "gaussian"}, None),
    "taa-euler jump-init": ("taa-euler", {"init": "trajectory"}, "jump"),
    "taa-euler ridge1e-6": ("taa-euler", {"ridge": 1e-6}, None),
    "taa-euler ridge1e-4": ("taa-euler", {"ridge": 1e-4}, None),
    "taa-euler ridge1e-2": ("taa-euler", {"ridge": 1e-2}, None),
    "taa-euler restart": ("taa-euler", {}, "restart"),
    "taa-euler m3 restart": ("taa-euler", {"history": 3}, "restart"),
    "aa euler m5": ("aa", {**EULER, "history": 5, "stop": "sum"}, None),
    "taa-euler k20": ("taa-euler", {"order": 20}, None),
    "taa-euler coarse2-init": ("taa-euler", {"init": "trajectory"}, "coarse2"),
    "taa-euler coarse5-init": ("taa-euler", {"init": "trajectory"}, "coarse5"),
}
WINDOWS: dict[str, tuple[str, dict[str, Any], str | None]] = {
    **{f"taa-euler W{w}": ("taa-euler", {"window": w}, None) for w in (8, 16, 32, 50)},
    **{f"picard W{w}": ("picard", {"window": w}, None) for w in (8, 16, 32, 50)},
}
# freezing the converged prefix under the summed rule (docs/METHOD.md section 9), beside its unfrozen preset and Picard
FREEZE: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "taa-euler": ("taa-euler", {}, None),
    "picard": ("picard", {}, None),
    **{f"taa-euler freeze{c:g}": ("taa-euler", {"freeze_frac": c}, None) for c in (0.02, 0.05, 0.1, 0.25)},
}
GROUPS = {"core": CORE, "explore": EXPLORE, "windows": WINDOWS, "freeze": FREEZE}
CONDITIONS = {
    "tiny-dit": list(range(10)),
    "tiny-sd": [f"a handwritten digit {w}" for w in "zero one two three four five six seven eight nine".split()],
}


def taa_restart_update(config):
    """TAA whose steps drop all but their newest iterate when their order-k residual grew since the last
    iteration (a restart as SciPy's Anderson solvers do on a bad step)."""
    m = config.history

    def update(inp: UpdateInput):
        dx, df, count = push_history(inp, m)
        f_new = inp.resid.norm(dim=-1)
        f_prev = (inp.resid - df[:, :, 0]).norm(dim=-1)
        grew = inp.valid & (count >= 2) & (f_new > f_prev)
        if bool(grew.any()):
            inp.history.reset(grew)
            keep = (~grew)[..., None, None].to(dx.dtype)
            dx, df, count = dx * keep, df * keep, torch.where(grew, torch.ones_like(count), count)
        gamma, ok = taa_coefficients((dx, df), inp.resid, inp.valid, config.ridge)
        return anderson_step(inp, dx, df, count, gamma, ok)

    return update


def jump_init(model, sched, noise) -> torch.Tensor:
    """Every state from the one-step prediction of x_T: x_t = sqrt(A_t) x0_hat + sqrt(1 - A_t) eps(x_T).
    Costs one model call, counted as one extra iteration."""
    n, T = noise.num_samples, sched.num_steps
    x_T = noise.x_T.double()
    tau = sched.timesteps[T - 1].expand(n).to(x_T.device)
    eps = model(x_T, tau, torch.arange(n, device=x_T.device)).double()
    a_T = sched.alpha_in[T - 1]
    x0 = (x_T - (1 - a_T).sqrt() * eps) / a_T.sqrt()
    levels = torch.cat([sched.alpha_out, sched.alpha_in[-1:]]).to(x_T.device)  # A_0 .. A_T
    shape = (1, T + 1) + (1,) * (x_T.dim() - 1)
    traj = levels.sqrt().view(shape) * x0[:, None] + (1 - levels).sqrt().view(shape) * eps[:, None]
    traj[:, T] = x_T
    return traj


def coarse_init(model, spec, sched, noise, c: int) -> torch.Tensor:
    """Every state from a c-step sequential DDIM run from the same x_T: a state at noise level A_t lies on the DDIM
    line of the coarse step whose levels bracket A_t, x_t = sqrt(A_t) x0_s + sqrt(1 - A_t) eps_s, with x0_s and
    eps_s of that step recovered from its two ends (exact for DDIM: both ends lie on that line). Costs c sequential
    model calls, counted as c extra iterations."""
    dev = noise.x_T.device
    coarse = spec(c, sampler="ddim")
    y = solve(model, coarse, draw_noise(list(noise.seeds), c, noise.sample_shape).to(dev),
              preset("sequential")).trajectory.double()  # [N, c + 1, ...], index 0 the final state; same x_T
    a_c = torch.cat([coarse.alpha_out, coarse.alpha_in[-1:]]).to(dev, torch.float64)  # A_0 .. A_c, decreasing
    a_f = torch.cat([sched.alpha_out, sched.alpha_in[-1:]]).to(dev, torch.float64)  # A_0 .. A_T
    # the coarse step s -> s + 1 whose levels bracket each fine level (outside the coarse range: the nearest step)
    s = torch.clamp((a_c[None, :] >= a_f[:, None]).sum(dim=1) - 1, 0, c - 1)
    lo, hi = a_c[s], a_c[s + 1]  # the step's less and more noisy levels
    det = lo.sqrt() * (1 - hi).sqrt() - hi.sqrt() * (1 - lo).sqrt()
    shape = (1, -1) + (1,) * (y.dim() - 2)
    y_lo, y_hi = y[:, s], y[:, s + 1]
    x0 = ((1 - hi).sqrt().view(shape) * y_lo - (1 - lo).sqrt().view(shape) * y_hi) / det.view(shape)
    eps = (lo.sqrt().view(shape) * y_hi - hi.sqrt().view(shape) * y_lo) / det.view(shape)
    traj = a_f.sqrt().view(shape) * x0 + (1 - a_f).sqrt().view(shape) * eps
    traj[:, -1] = noise.x_T.double()
    return traj


def run_variant(model, sched, noise, ref_x0, name, options, special, spec=None):
    cfg = preset(name, **options)
    fidelity = FidelityRecorder(ref_x0)
    rsum: list[list[float]] = []  # per iteration, per sample: frozen residual + the window's rho sum
    nfe_it: list[list[int]] = []  # per iteration, per sample: states evaluated so far

    def rec(info) -> None:
        fidelity(info)
        nfe_it.append(info.state.nfe.tolist())
        total = info.state.spent if info.state.spent is not None else torch.zeros_like(info.frozen, dtype=torch.float64)
        rsum.append((total + torch.nan_to_num(info.rho, nan=0.0).sum(dim=1)).tolist())

    extra = 0
    t0 = time.perf_counter()
    if special == "restart":
        res = run_window_solver(model, sched, noise, cfg, taa_restart_update(cfg), callback=rec)
    elif special and special.startswith("coarse"):
        extra = int(special.removeprefix("coarse"))
        res = solve(model, sched, noise, cfg, init=coarse_init(model, spec, sched, noise, extra), callback=rec)
    elif special == "jump":
        res = solve(model, sched, noise, cfg, init=jump_init(model, sched, noise), callback=rec)
        extra = 1
    else:
        res = solve(model, sched, noise, cfg, callback=rec)
    if noise.x_T.device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    n = noise.num_samples
    rows = fidelity.rows
    iters = int(rows["iteration"].max()) if len(rows["iteration"]) else 0
    curve = [[math.nan] * iters for _ in range(n)]
    for s, it, p in zip(rows["sample"], rows["iteration"], rows["psnr_db"], strict=True):
        curve[int(s)][int(it) - 1] = float(p)
    raw = {db: fidelity.iterations_to(db) for db in (30, 40, 50)}
    to = {db: [v + extra if not math.isnan(v) else None for v in raw[db]] for db in (30, 40, 50)}
    # states evaluated up to the first iteration at N dB (the solver's own; an init's extra model calls not counted)
    nfe_to = {db: [nfe_it[int(v) - 1][s] if not math.isnan(v) else None for s, v in enumerate(raw[db])]
              for db in (30, 40, 50)}
    stop_psnr = psnr_db(res.x0, ref_x0).tolist()
    return {
        "config": cfg.to_dict(),
        "special": special,
        "iterations": [int(v) + extra for v in res.iterations.tolist()],
        "finished": [bool(v) for v in res.finished.tolist()],
        "nfe": [int(v) for v in res.nfe.tolist()],
        "psnr_stop": [p if math.isfinite(p) else 999.0 for p in stop_psnr],
        "to_30": to[30],
        "to_40": to[40],
        "to_50": to[50],
        "nfe_to_40": nfe_to[40],
        "nfe_to_50": nfe_to[50],
        "curve": [[round(p, 3) if math.isfinite(p) else 999.0 for p in c] for c in curve],
        "rsum": [[float(f"{it[s]:.4g}") for it in rsum] for s in range(n)],
        "wall_s": wall,
        "model_s": float(res.timings["model_s"].sum()),
        "solver_s": float(res.timings["solver_s"].sum()),
    }


def main(argv: list[str] | None = None) -> int:
    from parataa.models.registry import build_denoiser

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", default="tiny-dit,tiny-sd")
    p.add_argument("--samplers", default="ddim,ddpm")
    p.add_argument("--steps", default="25,50,100")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--cfg-scale", type=float, default=5.0)
    p.add_argument("--groups", default="core,explore,windows")
    p.add_argument("--only", default=None, help="comma-separated variant labels (default: all of the groups)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    seeds = list(range(args.seeds))
    groups = args.groups.split(",")
    only = set(args.only.split(",")) if args.only else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    with args.out.open("w") as fh:
        for model_name in args.models.split(","):
            conds = CONDITIONS[model_name]
            den, spec = build_denoiser(
                model_name, [conds[s % len(conds)] for s in seeds], cfg_scale=args.cfg_scale, device=device
            )
            for sampler in args.samplers.split(","):
                for steps in map(int, args.steps.split(",")):
                    sched = spec(steps, sampler=sampler)
                    noise = draw_noise(seeds, steps, spec.sample_shape).to(device)
                    ref = solve(den, sched, noise, preset("sequential"))
                    variants: dict[str, tuple[str, dict[str, Any], str | None]] = dict(CORE) if "core" in groups else {}
                    if "freeze" in groups:
                        variants.update(FREEZE)
                    for g in ("explore", "windows"):
                        if g in groups and steps == 100:
                            variants.update(GROUPS[g])
                    for label, (name, options, special) in variants.items():
                        if only is not None and label not in only:
                            continue
                        rec = run_variant(den, sched, noise, ref.x0, name, options, special, spec)
                        rec.update(
                            model=model_name,
                            sampler=sampler,
                            steps=steps,
                            variant=label,
                            seeds=seeds,
                            device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                        )
                        fh.write(json.dumps(rec) + "\n")
                        fh.flush()
                        to40 = [v for v in rec["to_40"] if v is not None]
                        nfe40 = [v for v in rec["nfe_to_40"] if v is not None]
                        stop = sum(rec["iterations"]) / len(seeds)
                        print(
                            f"{model_name} {sampler}-{steps} {label:28s} stop {stop:6.2f}"
                            f" to40 {sum(to40) / max(len(to40), 1):6.2f} ({len(to40)}/{len(seeds)})"
                            f" nfe40 {sum(nfe40) / max(len(nfe40), 1):6.1f}"
                            f" psnr_min {min(rec['psnr_stop']):6.1f} [{time.perf_counter() - t_all:6.0f} s]",
                            flush=True,
                        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
