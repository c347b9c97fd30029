"""Tables of the validation suite (benchmarks/validation.py's JSON lines), tuning and validation parts apart.

Per cell (model, sampler-steps, guidance, network dtype) and solver: iterations at the stop (mean, max), PSNR at the
stop (minimum over the seeds), lateness (iterations at the stop minus the first iteration at or above the target,
mean and max; "below" counts the solves that stopped below the target), iterations to the target and states
evaluated up to the stop (both means over the seeds).

    python benchmarks/validation_report.py validation.jsonl                      # Markdown to stdout
    python benchmarks/validation_report.py validation.jsonl --write benchmarks/RESULTS.md
    python benchmarks/validation_report.py validation.jsonl --replay --part tuning   # margins of stop="target"

`--write` replaces the part of RESULTS.md between the markers `<!-- validation:begin -->` and
`<!-- validation:end -->` (added at the end when absent; `--marker fresh-validation` for another section).
`--replay-change` adds each target-rule solve replayed with its x0-change test alone. `--replay` tries the target
rule's thresholds offline on the "taa-euler nostop" curves (the trajectory the rule follows until it stops): for
each clamp of the rate factor, the first iteration whose x0 change times the factor is within the target's RMS;
`--resid-factors` adds the residual test (summed rho within factor x the target's RMS) the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from parataa.stopping import target_rms

BEGIN, END = "<!-- validation:begin -->", "<!-- validation:end -->"  # the default section (--marker validation)
DTYPE_ORDER = ("float32", "bfloat16", "float16")
REPLAY_FACTORS = [(0.89, 0.89), (1.0, 1.0), (1.26, 1.26), (1.0, 2.0), (1.0, 4.0), (0.5, 2.0)]


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def first_at(psnr: list[float], db: float) -> int | None:
    """First iteration (from 1) with PSNR >= db, None if never."""
    return next((k + 1 for k, p in enumerate(psnr) if p >= db), None)


def solve_stats(r: dict[str, Any], s: int, db: float) -> dict[str, Any]:
    stop, psnr = r["iterations"][s], r["psnr_stop"][s]
    reach = first_at(r["psnr"][s], db)
    ok = psnr >= db
    floor = r["floor_db"][s] if "floor_db" in r else None  # the yardstick's own rounding floor (validation.py)
    return dict(stop=stop, psnr=psnr, reach=reach, late=stop - reach if ok and reach else None, below=not ok,
                states=sum(r["states"][s]), capped=not r["finished"][s],
                below_floor=not ok and floor is not None and floor < db)


def fmt(v: float | None, nd: int = 1) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def capped(st: list[dict[str, Any]]) -> str:
    n = sum(x["capped"] for x in st)
    return f" (capped {n})" if n else ""


def cell_rows(recs: list[dict[str, Any]], db: float) -> list[str]:
    out = ["| model | cell | cfg | dtype | solver | seeds | stop mean (max) | PSNR at stop min | late mean (max) "
           "| below | to target | states |", "|" + "---|" * 12]
    order = {"target": 0, "taa-euler": 1, "picard": 2}
    key = lambda r: (r["model"], r["sampler"], r["steps"], r["cfg"], list(DTYPE_ORDER).index(r["dtype"]),  # noqa: E731
                     next((v for k, v in order.items() if r["solver"].startswith(k)), 3), r["solver"])
    for r in sorted(recs, key=key):
        st = [solve_stats(r, s, db) for s in range(len(r["seeds"]))]
        late = [x["late"] for x in st if x["late"] is not None]
        reach = [x["reach"] for x in st if x["reach"] is not None]
        out.append(
            f"| {r['model']} | {r['sampler']}-{r['steps']} | {r['cfg']:g} | {r['dtype']} | {r['solver']} | "
            f"{len(st)} | {sum(x['stop'] for x in st) / len(st):.1f} ({max(x['stop'] for x in st)}) | "
            f"{min(x['psnr'] for x in st):.1f} | "
            f"{fmt(sum(late) / len(late) if late else None)} ({max(late) if late else '-'}) | "
            f"{sum(x['below'] for x in st)}{capped(st)} | "
            f"{fmt(sum(reach) / len(reach) if reach else None)} | {sum(x['states'] for x in st) / len(st):.0f} |"
        )
    return out


def summary_rows(recs: list[dict[str, Any]], db: float) -> list[str]:
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in recs:
        by[(r["solver"], r["dtype"])] += [solve_stats(r, s, db) for s in range(len(r["seeds"]))]
    floors = any("floor_db" in r for r in recs)
    out = ["| solver | dtype | solves | below target " + ("| of them, yardstick floor below target " if floors else "")
           + "| capped at max_iters | lateness mean | lateness max |", "|" + "---|" * (8 if floors else 7)]
    for (solver, dtype), st in sorted(by.items()):
        late = [x["late"] for x in st if x["late"] is not None]
        fl = f"{sum(x['below_floor'] for x in st)} | " if floors else ""
        out.append(f"| {solver} | {dtype} | {len(st)} | {sum(x['below'] for x in st)} | {fl}"
                   f"{sum(x['capped'] for x in st)} | {fmt(sum(late) / len(late) if late else None, 2)} | "
                   f"{max(late) if late else '-'} |")
    return out


def half_rows(recs: list[dict[str, Any]], db: float) -> list[str]:
    """Each half-precision solve set against float32's on the same cell, seeds and solver: the differences of the
    mean iterations at the stop and to the target (goal: within +2, docs/METHOD.md section 9)."""
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["part"], r["model"], r["sampler"], r["steps"], r["cfg"], tuple(r["seeds"]), r["solver"])

    f32 = {key(r): r for r in recs if r["dtype"] == "float32"}
    out = ["| model | cell | cfg | dtype | solver | stop: half - float32 | to target: half - float32 | within +2 |",
           "|" + "---|" * 8]
    for r in recs:
        ref = f32.get(key(r))
        if r["dtype"] == "float32" or ref is None:
            continue
        d_stop = sum(r["iterations"]) / len(r["iterations"]) - sum(ref["iterations"]) / len(ref["iterations"])
        reach = [first_at(x["psnr"][s], db) for x in (r, ref) for s in range(len(x["seeds"]))]
        half, full = reach[: len(r["seeds"])], reach[len(r["seeds"]):]
        d_to = (None if None in half or None in full
                else sum(half) / len(half) - sum(full) / len(full))  # type: ignore[arg-type]
        ok = d_stop <= 2 and d_to is not None and d_to <= 2
        out.append(f"| {r['model']} | {r['sampler']}-{r['steps']} | {r['cfg']:g} | {r['dtype']} | {r['solver']} | "
                   f"{d_stop:+.1f} | {'-' if d_to is None else f'{d_to:+.1f}'} | {'yes' if ok else 'no'} |")
    return out


def change_only(r: dict[str, Any], db: float) -> dict[str, Any]:
    """A target-rule record replayed with the x0-change test alone (the rule before its residual test): the stop is
    the first iteration whose logged x0 change is within the target's RMS. Exact on the same run, because the
    residual test only ever stops later and the iterates until then are the same (logged changes: 4 digits)."""
    tol, out = 2.0 * 10 ** (-db / 20), dict(r, solver=r["solver"] + " change-only (replayed)")
    stops = [next((k for k, d in enumerate(r["dx0"][s]) if d <= tol), len(r["dx0"][s]) - 1)
             for s in range(len(r["seeds"]))]
    out.update(iterations=[k + 1 for k in stops], psnr_stop=[r["psnr"][s][k] for s, k in enumerate(stops)],
               finished=[True] * len(stops), states=[r["states"][s][: k + 1] for s, k in enumerate(stops)])
    return out


TITLES = {"tuning": "Tuning cells (thresholds may be chosen here)", "validation": "Validation cells (chose nothing)",
          "fresh": "Fresh validation cells (chose nothing; added after the validation cells had been run)",
          "fresh2": "Second fresh validation cells (chose nothing; added before the precision-floor estimate was "
                    "built, run once)"}


HEADINGS = {"validation": "## Validation suite: the fidelity target on cells nobody tuned on",
            "floor-validation": "## Validation suite, every part: the fidelity target with its precision-floor "
                                "estimate (tuning, validation, fresh, fresh2)",
            "gpu-residual-validation": "## Validation suite on one GPU, full size, float16 and bfloat16: the fidelity "
                                       "target with its residual test, before the precision-floor estimate",
            "gpu-floor-validation": "## Validation suite on one GPU: the second fresh cells, the fidelity target with "
                                    "its precision-floor estimate"}


def report(recs: list[dict[str, Any]], db: float, marker: str = "validation", replay_change: bool = False) -> str:
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    if replay_change:
        recs = recs + [change_only(r, db) for r in recs if r["solver"].startswith("target")]
    heading = HEADINGS.get(marker, "## Validation suite, fresh cells: the fidelity target with its residual test")
    lines = [begin, heading, "",
             "`benchmarks/validation.py` (cells: `benchmarks/validation_cells.yaml`), tables by "
             "`benchmarks/validation_report.py`. `target40` is the `taa-euler` preset stopped by the fidelity target "
             "(`stop=\"target\"`, 40 dB; docs/METHOD.md section 9), `taa-euler` the preset with its summed rule, "
             "`picard` ParaDiGMS's rule. x0's PSNR is measured against the sequential x0 computed with the same "
             "network precision. The tuning cells are the only ones the rule's threshold was chosen on.", "",
             f"Target {db:g} dB; lateness = iterations at the stop minus the first iteration at or above "
             "the target (only for solves that stopped at or above it; \"below\" counts the others); states = states "
             "the model evaluated per sample up to the stop. Machine: "
             + ", ".join(sorted({r["device"] if r["device"] != "cpu" else "the CPU" for r in recs})) + "."]
    if replay_change:
        lines += ["", "`<solver> change-only (replayed)`: the same runs with the stop replayed at the first iteration "
                  "whose x0 change was within the target's RMS, i.e. the rule without its residual test."]
    for part in TITLES:
        sel = [r for r in recs if r["part"] == part and "nostop" not in r["solver"]]
        if not sel:
            continue
        title = TITLES[part]
        lines += ["", f"### {title}: summary", "", *summary_rows(sel, db), "", f"### {title}: per cell", "",
                  *cell_rows(sel, db)]
        half = half_rows(sel, db)
        if len(half) > 2:
            lines += ["", f"### {title}: half precision against float32 (same cell, seeds and solver; \"-\" where "
                      "a solve never reached the target)", "", *half]
    tuned = [r for r in recs if r["part"] == "tuning" and r["solver"] == "taa-euler nostop"]
    if tuned:
        lines += ["", "### Tuning cells: the target rule's threshold replayed on runs with stopping disabled", "",
                  "x0's change times a factor <= the target's RMS; factor 1 is the rule (`stop=\"target\"`), the "
                  "others clamp the contraction estimate r / (1 - r), r the ratio of consecutive changes, or add a "
                  "fixed margin (1.26 = 2 dB).", ""]
        for dtype in [d for d in DTYPE_ORDER if any(r["dtype"] == d for r in tuned)]:
            lines += [f"{dtype}:", "", replay([r for r in tuned if r["dtype"] == dtype], db, REPLAY_FACTORS)]
    lines += [end]
    return "\n".join(lines) + "\n"


def rate_factor(dx0: list[float], k: int, low: float, high: float) -> float:
    """clamp(r / (1 - r), low, high) with r = dx0[k] / dx0[k - 1] (high where r >= 1 or k = 0): the distance to
    the fixed point per unit of the last change, for an iteration contracting by r per iteration."""
    if k == 0 or dx0[k - 1] <= 0 or dx0[k] >= dx0[k - 1]:
        return high
    r = dx0[k] / dx0[k - 1]
    return min(max(r / (1 - r), low), high)


def replay(recs: list[dict[str, Any]], db: float, factors: list[tuple[float, float]]) -> str:
    """The target rule with each (low, high) rate-factor clamp, replayed on the nostop curves: the first iteration
    k with dx0[k] * rate_factor <= the target's RMS (dx0 and PSNR per iteration)."""
    stops = [(f"({low:g}, {high:g})", lambda d, rs, low=low, high=high: next(
        (i for i in range(len(d)) if d[i] * rate_factor(d, i, low, high) <= target_rms(db)), len(d) - 1))
        for low, high in factors]
    return replay_table(recs, db, "factor clamp (low, high)", stops)


