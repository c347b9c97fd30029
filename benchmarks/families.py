"""The goals of the two sampler families beyond the paper (docs/METHOD.md section 12), measured with the rule-free
yardstick of `benchmarks/iterations.py`: iterations until x_0 is within 40 dB of the sequential x_0, 8 seeds.

Cells: DPM-Solver++(2M) at 25 steps on tiny-dit and tiny-sd (its two-output step rule, on the eps model itself),
flow-Euler at 50 steps on tiny-flow. Goals: DPM-Solver++(2M) within 8 iterations for
the best TAA setting and at least 1.5x fewer than Picard; flow-Euler at most 10 iterations and at least 1.5x fewer
than Picard.

    python benchmarks/families.py --out families.jsonl                       # the goals (GPU: about a minute)
    python benchmarks/families.py --out f.jsonl --cells tiny-dit:dpmpp-2m:6 --seeds 2 --device cpu \\
        --variants "taa (paper),picard"                                      # a CPU smoke run
    python benchmarks/families.py --report families.jsonl                     # the goals' table (Markdown)

Each JSON line is `iterations.run_variant`'s record plus model, sampler, steps, variant, seeds and device.
`--flow-path DIR` loads tiny-flow from a trained folder other than the embedded one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from iterations import CORE, run_variant  # noqa: E402

from parataa import draw_noise  # noqa: E402
from parataa.solvers import preset, solve  # noqa: E402

CELLS = "tiny-dit:dpmpp-2m:25,tiny-sd:dpmpp-2m:25,tiny-flow:flow-euler:50"
VARIANTS = [
    "fp+", "aa", "taa (paper)", "taa m3 copy", "taa-euler", "taa-euler m2", "taa-euler m4",
    "fp+ euler copy", "picard", "picard ptol0.05",
    "taa (paper) nostop", "taa-euler nostop", "picard nostop",  # the curve to T: every seed reaches 40 dB
]  # fmt: skip
CONDITIONS = {
    "tiny-dit": list(range(10)),
    "tiny-flow": list(range(10)),
    "tiny-sd": [f"a handwritten digit {w}" for w in "zero one two three four five six seven eight nine".split()],
}
GOALS = {"dpmpp-2m": 8, "flow-euler": 10}  # iterations to 40 dB of the best TAA setting


def measure(args: argparse.Namespace) -> None:
    from parataa.models.registry import build_denoiser

    device = torch.device(args.device)
    seeds = list(range(args.seeds))
    variants = args.variants.split(",") if args.variants else VARIANTS
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    with args.out.open("w") as fh:
        for cell in args.cells.split(","):
            model_name, sampler, steps_s = cell.split(":")
            steps, conds = int(steps_s), CONDITIONS[model_name]
            path = args.flow_path if model_name == "tiny-flow" else None
            den, spec = build_denoiser(model_name, [conds[s % len(conds)] for s in seeds], cfg_scale=args.cfg_scale,
                                       device=device, path=path)
            noise = draw_noise(seeds, steps, spec.sample_shape).to(device)
            sched = spec(steps, sampler=sampler)
            ref = solve(den, sched, noise, preset("sequential")).x0
            for label in variants:
                name, options, special = CORE[label]
                rec = run_variant(den, sched, noise, ref, name, options, special, spec)
                dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
                rec.update(model=model_name, sampler=sampler, steps=steps, variant=label, seeds=seeds, device=dev)
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                to40 = [v for v in rec["to_40"] if v is not None]
                print(f"{model_name} {sampler}-{steps} {label:20s} stop {sum(rec['iterations']) / len(seeds):6.2f}"
                      f" to40 {sum(to40) / max(len(to40), 1):6.2f} ({len(to40)}/{len(seeds)})"
                      f" [{time.perf_counter() - t_all:5.0f} s]", flush=True)


def report(path: Path) -> str:
    """The goals' table: per cell, mean iterations to 40 dB of every variant (a seed whose stopping rule ended
    below 40 dB counts as the step count T; the "nostop" variants run to T, so there every seed gets there), the
    best TAA setting against Picard's best, and whether each goal is met."""
    cells: dict[tuple[str, str, int], dict[str, float]] = {}
    devices = set()
    for line in path.read_text().splitlines():
        r = json.loads(line)
        to40 = [r["steps"] if v is None else v for v in r["to_40"]]
        cells.setdefault((r["model"], r["sampler"], r["steps"]), {})[r["variant"]] = sum(to40) / len(to40)
        devices.add(r["device"])
    out = [f"Iterations to 40 dB of the sequential x_0 (mean over seeds; device: {', '.join(sorted(devices))})", "",
           "| cell | best TAA (setting) | Picard (best setting) | ratio | goal | met |", "|---|---|---|---|---|---|"]
    for (model, sampler, steps), v in cells.items():
        taa = {k: x for k, x in v.items() if k.startswith("taa")}
        pic = {k: x for k, x in v.items() if k.startswith("picard")}
        if not taa or not pic:
            continue
        bt, bp = min(taa, key=taa.get), min(pic, key=pic.get)
        ratio = pic[bp] / taa[bt]
        goal = GOALS.get(sampler, steps)
        met = taa[bt] <= goal and ratio >= 1.5
        out.append(f"| {model} {sampler}-{steps} | {taa[bt]:.2f} ({bt}) | {pic[bp]:.2f} ({bp}) | {ratio:.2f}x |"
                   f" <= {goal} and >= 1.5x | {'yes' if met else 'no'} |")
    return "\n".join(out)


