"""Tables for freezing the converged prefix (`freeze_frac`, docs/METHOD.md section 9) from the lines of
benchmarks/iterations.py (`--groups freeze`) or benchmarks/validation.py (labels "taa-euler freeze<c>").

Per cell and solver, over the seeds: iterations at the stop, iterations to 40 dB (first iteration whose x0 is within
40 dB PSNR of the sequential x0; mean over the seeds that reach it, with how many do), states evaluated to 40 dB
(the same seeds), their ratio to Picard's (sums over the seeds both reach 40 dB), the lowest PSNR at the stop, and
"lock-in": solves of the solver that stopped below 40 dB where the unfrozen preset ("taa-euler") stopped at or above.

    python benchmarks/freeze_report.py benchmarks/results/freeze_tuning.jsonl
    python benchmarks/freeze_report.py benchmarks/results/freeze_validation.jsonl --db 40
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def solves(path: Path, db: float) -> list[dict[str, Any]]:
    """One record per (cell, solver, seed) from either script's lines."""
    out = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "variant" in r:  # benchmarks/iterations.py
            cell = (r["model"], f"{r['sampler']}-{r['steps']}", "cfg5", "float32")
            label = r["variant"]
            key = {40.0: "to_40", 50.0: "to_50", 30.0: "to_30"}[db]
            to = r[key]
            states = r.get(f"nfe_{key}", [None] * len(to))
        else:  # benchmarks/validation.py: per-iteration PSNR and states
            cell = (r["model"], f"{r['sampler']}-{r['steps']}", f"cfg{r['cfg']:g}", r["dtype"])
            label = r["solver"]
            to, states = [], []
            for p, w in zip(r["psnr"], r["states"], strict=True):
                k = next((i for i, v in enumerate(p) if v >= db), None)
                to.append(None if k is None else k + 1)
                states.append(None if k is None else sum(w[: k + 1]))
        for s in range(len(r["iterations"])):
            out.append(dict(cell=cell, label=label, seed=s, stop=r["iterations"][s], to=to[s], states=states[s],
                            psnr=r["psnr_stop"][s], nfe=r["nfe"][s], part=r.get("part", "tuning")))
    return out


def table(recs: list[dict[str, Any]], db: float) -> str:
    by: dict[tuple, dict[str, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for x in recs:
        by[(x["part"], *x["cell"])][x["label"]][x["seed"]] = x
    rows = [f"| part | model | sampler | cfg | dtype | solver | stop | to {db:g} dB | states to {db:g} dB | vs Picard "
            f"| min PSNR at stop | lock-in |", "|" + "---|" * 12]
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0])
    for cell, labels in by.items():
        pic = labels.get("picard", {})
        base = labels.get("taa-euler", {})
        for label, seeds in labels.items():
            xs = list(seeds.values())
            reach = [x for x in xs if x["to"] is not None]
            common = [s for s, x in seeds.items() if x["to"] is not None and s in pic and pic[s]["to"] is not None]
            ratio = (sum(seeds[s]["states"] for s in common) / sum(pic[s]["states"] for s in common)
                     if common and label != "picard" else None)
            locked = sum(1 for s, x in seeds.items() if x["psnr"] < db and s in base and base[s]["psnr"] >= db)
            to = sum(x["to"] for x in reach) / len(reach) if reach else float("nan")
            st = sum(x["states"] for x in reach) / len(reach) if reach else float("nan")
            rows.append(f"| {cell[0]} | {cell[1]} | {cell[2]} | {cell[3]} | {cell[4]} | {label} | "
                        f"{sum(x['stop'] for x in xs) / len(xs):.2f} | {to:.2f} ({len(reach)}/{len(xs)}) | {st:.0f} | "
                        f"{'' if ratio is None else f'{ratio:.2f}'} | {min(x['psnr'] for x in xs):.1f} | {locked} |")
            t = totals[(cell[0], label)]
            t[0] += len(xs)
            t[1] += locked
            t[2] += sum(1 for x in xs if x["psnr"] < db)
            if ratio is not None:
                t[3] += sum(seeds[s]["states"] for s in common)
                t[4] += sum(pic[s]["states"] for s in common)
    rows += ["", "| part | solver | solves | stopped below | lock-in | states to target / Picard's (pooled) |",
             "|" + "---|" * 6]
    for (part, label), t in sorted(totals.items()):
        rows.append(f"| {part} | {label} | {t[0]} | {t[2]} | {t[1]} | {'' if not t[4] else f'{t[3] / t[4]:.2f}'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lines", type=Path, nargs="+")
    p.add_argument("--db", type=float, default=40.0, choices=(30.0, 40.0, 50.0))
    args = p.parse_args(argv)
    recs = [x for path in args.lines for x in solves(path, args.db)]
    print(table(recs, args.db))
    return 0


if __name__ == "__main__":
    sys.exit(main())
