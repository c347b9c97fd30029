"""The validation suite: stopping rules judged on cells that chose nothing (docs/METHOD.md section 9).

The cells come from `benchmarks/validation_cells.yaml` in parts kept apart: TUNING (the cells defaults are
and may be chosen on), VALIDATION, FRESH and FRESH2 (never used to choose anything; FRESH judges what was built
after VALIDATION had been run, FRESH2 what was built after FRESH had been run). For every cell (model x sampler x
steps x guidance x network dtype) the script solves the sequential reference in the SAME network precision, then every
solver of `--solvers`, recording per solve and iteration: x0's PSNR against that reference (the yardstick,
`parataa.fidelity.psnr_db`: data range 2 on x0 in [-1, 1]), the rule's signals (the summed residual, the RMS
change of x0 made by the iteration) and the states evaluated. One JSON line per (cell, solver);
`benchmarks/validation_report.py` makes the tables and writes them into benchmarks/RESULTS.md.

    python benchmarks/validation.py --size quick --out validation_quick.jsonl          # CPU: minutes
    python benchmarks/validation.py --size full --out validation.jsonl                 # one H100/H200
    python benchmarks/validation_report.py validation.jsonl --write benchmarks/RESULTS.md

Solvers (labels): "target<db>" is taa-euler stopped by the fidelity target (stop="target", target_db=<db>),
"target<db>-m<k>" the same with history m = k;
"taa-euler" the preset as it is (summed rule); "taa-euler freeze<c>" the preset with freeze_frac = c (its converged
prefix frozen, docs/METHOD.md section 9); "taa-euler ff<c>" (and "taa-euler nostop ff<c>") the preset with
floor_freeze = c (the prefix at the precision floor keeps its values, docs/METHOD.md section 9);
"picard" ParaDiGMS's rule; "taa-euler nostop" and "picard nostop"
run to T with the rule disabled (their curves let `validation_report.py --replay` try a rule's thresholds
offline; run them on the tuning part only: that is where thresholds may be chosen).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from parataa import draw_noise
from parataa.fidelity import psnr_db
from parataa.solvers import preset, solve

CELLS = Path(__file__).resolve().parent / "validation_cells.yaml"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the trajectory a rule sees until it stops, run to the end: whole window, top state exact, the rest updated
NOSTOP_SUM = {"stop": "sum", "sum_tol": 1e-12}
PARTS = ("tuning", "validation", "fresh", "fresh2")  # the parts of validation_cells.yaml, tuning the only choosing one


def solver_config(label: str):
    """The SolverConfig of a solver label (see the module docstring)."""
    if label.startswith("target"):
        db, _, m = label.removeprefix("target").partition("-m")
        try:
            return preset("taa-euler", stop="target", target_db=float(db), **({"history": int(m)} if m else {}))
        except ValueError as e:
            raise ValueError(f"solver label {label!r}: target<db>[-m<history>] expected, e.g. target40-m8 ({e})") from e
    if label == "taa-euler":
        return preset("taa-euler")
    if label.startswith("taa-euler freeze"):
        try:
            return preset("taa-euler", freeze_frac=float(label.removeprefix("taa-euler freeze")))
        except ValueError as e:
            raise ValueError(f"solver label {label!r}: taa-euler freeze<fraction> expected, e.g. taa-euler freeze0.05 "
                             f"({e})") from e
    if label == "taa-euler nostop":
        return preset("taa-euler", **NOSTOP_SUM)
    if label.startswith(("taa-euler ff", "taa-euler nostop ff")):
        base, _, c = label.rpartition(" ff")
        try:
            return preset("taa-euler", floor_freeze=float(c), **(NOSTOP_SUM if base.endswith("nostop") else {}))
        except ValueError as e:
            raise ValueError(f"solver label {label!r}: taa-euler [nostop ]ff<factor> expected, e.g. taa-euler ff2 "
                             f"({e})") from e
    if label == "picard":
        return preset("picard")
    if label == "picard nostop":
        return preset("picard", picard_tol=0.0)
    raise ValueError(f"solver label {label!r} is not one of target<db>[-m<history>], taa-euler, taa-euler freeze<c>, "
                     "taa-euler [nostop ]ff<c>, taa-euler nostop, picard, picard nostop; pass those in --solvers")


def expand(part: str, groups: list[dict[str, Any]], size: str) -> list[dict[str, Any]]:
    """The cells of one part at one size: one dict per model x sampler x steps x cfg x dtype."""
    cells = []
    for g in groups:
        if size == "quick" and not g.get("quick", False):
            continue
        pick = {k: g.get(f"quick_{k}", g[k]) if size == "quick" else g[k] for k in ("steps", "cfg", "dtypes")}
        seeds = g["seeds"][: g.get("quick_seeds", len(g["seeds"]))] if size == "quick" else g["seeds"]
        for model, sampler, steps, cfg, dtype in itertools.product(
            g["models"], g["samplers"], pick["steps"], pick["cfg"], pick["dtypes"]
        ):
            conds = g["conditions"][model]
            cells.append(dict(part=part, model=model, sampler=sampler, steps=int(steps), cfg=float(cfg),
                              dtype=dtype, seeds=list(seeds), conditions=[conds[i % len(conds)] for i in
                                                                          range(len(seeds))]))
    return cells


class Signals:
    """Solver callback: per iteration and sample, x0's PSNR against the reference, the RMS change of x0 made by
    the iteration, the summed residual of the iterate before the update (accepted before + window) and the states
    evaluated. A sample's rows end with the
    iteration that finished it."""

    def __init__(self, reference_x0: torch.Tensor, start_x0: torch.Tensor) -> None:
        self.ref = reference_x0.double()
        self.prev = start_x0.double().reshape(start_x0.shape[0], -1).clone()
        n = reference_x0.shape[0]
        self.spent = torch.zeros(n, dtype=torch.float64)
        self.rows: dict[str, list[list[float]]] = {k: [[] for _ in range(n)] for k in ("psnr", "dx0", "rsum", "states")}

    def __call__(self, info) -> None:
        x0 = info.trajectory[:, 0].reshape(info.trajectory.shape[0], -1)
        width = (info.window_hi - info.window_lo).cpu()
        psnr = psnr_db(x0, self.ref.to(x0.device).reshape_as(x0)).cpu()
        dx0 = (x0 - self.prev.to(x0.device)).pow(2).mean(dim=1).sqrt().cpu()
        spent = info.state.spent if info.state.spent is not None else torch.zeros_like(dx0, dtype=torch.float64)
        # the iterate before the update: what was accepted before this iteration plus the window's rho (the state's
        # spent already holds this iteration's accepted rho, the whole window's at the stop)
        rsum = self.spent + torch.nan_to_num(info.rho, nan=0.0).sum(dim=1).cpu()
        self.spent = spent.cpu().clone()
        for s in range(x0.shape[0]):
            if int(width[s]) > 0:
                self.rows["psnr"][s].append(round(min(float(psnr[s]), 999.0), 3))
                self.rows["dx0"][s].append(float(f"{float(dx0[s]):.4g}"))
                self.rows["rsum"][s].append(float(f"{float(rsum[s]):.4g}"))
                self.rows["states"][s].append(int(width[s]))
        self.prev = x0.detach().clone()


class RoundingJitter:
    """The same network with its input moved by one rounding of the network dtype: x (1 + u xi), u the dtype's
    unit roundoff, xi a fixed standard normal draw per call. Sequential sampling through it differs from the
    reference only by rounding-sized changes at every step, as a parallel solve's iterate at convergence does (its
    network sees the same states in other batches and orders); `yardstick_floor` measures what that costs x0."""

    def __init__(self, model: Any, roundoff: float, seed: int = 0) -> None:
        self.model, self.roundoff = model, roundoff
        self.gen = torch.Generator().manual_seed(seed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        xi = torch.randn(x.shape, generator=self.gen, dtype=torch.float64).to(x.device, x.dtype)
        return self.model(x * (1 + self.roundoff * xi), timesteps, samples)


def yardstick_floor(den: Any, sched: Any, noise: Any, ref_x0: torch.Tensor, dtype: torch.dtype) -> list[float]:
    """Per seed, the PSNR of x0 between the sequential solve and the same solve through `RoundingJitter`: the
    fidelity to the sequential x0 that rounding alone leaves, below which no solver's x0 can be told from it
    (999 where the two are identical)."""
    jittered = solve(RoundingJitter(den, torch.finfo(dtype).eps / 2), sched, noise, preset("sequential"))
    return [min(float(p), 999.0) for p in psnr_db(jittered.x0, ref_x0).tolist()]


def run_cell(cell: dict[str, Any], solvers: list[str], device: torch.device, fh) -> None:
    from parataa.models.registry import build_denoiser

    den, spec = build_denoiser(cell["model"], cell["conditions"], cfg_scale=cell["cfg"], device=device,
                               dtype=DTYPES[cell["dtype"]])
    sched = spec(cell["steps"], sampler=cell["sampler"])
    noise = draw_noise(cell["seeds"], cell["steps"], spec.sample_shape).to(device)
    ref = solve(den, sched, noise, preset("sequential"))
    floor = yardstick_floor(den, sched, noise, ref.x0, DTYPES[cell["dtype"]])
    for label in solvers:
        cfg = solver_config(label)
        rec = Signals(ref.x0, noise.x_T)
        t0 = time.perf_counter()
        res = solve(den, sched, noise, cfg, callback=rec)
        wall = time.perf_counter() - t0
        line = dict(cell, solver=label, config=cfg.to_dict(),
                    iterations=[int(v) for v in res.iterations.tolist()],
                    finished=[bool(v) for v in res.finished.tolist()],
                    nfe=[int(v) for v in res.nfe.tolist()],
                    psnr_stop=[min(float(p), 999.0) for p in psnr_db(res.x0, ref.x0).tolist()],
                    floor_db=floor, **rec.rows, wall_s=wall,
                    device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
        fh.write(json.dumps(line) + "\n")
        fh.flush()
        print(f"{cell['part']:10s} {cell['model']} {cell['sampler']}-{cell['steps']} cfg {cell['cfg']} "
              f"{cell['dtype']:8s} {label:18s} stop {line['iterations']} psnr_min {min(line['psnr_stop']):6.1f} "
              f"(floor min {min(floor):6.1f}) "
              f"[{wall:5.1f} s]", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", choices=("quick", "full"), default="quick")
    p.add_argument("--parts", default="tuning,validation", help="comma-separated: " + ", ".join(PARTS))
    p.add_argument("--solvers", default="target40,target40-m8,taa-euler,picard")
    p.add_argument("--tuning-solvers", default=None,
                   help="solvers for the tuning part (default: --solvers plus the two nostop runs)")
    p.add_argument("--cells", type=Path, default=CELLS)
    p.add_argument("--models", default=None, help="comma-separated: only these models")
    p.add_argument("--samplers", default=None, help="comma-separated: only these samplers")
    p.add_argument("--dtypes", default=None, help="comma-separated: only these network dtypes")
    p.add_argument("--steps", default=None, help="comma-separated: only these step counts")
    p.add_argument("--max-seeds", type=int, default=None, help="keep at most this many seeds of each cell")
    p.add_argument("--list", action="store_true", help="print the cells and their solves, run nothing")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    spec = yaml.safe_load(args.cells.read_text())
    solvers = args.solvers.split(",")
    tuning_solvers = (args.tuning_solvers.split(",") if args.tuning_solvers
                      else solvers + ["taa-euler nostop", "picard nostop"])
    parts = args.parts.split(",")
    judged = [p for p in parts if p != "tuning"]
    for label in set((solvers if judged else []) + (tuning_solvers if "tuning" in parts else [])):
        solver_config(label)  # refuse an unknown label before any model is built
    device = torch.device(args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    with args.out.open("w") as fh:
        for part in parts:
            if part not in PARTS:
                raise SystemExit(f"--parts: {part!r} is not one of {', '.join(PARTS)}")
            for cell in expand(part, spec[part], args.size):
                if args.models and cell["model"] not in args.models.split(","):
                    continue
                if args.samplers and cell["sampler"] not in args.samplers.split(","):
                    continue
                if args.dtypes and cell["dtype"] not in args.dtypes.split(","):
                    continue
                if args.steps and str(cell["steps"]) not in args.steps.split(","):
                    continue
                if args.max_seeds:
                    k = args.max_seeds
                    cell["seeds"], cell["conditions"] = cell["seeds"][:k], cell["conditions"][:k]
                if cell["model"] == "tiny-sd" and cell["steps"] > 999:
                    print(f"skip tiny-sd at {cell['steps']} steps: its spacing allows at most 999", flush=True)
                    continue
                labels = tuning_solvers if part == "tuning" else solvers
                if args.list:
                    print(f"{part:10s} {cell['model']} {cell['sampler']}-{cell['steps']} cfg {cell['cfg']:g} "
                          f"{cell['dtype']} seeds {cell['seeds']}: {', '.join(labels)}")
                    continue
                run_cell(cell, labels, device, fh)
    print(f"done in {time.perf_counter() - t_all:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