def resid_replay(recs: list[dict[str, Any]], db: float, factors: list[float]) -> str:
    """The target rule with its residual test, replayed on the nostop curves for each factor K: the first iteration
    k with dx0[k] <= tol and rsum[k] <= K tol (rsum: the summed rho of the iterate before iteration k's update)."""
    stops = [(f"{K:g}", lambda d, rs, K=K: next(
        (i for i in range(len(d)) if d[i] <= target_rms(db) and rs[i] <= K * target_rms(db)), len(d) - 1))
        for K in factors]
    return replay_table(recs, db, "residual factor K", stops)


def replay_table(recs: list[dict[str, Any]], db: float, setting: str, stops: list[tuple[str, Any]]) -> str:
    """A table with one row per (label, stop), its first column headed `setting`: stop(dx0, rsum) is the 0-based
    iteration a rule stops at on a "taa-euler nostop" curve; the row counts the solves, those stopped below `db`, the
    worst PSNR at the stop and the lateness after the first iteration at or above `db`."""
    out = [f"| {setting} | solves | below target | min PSNR at stop | lateness mean | lateness max |",
           "|" + "---|" * 6]
    for label, stop in stops:
        late, below, worst, n = [], 0, math.inf, 0
        for r in (r for r in recs if r["solver"] == "taa-euler nostop"):
            for s in range(len(r["seeds"])):
                n += 1
                ps = r["psnr"][s]
                k = stop(r["dx0"][s], r["rsum"][s])
                worst, reach = min(worst, ps[k]), first_at(ps, db)
                if ps[k] < db or reach is None:
                    below += 1
                else:
                    late.append(k + 1 - reach)
        out.append(f"| {label} | {n} | {below} | {worst:.1f} | {fmt(sum(late) / len(late) if late else None, 2)} | "
                   f"{max(late) if late else '-'} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", type=Path, nargs="+")
    p.add_argument("--target-db", type=float, default=40.0)
    p.add_argument("--write", type=Path, default=None, help="Markdown file whose validation section to replace")
    p.add_argument("--marker", default="validation",
                   help="the section of --write to replace: between <!-- MARKER:begin --> and <!-- MARKER:end -->")
    p.add_argument("--replay-change", action="store_true",
                   help="add each target solver replayed with its x0-change test alone (change-only)")
    p.add_argument("--replay", action="store_true", help="replay the target rule's margins on the nostop curves")
    p.add_argument("--resid-factors", default="1,1.5,2,2.5,3,4,1e9",
                   help="with --replay: residual-test factors K to try (rsum <= K x the target's RMS; 1e9: none)")
    p.add_argument("--part", default="tuning", help="with --replay: the part to replay on (tuning chooses)")
    p.add_argument("--factors", default=",".join(f"{lo:g}:{hi:g}" for lo, hi in REPLAY_FACTORS),
                   help="with --replay: low:high clamps of the rate factor r / (1 - r) to try")
    args = p.parse_args(argv)
    recs = [r for path in args.inputs for r in load(path)]
    if args.replay:
        sel = [r for r in recs if r["part"] == args.part]
        for dtype in sorted({r["dtype"] for r in sel}):
            print(f"{args.part}, {dtype}:")
            print(replay([r for r in sel if r["dtype"] == dtype], args.target_db,
                         [tuple(map(float, f.split(":"))) for f in args.factors.split(",")]))
            print(resid_replay([r for r in sel if r["dtype"] == dtype], args.target_db,
                               [float(k) for k in args.resid_factors.split(",")]))
        return 0
    text = report(recs, args.target_db, args.marker, args.replay_change)
    if args.write is None:
        sys.stdout.write(text)
        return 0
    doc = args.write.read_text()
    begin, end = f"<!-- {args.marker}:begin -->", f"<!-- {args.marker}:end -->"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + text.rstrip("\n") + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    args.write.write_text(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
