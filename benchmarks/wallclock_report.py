"""RESULTS.md sections, figures and results/summary.json from benchmarks/wallclock.py's JSON (no torch).

Every ratio is computed from numbers of one file (one process, one machine), except the 2-GPU ratios, which divide
a 1-GPU sequential time by a 2-GPU time measured by the same benchmarks/gpu_all.sh run on the same host.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

GOAL_DB = 40.0


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _mean(v) -> float:
    v = [x for x in v if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.fmean(v) if v else math.nan


def bucket_of(width: int, buckets: list[int]) -> int:
    return next(b for b in sorted(buckets) if b >= width)


def tiny_table(tiny: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per (solver, engine): means over seeds, the per-seed PSNR, speedups vs the sequential baselines."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in tiny["runs"]:
        groups[(r["solver"], r["engine"])].append(r)
    rows = []
    for (solver, engine), rs in groups.items():
        rows.append({"solver": solver, "engine": engine, "wall_s": _mean([r["wall_s"] for r in rs]),
                     "iterations": _mean([r["iterations"] for r in rs]), "iter_max": max(r["iterations"] for r in rs),
                     "psnr": [round(r["psnr"], 1) for r in rs], "psnr_min": min(r["psnr"] for r in rs),
                     "solver_share": _mean([r["solver_s"] / r["wall_s"] for r in rs if r["wall_s"] > 0])})
    by = {(r["solver"], r["engine"]): r for r in rows}
    graphed = "graphed" if any(e == "graphed" for _, e in by) else "static"
    base = {"graphed": by.get(("sequential", graphed)), "eager": by.get(("sequential", "eager"))}
    for r in rows:
        for k, b in base.items():
            r[f"vs_{k}"] = b["wall_s"] / r["wall_s"] if b else math.nan
    parallel = [r for r in rows if r["engine"] == graphed and not r["solver"].startswith("sequential")]
    ok = [r for r in parallel if r["psnr_min"] >= GOAL_DB]
    best = min((r for r in ok if r["solver"].startswith("taa")), key=lambda r: r["wall_s"], default=None)
    picard = min((r for r in ok if r["solver"].startswith("picard")), key=lambda r: r["wall_s"], default=None)
    return rows, {"engine": graphed, "best": best, "picard": picard, "sequential": base["graphed"]}


def wallclock_sections(d: Path, figdir: Path) -> list[str]:
    tiny, sd = _load(d / "tiny.json"), _load(d / "sd.json")
    w1 = {k: _load(d / f"windows1_{k}.json") for k in ("xl", "sd")}
    w2 = _load(d / "windows2.json")
    explore = _explore(d)
    lines: list[str] = []
    summary: dict[str, Any] = {}
    if tiny:
        lines += _tiny_sections(tiny, summary)
    if sd:
        lines += _sd_section(sd)
    choice = {}
    if any(w1.values()) or w2:
        more, choice = _window_sections(w1, w2, tiny, sd, explore, summary, figdir)
        lines += more
    if summary:
        summary["_note"] = ("written by benchmarks/report.py from the JSON of benchmarks/wallclock.py "
                            "(benchmarks/gpu_all.sh); never edited by hand")
        (d / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if choice:
        (d / "window_choice.json").write_text(json.dumps(choice, indent=1) + "\n")
    return lines


def _explore(d: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """benchmarks/iterations.py rows of the 100-step DDIM cells, by (model, variant)."""
    out = {}
    here = Path(__file__).parent / "results"
    for path in (d / "iterations.jsonl", here / "iterations.jsonl", d / "iterations_explore.jsonl"):
        if path.exists():
            for line in path.read_text().splitlines():
                r = json.loads(line)
                if r.get("steps") == 100 and r.get("sampler") == "ddim":
                    out[(r["model"], r["variant"])] = r
            break
    return out


def _per_round(tiny: dict[str, Any], base: str, solver: str, engine: str) -> str:
    """' Per timing round: a-b.' The ratio of the two solvers' mean wall times (over seeds) in each interleaved round:
    how far the headline ratio moves from round to round. Empty for result files timed once per seed."""
    walls = defaultdict(list)
    for r in tiny["runs"]:
        if r["engine"] == engine and r["solver"] in (base, solver) and r.get("wall_s_rounds"):
            walls[r["solver"]].append(r["wall_s_rounds"])
    if len(walls) < 2 or len({len(w) for rs in walls.values() for w in rs}) != 1:
        return ""
    rounds = len(walls[base][0])
    mean = {k: [statistics.fmean(w[i] for w in rs) for i in range(rounds)] for k, rs in walls.items()}
    ratios = [b / s for b, s in zip(mean[base], mean[solver], strict=True)]
    return f" Per timing round ({rounds}): {min(ratios):.2f}x to {max(ratios):.2f}x."


def _timing_note(setting: dict[str, Any]) -> str:
    """How the graphed rows were timed (older result files timed each seed once, one engine after the other)."""
    r = setting.get("rounds")
    if not r:
        return "Graphed rows: one timed solve per seed, one engine after the other; wall ms is the mean over seeds."
    return (f"Graphed rows: every engine captured first, then timed in {r} interleaved rounds (the engine order "
            "rotated each round, so drift falls on all alike); wall ms is the mean over seeds of each seed's median "
            "over the rounds. Eager rows: one timed solve per seed.")


def _tiny_sections(tiny: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    s = tiny["setting"]
    rows, head = tiny_table(tiny)
    dev = s["device_name"]
    seq = head["sequential"]
    lines = [f"## Wall-clock on tiny-dit (trained), DDIM-{s['steps']}, cfg 5, one sample per solve (digit 0; a batch "
             "of N: digits 0..N-1)", "",
             f"Device: **{dev}**, torch {s['torch']}, seeds 0..{s['seeds'] - 1}, all in one process "
             "(`benchmarks/wallclock.py tiny`). Engines: `eager` = the reference loops; `graphed` = the static engine "
             "with each window bucket's whole iteration (model call included) captured in CUDA graphs, one "
             f"device-to-host copy per iteration; the sequential `graphed` row is one CUDA graph per step "
             f"({s['steps']} "
             f"replays, no host wait). `sequential-compiled`: torch.compile (default mode) inside that graph; "
             "`sequential-diffusers`: diffusers' DDIMScheduler.step loop with the same adapter (the plain baseline). "
             "PSNR against the eager sequential image, per seed (999 = identical). Graph captures happen in an "
             "untimed warm-up solve. " + _timing_note(s), "",
             "| solver | engine | iterations (mean / max) | wall ms | vs graphed sequential | vs eager sequential | "
             "PSNR min dB | PSNR per seed | solver share |", "|---|---|---|---|---|---|---|---|---|"]
    order = sorted(rows, key=lambda r: (not r["solver"].startswith("sequential"), r["solver"], r["engine"]))
    for r in order:
        share = "" if math.isnan(r["solver_share"]) else f"{100 * r['solver_share']:.0f}%"
        lines.append(f"| {r['solver']} | {r['engine']} | {r['iterations']:.1f} / {r['iter_max']} | "
                     f"{1e3 * r['wall_s']:.1f} | {r['vs_graphed']:.2f}x | {r['vs_eager']:.2f}x | {r['psnr_min']:.1f} | "
                     f"{' '.join(f'{p:g}' for p in r['psnr'])} | {share} |")
    for k, v in tiny.get("errors", {}).items():
        lines.append(f"\n`{k}` did not run: {v.splitlines()[0][:300]}")
    lines.append("")
    best, pic = head["best"], head["picard"]
    goals = []
    if best and seq:
        ratio = seq["wall_s"] / best["wall_s"]
        goals.append(f"- Fastest exact solver (every seed >= {GOAL_DB:.0f} dB): **{best['solver']}** "
                     f"({head['engine']}), "
                     f"{best['iterations']:.1f} iterations, {1e3 * best['wall_s']:.1f} ms against "
                     f"{1e3 * seq['wall_s']:.1f} ms for the graphed sequential baseline: **{ratio:.2f}x** (goal >= 5x: "
                     f"{'met' if ratio >= 5 else 'missed'}; moonshot 8x: {'met' if ratio >= 8 else 'missed'})."
                     + _per_round(tiny, seq["solver"], best["solver"], head["engine"]))
        summary["tiny_dit_speedup_vs_graphed_sequential"] = {
            "value": ratio, "device": dev, "solver": best["solver"], "engine": head["engine"],
            "psnr_min_db": best["psnr_min"], "source": "tiny.json"}
    if best and pic:
        ratio = pic["wall_s"] / best["wall_s"]
        goals.append(f"- Against graphed ParaDiGMS-Picard at matched fidelity (its fastest setting with every seed >= "
                     f"{GOAL_DB:.0f} dB: {pic['solver']}, {pic['iterations']:.1f} iterations, "
                     f"{1e3 * pic['wall_s']:.1f} ms): "
                     f"**{ratio:.2f}x** (goal >= 1.5x: {'met' if ratio >= 1.5 else 'missed'})."
                     + _per_round(tiny, pic["solver"], best["solver"], head["engine"]))
        summary["tiny_dit_speedup_vs_graphed_picard"] = {
            "value": ratio, "device": dev, "solver": best["solver"], "picard": pic["solver"], "source": "tiny.json"}
    elif not best:
        goals.append(f"- No TAA setting ended >= {GOAL_DB:.0f} dB on every seed.")
    if goals:
        lines += ["### Goals", ""] + goals + [""]
    if tiny.get("batch"):
        lines += _batch_section(tiny)
    if tiny.get("lsq"):
        lines += _lsq_section(tiny)
    return lines


def _batch_section(tiny: dict[str, Any]) -> list[str]:
    by = {(r["solver"], r["samples"]): r for r in tiny["batch"]}
    ns = sorted({r["samples"] for r in tiny["batch"]})
    lines = ["### Batch throughput: N samples in one solve (graphed engines)", "",
             "| N | sequential ms (per sample) | taa-euler ms (per sample) | taa-euler speedup | picard ms | "
             "picard speedup | taa-euler PSNR min |", "|---|---|---|---|---|---|---|"]
    stops = None
    for n in ns:
        s, t, p = by.get(("sequential", n)), by.get(("taa-euler", n)), by.get(("picard", n))
        if not (s and t and p):
            continue
        sp = s["wall_s"] / t["wall_s"]
        if sp < 1 and stops is None:
            stops = n
        lines.append(f"| {n} | {1e3 * s['wall_s']:.1f} ({1e3 * s['wall_s'] / n:.1f}) | {1e3 * t['wall_s']:.1f} "
                     f"({1e3 * t['wall_s'] / n:.1f}) | {sp:.2f}x | {1e3 * p['wall_s']:.1f} | "
                     f"{s['wall_s'] / p['wall_s']:.2f}x | {t['psnr_min']:.1f} |")
    lines.append("")
    if stops is None:
        lines.append(f"Parallel sampling still pays at N = {ns[-1]} on this model and GPU: a sequential batch "
                     "amortises its calls, but each of its steps stays launch-bound at this size.")
    else:
        lines.append(f"Parallel sampling stops paying at N = {stops}: there the sequential batch's steps cost "
                     "less than the parallel solve's iterations over N x W states.")
    return lines + [""]


def _lsq_section(tiny: dict[str, Any]) -> list[str]:
    lines = ["### Float32 Anderson least squares (an option: `ls_dtype=torch.float32`; float64 is the default)", "",
             "Distance of the float32 result to the float64 one (same engine, same model, static path), per solver "
             "over the seeds.", "", "| solver | max abs x0 difference | PSNR float32 vs float64 (min) | "
             "same iterations | PSNR to sequential: float64 min / float32 min |", "|---|---|---|---|---|"]
    groups = defaultdict(list)
    for r in tiny["lsq"]:
        groups[r["solver"]].append(r)
    for solver, rs in groups.items():
        same = sum(r["iterations32"] == r["iterations64"] for r in rs)
        lines.append(f"| {solver} | {max(r['max_abs_x0'] for r in rs):.2e} | "
                     f"{min(r['psnr_32_vs_64'] for r in rs):.1f} | "
                     f"{same}/{len(rs)} | {min(r['psnr64'] for r in rs):.1f} / {min(r['psnr32'] for r in rs):.1f} |")
    return lines + [""]


def _sd_section(sd: dict[str, Any]) -> list[str]:
    s = sd["setting"]
    groups = defaultdict(list)
    for r in sd["runs"]:
        groups[(r["solver"], r["engine"])].append(r)
    lines = [f"## tiny-sd, DDIM-{s['steps']}: diffusers' ParaDiGMS pipeline as the peer", "",
             f"Device: **{s['device_name']}**, seeds 0..{s['seeds'] - 1}. `paradigms-pipeline`: diffusers' "
             "StableDiffusionParadigmsPipeline on tiny-sd's UNet with DDIMParallelScheduler, parallel = T, tolerance "
             "0.1, output_type 'latent', no VAE (height/width 8 x 16 so its default VAE factor gives the 16x16 "
             "states), no tokenizer/text encoder (our prompt embeddings passed in), no safety checker, the same x_T.",
             "", "| solver | engine | iterations per seed | wall ms (mean) | PSNR min dB |", "|---|---|---|---|---|"]
    for (solver, engine), rs in sorted(groups.items()):
        lines.append(f"| {solver} | {engine} | {' '.join(str(r['iterations']) for r in rs)} | "
                     f"{1e3 * _mean([r['wall_s'] for r in rs]):.1f} | {min(r['psnr'] for r in rs):.1f} |")
    pipe, ours = groups.get(("paradigms-pipeline", "diffusers")), groups.get(("picard", "eager"))
    if pipe and ours:
        same = [a["iterations"] == b["iterations"] for a, b in zip(pipe, ours, strict=False)]
        lines += ["", f"Iteration counts of the pipeline and of our Picard agree on {sum(same)} of {len(same)} seeds. "
                  "The pipeline's image is not the sequential DDIM image: DDIMParallelScheduler.batch_step_no_noise "
                  "takes alphabar_prev = 1 at the last step whatever `set_alpha_to_one` says, while SD's config sets "
                  "it False (DDIMScheduler.step, and this package, use alphabar of timestep 0), so its last step "
                  "differs by sqrt(1 - alphabar_0) eps (seen as 37 dB on tiny-sd at DDIM-6 on the development CPU)."]
    for k, v in sd.get("errors", {}).items():
        lines += ["", f"`{k}` did not run: {v.splitlines()[0][:300]}"]
    return lines + [""]


def _window_sections(w1, w2, tiny, sd, explore, summary, figdir) -> tuple[list[str], dict[str, Any]]:
    lines = ["## Window size W on the DiT-XL/2- and SD-v1.5-UNet-shaped models (random weights, fp16)", "",
             "Per-iteration time of the taa-euler preset at full window W: `eager` = the reference loop "
             "(its model call eager), `graphed` = the static engine's bucket W (1 GPU: whole iteration in CUDA graphs; "
             "2 GPUs: solver in CUDA graphs, the model call spread over the ranks by DistributedDenoiser over NCCL, "
             "one "
             "graphed network call per rank, collectives eager). `replay`: the window sequence (window width of every "
             "iteration) of the embedded model's taa-euler solve at that W (tiny-dit for DiT, tiny-sd for SD; seeds "
             "as listed), replayed on the large model with the static engine, iteration by iteration: the iterates "
             "of random weights solve nothing, the timing is that of the embedded solve's windows. Iterations: the "
             "embedded solves' (this run) and `benchmarks/results/iterations.jsonl`'s where present (explore: 8 seeds, "
             "conditions cycling over the digits); PSNR min: the embedded solves' image at the stop against the "
             "sequential one, worst seed. A W whose solves end below 40 dB trades the sequential image for speed: "
             "at W < T the summed rule must freeze states to move, and one ill-conditioned tiny-sd seed then ends "
             "at 28-33 dB (docs/METHOD.md section 9).", ""]
    if tiny is not None and "sum_rule" not in tiny.get("setting", {}):
        lines += ["Note: this run's embedded solves used the summed rule before a window that does not reach x_0 "
                  "could freeze states within their share of the budget (docs/METHOD.md section 9): at W < T they "
                  "slid one state per iteration, so their W < T window sequences, and the replays of them, are longer "
                  "than the current rule's (the second iterations column, from iterations.jsonl, has the current "
                  "counts). W = T is the same under both.", ""]
    choice: dict[str, Any] = {}
    seqsrc = {"xl": (tiny, "tiny-dit"), "sd": (sd, "tiny-sd")}
    figdata = {}
    for key, label in (("xl", "DiT-XL/2-shaped (4x32x32)"), ("sd", "SD-v1.5-UNet-shaped (4x64x64)")):
        one = (w1.get(key) or {}).get("models", {}).get(key)
        two = (w2 or {}).get("models", {}).get(key)
        if not one and not two:
            continue
        dev1 = (w1.get(key) or {}).get("device", "?")
        dev2 = (w2 or {}).get("device", "?")
        seq = (one or {}).get("sequential", {})
        seq_g = (seq.get("graphed") or seq.get("static") or {}).get("total_s")
        seq_e = (seq.get("eager") or {}).get("total_s")
        src, embedded = seqsrc[key]
        seqs = (src or {}).get("sequences", {})
        lines += [f"### {label}", "",
                  f"1 GPU: **{dev1}**; 2 GPUs: **{dev2}** x2. Sequential {one['steps'] if one else '?'} steps on "
                  "1 GPU: "
                  f"eager loop {_fmt_s(seq_e)}, one CUDA graph per step {_fmt_s(seq_g)}.", "",
                  "| W | iterations (this run / explore) | PSNR min dB (this run / explore) | eager 1 GPU ms/it | "
                  "graphed 1 GPU ms/it | eager 2 GPU ms/it | "
                  "graphed 2 GPU ms/it | replay 1 GPU s | replay 2 GPU s | vs graphed sequential 1 / 2 GPU |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        best = {}
        for W in ("8", "16", "32", "50", "100"):
            it_here = _mean(seqs.get(W, {}).get("iterations", []))
            variant = f"taa-euler W{W}" if W != "100" else "taa-euler"
            ex = explore.get((embedded, variant))
            it_ex = _mean(ex["iterations"]) if ex else math.nan
            db_here = min(seqs.get(W, {}).get("psnr") or [math.nan])
            db_ex = min(ex["psnr_stop"]) if ex and ex.get("psnr_stop") else math.nan
            cells = []
            for res in (one, two):
                e = (res or {}).get("eager", {}).get(W, {}).get("iteration_s")
                g = (res or {}).get("bucket", {}).get(W, {}).get("wall_s")
                cells += [_fmt_ms(e), _fmt_ms(g)]
            reps = []
            for gpus, res in ((1, one), (2, two)):
                rp = (res or {}).get("replay", {}).get(W)
                tot = _mean(rp["total_s"]) if rp else math.nan
                reps.append(tot)
                if not math.isnan(tot) and (gpus not in best or tot < best[gpus][1]):
                    best[gpus] = (int(W), tot)
            sp = [f"{seq_g / r:.2f}x" if seq_g and not math.isnan(r) else "-" for r in reps]
            lines.append(f"| {W} | {it_here:.1f} / {it_ex:.1f} | {db_here:.1f} / {db_ex:.1f} | {cells[0]} | "
                         f"{cells[1]} | {cells[2]} | {cells[3]} | "
                         f"{_fmt_num(reps[0])} | {_fmt_num(reps[1])} | {sp[0]} / {sp[1]} |")
            figdata.setdefault(key, {}).setdefault("W", []).append(int(W))
            figdata[key].setdefault("r1", []).append(reps[0])
            figdata[key].setdefault("r2", []).append(reps[1])
        figdata.setdefault(key, {})["seq"] = seq_g
        lines.append("")
        for gpus, (W, tot) in sorted(best.items()):
            sp = seq_g / tot if seq_g else math.nan
            choice[f"{key}_{gpus}gpu"] = {"window": W, "replay_s": tot, "speedup_vs_graphed_sequential": sp,
                                          "device": dev1 if gpus == 1 else dev2}
            lines.append(f"- Best W on {gpus} GPU{'s' if gpus > 1 else ''}: **{W}** (replayed solve {tot:.3f} s, "
                         f"{sp:.2f}x the graphed sequential baseline).")
        if key == "xl" and 2 in best and seq_g:
            W, tot = best[2]
            sp = seq_g / tot
            lines.append(f"- Goal (DiT-XL/2-shaped on 2 GPUs faster than graphed sequential by >= 1.2x at the best W): "
                         f"**{sp:.2f}x** at W = {W}: {'met' if sp >= 1.2 else 'missed'}.")
            summary["xl_2gpu_speedup_vs_graphed_sequential"] = {
                "value": sp, "device": f"{dev2} x2 (parallel), {dev1} (sequential)", "window": W,
                "note": "replay of tiny-dit's taa-euler window sequence on the DiT-XL/2-shaped model",
                "source": "windows2.json, windows1_xl.json"}
        if one and one.get("call_s"):
            lines += _projection(key, one, two, seqs, seq_g)
        if one and one.get("share"):
            lines += _share(one, dev1)
        lines.append("")
    if figdata:
        _figure(figdata, figdir)
        lines += ["![replayed solve time vs W](wallclock_windows.png)", ""]
    if choice:
        lines += ["The choice is recorded in `config/paper.yaml` (comment there) and in "
                  "`benchmarks/results/window_choice.json`.", ""]
    return lines, choice


def _projection(key, one, two, seqs, seq_g) -> list[str]:
    """Projected g-GPU solve time: per iteration, the graphed network call on ceil(B/g) states (measured on one GPU)
    + the solver's own time at bucket B (1 GPU: wall - model) + the collectives (as measured on 2 GPUs; zero
    without a 2-GPU run)."""
    buckets = one["buckets"]
    call = {int(k): v for k, v in one["call_s"].items()}
    comm_text = ("communication as measured on 2 GPUs, assumed the same for 4 and 8" if two else
                 "communication **not measured** (no 2-GPU run) and taken as zero, so these are upper bounds")
    lines = ["", "Projection (**not measured**: per-rank call times measured on one GPU, the solver's time at each "
             f"bucket from the 1-GPU run, {comm_text}):", "",
             "| W | 1 GPU s (projected / replayed) | 2 GPUs s (projected / replayed) | 4 GPUs s | 8 GPUs s | "
             "8-GPU speedup vs graphed sequential |", "|---|---|---|---|---|---|"]
    for W in ("8", "16", "32", "50", "100"):
        widths = seqs.get(W, {}).get("widths", [])
        if not widths:
            continue
        proj = {}
        for g in (1, 2, 4, 8):
            tot = []
            for ws in widths:
                s = 0.0
                for w in ws:
                    B = bucket_of(w, buckets)
                    b1 = one["bucket"][str(B)]
                    comm = (two or {}).get("bucket", {}).get(str(B), {}).get("comm_s", 0.0) if g > 1 else 0.0
                    s += call[-(-B // g)] + (b1["wall_s"] - b1["model_s"]) + comm
                tot.append(s)
            proj[g] = _mean(tot)
        rep1 = _mean((one.get("replay", {}).get(W) or {}).get("total_s", []))
        rep2 = _mean(((two or {}).get("replay", {}).get(W) or {}).get("total_s", []))
        sp = f"{seq_g / proj[8]:.2f}x" if seq_g else "-"
        lines.append(f"| {W} | {proj[1]:.3f} / {_fmt_num(rep1)} | {proj[2]:.3f} / {_fmt_num(rep2)} | {proj[4]:.3f} | "
                     f"{proj[8]:.3f} | {sp} |")
    return lines + [""]


def _share(one, dev) -> list[str]:
    W = str(one["steps"])
    lines = [f"Solver share of an iteration at W = {W} (1 GPU, {dev}; goal <= 5%): graphed = (iteration wall - model "
             "call) / iteration wall, the model call timed by CUDA events; eager = the reference loop's solver_s / "
             "(model_s + solver_s).", "", "| solver | engine | model ms | iteration ms | solver share |",
             "|---|---|---|---|---|"]
    for label, r in one["share"].items():
        sh = (r["wall_s"] - r["model_s"] - r["comm_s"]) / r["wall_s"]
        lines.append(f"| {label} | graphed | {1e3 * r['model_s']:.2f} | {1e3 * r['wall_s']:.2f} | {100 * sh:.1f}% "
                     f"({'met' if sh <= 0.05 else 'missed'}) |")
    e = one.get("eager", {}).get(W)
    if e:
        sh = e["solver_s"] / e["iteration_s"]
        lines.append(f"| taa-euler | eager | {1e3 * e['model_s']:.2f} | {1e3 * e['iteration_s']:.2f} | {100 * sh:.1f}% "
                     f"({'met' if sh <= 0.05 else 'missed'}) |")
    return lines + [""]


def _figure(figdata, figdir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(figdata), figsize=(5 * len(figdata), 3.6), layout="constrained", squeeze=False)
    names = {"xl": "DiT-XL/2-shaped", "sd": "SD-v1.5-UNet-shaped"}
    for ax, (key, f) in zip(axes[0], figdata.items(), strict=True):
        ax.plot(f["W"], f["r1"], "o-", label="taa-euler, 1 GPU (replay)")
        ax.plot(f["W"], f["r2"], "s-", label="taa-euler, 2 GPUs (replay)")
        if f.get("seq"):
            ax.axhline(f["seq"], color="grey", ls="--", label="sequential, CUDA graph per step")
        ax.set_xscale("log", base=2)
        ax.set_xticks(f["W"], [str(w) for w in f["W"]])
        ax.set_xlabel("window W")
        ax.set_ylabel("seconds per sample")
        ax.set_title(names[key])
        ax.legend(fontsize=8)
    fig.savefig(figdir / "wallclock_windows.png", dpi=110)
    plt.close(fig)


def _fmt_ms(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{1e3 * v:.1f}"


def _fmt_s(v) -> str:
    return "-" if v is None else f"{v:.3f} s"


def _fmt_num(v) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.3f}"
