"""Tables from benchmarks/iterations.py's JSON lines: iterations to the sequential image per solver and cell, how
each stopping rule meets "stop at the sequential image", and the exploration (history, initialisation, ridge,
restart, window). Used by benchmarks/report.py for RESULTS.md; also runs alone:

    python benchmarks/iterations_report.py benchmarks/results/iterations.jsonl > iterations.md
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

CELLS = [
    (m, s, t) for m in ("tiny-dit", "tiny-sd") for s in ("ddim", "ddpm") for t in (25, 50, 100)
]  # fmt: skip
# the yardstick rows: label -> (variants whose runs count, ...). A solver's "to 40 dB" is taken from its own run
# when every seed got there before it stopped, else from the run with stopping disabled.
SOLVERS = {
    "FP+ (k = T)": ["fp+", "fp+ nostop"],
    "AA": ["aa"],
    "TAA m=2, Gaussian init (the paper)": ["taa (paper)", "taa (paper) nostop"],
    "TAA m=3, copy init": ["taa m3 copy", "taa m3 copy nostop"],
    "ParaDiGMS-Picard, tol 0.1": ["picard"],
    "ParaDiGMS-Picard, tol 0.05": ["picard ptol0.05"],
    "ParaDiGMS-Picard, stopping disabled": ["picard nostop"],
    "FP on the Euler splitting, copy init (the Picard map)": ["fp+ euler copy", "fp+ euler copy sum"],
    "taa-euler m=3": ["taa-euler m3", "taa-euler m3 nostop"],
    "**taa-euler** (m=5, the preset)": ["taa-euler", "taa-euler nostop"],
}
PICARD = ["picard", "picard ptol0.05"]
RULES = {
    "flat per-step rule 1e-3 (the authors'; TAA paper)": "taa (paper)",
    "sigma-scaled per-step rule 1e-3 sigma_t (the paper's text; TAA paper)": "taa (paper) sigma-rule",
    "ParaDiGMS change rule, tol 0.1": "picard",
    "ParaDiGMS change rule, tol 0.05": "picard ptol0.05",
    "flat per-step rule 1e-3 on taa-euler": "taa-euler flat-rule",
    "summed rule 0.05 on FP+": "fp+ sum",
    "summed rule 0.05 on AA": "aa sum",
    "summed rule 0.05 on TAA (paper)": "taa (paper) sum",
    "summed rule 0.05 on FP-Euler (the Picard map)": "fp+ euler copy sum",
    "summed rule 0.02 on taa-euler": "taa-euler sum0.02",
    "summed rule 0.05 on taa-euler m=3": "taa-euler m3",
    "**summed rule 0.05 on taa-euler (the preset)**": "taa-euler",
    "summed rule 0.08 on taa-euler": "taa-euler sum0.08",
}


def load(path: str | Path) -> dict[tuple[str, str, int, str], dict[str, Any]]:
    out = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        out[(r["model"], r["sampler"], int(r["steps"]), r["variant"])] = r
    return out


def mean(v: list[float]) -> float:
    return sum(v) / len(v) if v else math.nan


def to40(r: dict[str, Any]) -> float | None:
    """Mean iterations to 40 dB over seeds, or None when a seed never got there in this run."""
    v = r["to_40"]
    return None if any(x is None for x in v) else mean(v)


def solver_to40(data, cell, variants: list[str]) -> tuple[float | None, str]:
    for v in variants:
        r = data.get((*cell, v))
        if r is not None and to40(r) is not None:
            return to40(r), ("" if v == variants[0] else "*")
    return None, ""


def best_picard(data, cell) -> float | None:
    vals = [to40(data[(*cell, v)]) for v in PICARD if (*cell, v) in data]
    vals = [v for v in vals if v is not None]
    return min(vals) if vals else None


def late(r: dict[str, Any]) -> list[float | None]:
    return [None if t is None else it - t for it, t in zip(r["iterations"], r["to_40"], strict=True)]


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def cell_name(cell) -> str:
    return f"{cell[0]} {cell[1].upper()}-{cell[2]}"


def yardstick_table(data) -> list[str]:
    cells = [c for c in CELLS if any((*c, v) in data for v in SOLVERS["**taa-euler** (m=5, the preset)"])]
    lines = ["| solver | " + " | ".join(cell_name(c) for c in cells) + " |", "|---" * (len(cells) + 1) + "|"]
    for label, variants in SOLVERS.items():
        vals = [solver_to40(data, c, variants) for c in cells]
        if all(v is None for v, _ in vals):
            continue
        lines.append(f"| {label} | " + " | ".join(fmt(v) + star for v, star in vals) + " |")
    ratio = []
    for c in cells:
        te, _ = solver_to40(data, c, SOLVERS["**taa-euler** (m=5, the preset)"])
        pic = best_picard(data, c)
        ratio.append(fmt(pic / te if te and pic else None) + "x")
    lines.append("| ParaDiGMS (best of tol 0.1, 0.05) / taa-euler | " + " | ".join(ratio) + " |")
    return lines


def rule_table(data) -> list[str]:
    lines = [
        "| stopping rule (solver) | cells meeting the target | seeds below 40 dB at the stop | worst PSNR at the stop "
        "| iterations after the 40 dB point: mean / max | iterations at the stop (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for label, variant in RULES.items():
        runs = [data[(*c, variant)] for c in CELLS if (*c, variant) in data]
        if not runs:
            continue
        ok_cells, below, worst, lates, stops = 0, 0, math.inf, [], []
        for r in runs:
            lt = late(r)
            b = sum(p < 40 for p in r["psnr_stop"])
            below += b
            worst = min(worst, min(r["psnr_stop"]))
            lates += [x for x in lt if x is not None]
            stops += r["iterations"]
            ok_cells += b == 0 and all(x is not None and x <= 2 for x in lt)
        lines.append(
            f"| {label} | {ok_cells} / {len(runs)} | {below} / {sum(len(r['iterations']) for r in runs)} | "
            f"{worst:.1f} dB | {mean(lates):.2f} / {max(lates):.0f} | {mean(stops):.2f} |"
        )
    return lines


def misses(data, variant: str) -> list[str]:
    out = []
    for c in CELLS:
        r = data.get((*c, variant))
        if r is None:
            continue
        for s, (p, lt) in enumerate(zip(r["psnr_stop"], late(r), strict=True)):
            if p < 40 or lt is None or lt > 2:
                why = f"{p:.1f} dB at the stop" if p < 40 else f"stopped {lt:.0f} iterations after the 40 dB point"
                out.append(f"{cell_name(c)} seed {r['seeds'][s]}: {why}")
    return out


def explore_table(data, device: str | None = None) -> list[str]:
    """Rows: variants; cells: iterations at the stop / to 40 dB / worst PSNR. A variant measured on another device
    than `device` (the file's first) says where."""
    groups = defaultdict(dict)
    for (m, s, t, v), r in data.items():
        if t == 100 and ("taa-euler" in v or v.startswith("aa euler")) and "nostop" not in v:
            groups[v][(m, s)] = r
    cols = [(m, s) for m in ("tiny-dit", "tiny-sd") for s in ("ddim", "ddpm")]
    lines = [
        "| variant (100 steps) | " + " | ".join(f"{m} {s.upper()}" for m, s in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for v in sorted(groups, key=lambda k: (" W" in k, k)):
        cells = []
        for c in cols:
            r = groups[v].get(c)
            if r is None:
                cells.append("-")
                continue
            t = to40(r)
            cells.append(f"{fmt(mean(r['iterations']))} / {fmt(t)} / {min(r['psnr_stop']):.0f}")
        where = sorted({r.get("device", "?") for r in groups[v].values()} - {device})
        lines.append(f"| {v}{' (' + ', '.join(where) + ')' if where else ''} | " + " | ".join(cells) + " |")
    return lines


def markdown(path: str | Path) -> str:
    data = load(path)
    any_rec = next(iter(data.values()))
    seeds = len(any_rec["seeds"])
    out = [
        "## Iterations to the sequential image (embedded models)",
        "",
        f"Device: **{any_rec.get('device', '?')}**. `benchmarks/iterations.py`, {seeds} seeds per cell, cfg 5, "
        "each solver as its preset defines it unless the row says otherwise. Iterations to 40 dB = first iteration "
        "whose x0 is within PSNR 40 dB of the sequential x0 (range [-1, 1]), from x0 at every iteration; "
        "taken from the solver's own run, or (marked *) from a run with stopping disabled where its own rule "
        "stopped some seed before 40 dB.",
        "",
        *yardstick_table(data),
        "",
        "### Stopping rules against the target: every seed >= 40 dB at the stop, and at most 2 iterations after "
        "the first iteration that was",
        "",
        *rule_table(data),
        "",
    ]
    miss = misses(data, "taa-euler")
    out += ["Where the preset's rule misses the target: " + ("; ".join(miss) if miss else "nowhere") + ".", ""]
    out += [
        "### Exploration (100-step cells): iterations at the stop / to 40 dB / worst PSNR at the stop",
        "",
        "Initialisations that cost model calls before the parallel solve count them as iterations in every number: "
        "`jump-init` one call (the x0-prediction of x_T), `coarse<c>-init` c sequential calls (a c-step DDIM run "
        "from the same x_T, each state put on the DDIM line of the coarse step around its noise level).",
        "",
        *explore_table(data, any_rec.get("device")),
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "iterations.jsonl"))