def _variant_rows(paths: list[Path]) -> list[str]:
    """One row per (cell, variant): iterations at the stop, iterations to 40 dB over the seeds that got there,
    the worst PSNR at the stop, states evaluated per sample."""
    rows = ["| cell | variant | iterations at stop | to 40 dB (seeds there) | worst PSNR at stop | states |",
            "|---|---|---|---|---|---|"]
    for path in paths:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            n, there = len(r["iterations"]), [v for v in r["to_40"] if v is not None]
            to40 = f"{sum(there) / len(there):.2f}" if there else "-"
            psnr = min(r["psnr_stop"])
            rows.append(f"| {r['model']} {r['sampler']}-{r['steps']} | {r['variant']} | "
                        f"{sum(r['iterations']) / n:.2f} | {to40} ({len(there)}/{n}) | "
                        f"{'identical' if psnr >= 99 else f'{psnr:.1f}'} | {sum(r['nfe']) / n:.0f} |")
    return rows


def section(paths: list[Path]) -> str:
    """benchmarks/RESULTS.md's section on the two sampler families: the goals' table of every file, then every
    variant's row."""
    out = ["## Beyond the paper: DPM-Solver++(2M) and flow-Euler (docs/METHOD.md section 12)", "",
           "`benchmarks/families.py` (8 seeds, cfg 5, the digits as conditions): iterations until x_0 is within 40 dB "
           "of the sequential x_0 of the same family. \"nostop\" variants run to T with the rule disabled (every seed "
           "gets there); the others stop at their own rule (a seed stopped below 40 dB counts as T in the goals' "
           "table). For context only (other models, other criteria): ParaSolver reports 11 parallel iterations for "
           "DPM-Solver at 25 steps on SD-v2 and its successor 8; ParaFlow up to 4x fewer sequential steps on SD3 and "
           "FLUX. Ours are 16x16 models trained on 5,000 digits. Iteration counts do not depend on the device "
           "(up to float32 rounding).", ""]
    for path in paths:
        out += [f"From `{path.name}`:", "", report(path), ""]
    clocks = sorted(paths[0].parent.glob("wallclock_families*.json")) if paths else []
    out += [wallclock_table(p) for p in clocks] or [
        "The graphed engine's wall-clock on these families has not been measured "
        "(`benchmarks/wallclock.py families`).", ""]
    return "\n".join(out + _variant_rows(paths) + [""])


def wallclock_table(path: Path) -> str:
    """Wall-clock of `benchmarks/wallclock.py families` (one JSON file): per cell and solver, the mean over seeds of
    the median over interleaved rounds, against the graphed sequential sampler and graphed Picard of the same run."""
    data = json.loads(path.read_text())
    s = data["setting"]
    cells: dict[tuple[str, str, int], dict[str, list[dict]]] = {}
    for r in data["runs"]:
        cells.setdefault((r["model"], r["sampler"], r["steps"]), {}).setdefault(r["solver"], []).append(r)
    out = [f"### Wall-clock, graphed engine, one sample per solve (`{path.name}`)", "",
           f"Device: **{s['device_name']}**, torch {s['torch']}, {s['seeds']} seeds, cfg 5; each solve's time is the "
           f"median of {s['rounds']} interleaved rounds, the table the mean over seeds. Speedups are ratios of times "
           "measured in the same run. States: the states the network evaluated per solve (taa-euler evaluates the "
           "whole window every iteration, Picard a window that shrinks as its leading states converge).", "",
           "| cell | solver | iterations (mean / max) | states | min PSNR dB | ms per sample | vs graphed sequential "
           "| vs graphed Picard |",
           "|---|---|---|---|---|---|---|---|"]
    for (model, sampler, steps), by in cells.items():
        ms = {k: 1e3 * sum(r["wall_s"] for r in v) / len(v) for k, v in by.items()}
        for label, rs in by.items():
            its = [r["iterations"] for r in rs]
            psnr = min(r["psnr"] for r in rs)
            vs_pic = f"{ms['picard'] / ms[label]:.2f}x" if "picard" in ms and label != "sequential" else "-"
            states = sum(r["nfe"] for r in rs) / len(rs)
            out.append(f"| {model} {sampler}-{steps} | {label} | {sum(its) / len(its):.2f} / {max(its)} | "
                       f"{states:.0f} | {'exact' if psnr >= 999 else f'{psnr:.1f}'} | {ms[label]:.2f} | "
                       f"{ms['sequential'] / ms[label]:.2f}x | {vs_pic} |")
    return "\n".join(out + [""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--report", type=Path, default=None, help="print the goals' table of a JSONL file and exit")
    p.add_argument("--cells", default=CELLS, help=f"model:sampler:steps, comma-separated (default {CELLS})")
    p.add_argument("--variants", default=None, help="comma-separated labels of iterations.CORE (default: a set)")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--cfg-scale", type=float, default=5.0)
    p.add_argument("--flow-path", default=None, help="tiny-flow folder (default: the embedded one)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.report is not None:
        print(report(args.report))
        return 0
    if args.out is None:
        p.error("--out is required unless --report is given")
    measure(args)
    print(report(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
