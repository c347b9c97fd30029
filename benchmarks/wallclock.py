"""Wall-clock of the static and graphed engines against the sequential baselines, measured side by side.

Sections (each writes one JSON file; benchmarks/gpu_all.sh runs them all, benchmarks/report.py turns the JSON into
RESULTS.md and results/summary.json):

  tiny     tiny-dit (trained, embedded), DDIM-100, one sample per solve: sequential baselines (the eager loop, a
           CUDA graph of one whole step, torch.compile inside that graph, a plain diffusers DDIMScheduler loop),
           ParaDiGMS-Picard and TAA on the Euler splitting, eager and graphed, per seed with PSNR against the
           sequential image; batch throughput (N samples in one solve); the window sequences of TAA at each W;
           float32 against float64 Anderson least squares.
  sd       tiny-sd, DDIM-100: diffusers' StableDiffusionParadigmsPipeline (the peer) against this package's
           Picard (same iteration counts step for step) and TAA; the window sequences of TAA at each W.
  families DPM-Solver++(2M)-25 on tiny-dit and tiny-sd, flow-Euler-50 on tiny-flow: the graphed sequential sampler
           of each family against graphed Picard, taa-euler and the fidelity-target rule, per seed with PSNR.
  windows  DiT-XL/2- and SD-v1.5-UNet-shaped models (random weights, fp16; only the cost of a call means anything):
           per-iteration time for every window bucket (graphed) and at W in {8, 16, 32, 50, 100} (the eager loop),
           the graphed sequential baseline, a replay of the embedded models' window sequences at each W, the
           solver's share of an iteration at W = 100, and per-rank call times for a 4-/8-GPU projection. Under
           torchrun the model call is spread over the ranks (DistributedDenoiser over NCCL, one network call per
           rank, collectives eager, the rest of the iteration captured: engine "graphed-solver").

    python benchmarks/wallclock.py tiny --out tiny.json
    python benchmarks/wallclock.py sd --out sd.json
    python benchmarks/wallclock.py windows --models xl,sd --sequences tiny.json,sd.json --out windows1.json
    python benchmarks/wallclock.py families --out families.json
    torchrun --nproc_per_node 2 benchmarks/wallclock.py windows --sequences tiny.json,sd.json --out windows2.json
    torchrun --nproc_per_node 2 benchmarks/wallclock.py windows --ranks-per-gpu 2 --out shared.json  # 1 GPU, 2 ranks:
                                                                    # the code path; its timings mean nothing
    python benchmarks/wallclock.py tiny --device cpu --small --out /tmp/tiny.json     # CPU smoke run
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import EvenSplit, sd_denoiser, time_call, timed, xl_denoiser  # noqa: E402

from parataa import draw_noise  # noqa: E402
from parataa.fidelity import psnr_db  # noqa: E402
from parataa.solvers import preset, solve  # noqa: E402
from parataa.solvers.static import StaticSolver, default_buckets  # noqa: E402

WINDOWS = (8, 16, 32, 50, 100)
# the exact solvers timed on the embedded models (label -> preset, its options, StaticSolver options); the report
# picks the fastest whose every seed ends >= 40 dB from the sequential image, and the fastest such Picard as the
# matched-fidelity peer. "ls-float32" is the documented float32 least-squares option, never a default.
PARALLEL = {
    "picard": ("picard", {}, {}),
    "picard ptol0.05": ("picard", {"picard_tol": 0.05}, {}),
    "taa-euler": ("taa-euler", {}, {}),
    "taa-euler m3": ("taa-euler", {"history": 3}, {}),
    "taa-euler ls-float32": ("taa-euler", {}, {"ls_dtype": torch.float32}),
    "taa-euler sum0.02": ("taa-euler", {"sum_tol": 0.02}, {}),
    "target40": ("taa-euler", {"stop": "target", "target_db": 40.0}, {}),  # the fidelity-target rule
    # the converged prefix frozen (docs/METHOD.md section 9): fewer states, so smaller window buckets per iteration
    "taa-euler freeze0.02": ("taa-euler", {"freeze_frac": 0.02}, {}),
}
# the families section: the samplers beyond the paper (docs/METHOD.md section 12), graphed, against a graphed
# sequential sampler of the same family (label -> preset, its options)
FAMILY_CELLS = "tiny-dit:dpmpp-2m:25,tiny-sd:dpmpp-2m:25,tiny-flow:flow-euler:50"
FAMILY_SOLVERS = {
    "sequential": ("sequential", {}),
    "picard": ("picard", {}),
    "taa-euler": ("taa-euler", {}),
    "target40": ("taa-euler", {"stop": "target", "target_db": 40.0}),
}
EAGER_TOO = ("picard", "taa-euler")  # also run through the eager reference loops, for context


T0 = time.perf_counter()


def progress(msg: str) -> None:
    """A timestamped line on stdout: where the minutes of a run go (benchmarks/gpu_all.sh keeps the logs)."""
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def graph_engine(device: torch.device) -> str:
    return "graphed" if device.type == "cuda" else "static"


def psnrs(x0: torch.Tensor, ref: torch.Tensor) -> list[float]:
    return [min(float(v), 999.0) for v in psnr_db(x0.cpu(), ref.cpu())]


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def captured(model, sched, cfg, shape, noise, dev, engine: str, **options) -> StaticSolver:
    """A one-sample StaticSolver with every bucket's graphs captured and one solve run (before any timed solve)."""
    solver = StaticSolver(model, sched, cfg, num_samples=1, sample_shape=shape, device=dev, engine=engine, **options)
    solver.prepare(noise)
    solver.solve(noise)
    return solver


def interleaved(engines: dict[str, StaticSolver], one: list, rounds: int, record, runs: list, name: str) -> None:
    """Times every engine on every seed in interleaved rounds (the order rotated each round), so clock drift and
    warm-up fall on every solver alike. `record(label, i, res, wall)` appends one row to `runs` for the first round
    (iterations, PSNR and timings are deterministic); each row's wall time becomes its median over the rounds."""
    labels = list(engines)
    walls: dict[str, list[list[float]]] = {label: [[] for _ in one] for label in labels}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for r in range(rounds):
        progress(f"{name}: timing round {r + 1}/{rounds} ({len(labels)} engines x {len(one)} seeds)")
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:
            for i in range(len(one)):
                res, wall = timed(lambda i=i, label=label: engines[label].solve(one[i]))
                walls[label][i].append(wall)
                if (label, i) not in rows:
                    record(label, i, res, wall)
                    rows[(label, i)] = runs[-1]
    for (label, i), row in rows.items():
        row["wall_s"], row["wall_s_rounds"] = statistics.median(walls[label][i]), walls[label][i]


# ----------------------------------------------------------------------------------------------------- tiny
def embedded_setup(name: str, args: argparse.Namespace) -> tuple[Any, ...]:
    """(device, T, seeds, model, its spec, schedule, all seeds' noise, one bundle per seed, graph engine) of an
    embedded model at DDIM-T. The model's conditions cycle over the ten digits by sample position: a one-sample
    solve (one bundle per seed) is conditioned on digit 0, a batch of N on digits 0..N-1."""
    from parataa.models.registry import build_denoiser

    dev = torch.device(args.device)
    T, seeds = args.steps, list(range(args.seeds))
    model, spec = build_denoiser(name, [s % 10 for s in seeds], cfg_scale=5.0, device=dev, dtype=torch.float32)
    sched = spec(T, sampler="ddim")
    noise_all = draw_noise(seeds, T, spec.sample_shape).to(dev)
    return dev, T, seeds, model, spec, sched, noise_all, [noise_all.select([i]) for i in seeds], graph_engine(dev)


def run_tiny(args: argparse.Namespace) -> dict[str, Any]:
    dev, T, seeds, model, spec, sched, noise_all, one, eng = embedded_setup("tiny-dit", args)
    out: dict[str, Any] = {"runs": [], "batch": [], "sequences": {}, "lsq": [], "errors": {}}

    def record(label: str, engine: str, i: int, res, wall: float, ref: torch.Tensor | None) -> None:
        tm = res.timings
        out["runs"].append({
            "solver": label, "engine": engine, "seed": seeds[i], "wall_s": wall,
            "iterations": int(res.iterations[0]), "nfe": int(res.nfe[0]),
            "model_s": float(tm.model_s.sum()), "solver_s": float(tm.solver_s.sum()),
            "psnr": psnrs(res.x0, ref)[0] if ref is not None else 999.0,
            "rows": tm.rows.tolist(),
        })

    # sequential reference images: the eager loop, one sample at a time (what every parallel solve is compared with)
    solve(model, sched, one[0], preset("sequential"))  # warm-up
    refs = []
    for i in seeds:
        res, wall = timed(lambda i=i: solve(model, sched, one[i], preset("sequential")))
        refs.append(res.x0)
        record("sequential", "eager", i, res, wall, None)

    engines: dict[str, StaticSolver] = {}

    def build(label: str, cfg, net=None, **options) -> None:
        progress(f"tiny: capture {label} ({eng})")
        engines[label] = captured(net or model, sched, cfg, spec.sample_shape, one[0], dev, eng, **options)
        out.setdefault("capture_s", {})[f"{label}/{eng}"] = engines[label].capture_s

    build("sequential", preset("sequential"))
    if args.compile and dev.type == "cuda":
        try:
            compiled = copy.copy(model)
            compiled.transformer = torch.compile(model.transformer)
            t0 = time.perf_counter()
            build("sequential-compiled", preset("sequential"), compiled)
            out["compile_and_capture_s"] = time.perf_counter() - t0
        except Exception as err:  # torch.compile does not run everywhere: record why, keep the rest
            out["errors"]["sequential-compiled"] = f"{type(err).__name__}: {err}"[:2000]
    for label, (name, opts, options) in PARALLEL.items():
        build(label, preset(name, **opts), **options)
    interleaved(engines, one, args.rounds, lambda label, i, res, wall: record(label, eng, i, res, wall, refs[i]),
                out["runs"], "tiny")
    engines.clear()
    release()
    progress("tiny: diffusers loop")
    try:
        out["runs"] += diffusers_loop(model, one, refs, T, dev, seeds)
    except Exception as err:
        out["errors"]["sequential-diffusers"] = f"{type(err).__name__}: {err}"[:2000]
    for label in EAGER_TOO:  # the eager reference loops, once per seed (context, not a headline)
        name, opts, _ = PARALLEL[label]
        cfg = preset(name, **opts)
        solve(model, sched, one[0], cfg)
        for i in seeds:
            res, wall = timed(lambda i=i, cfg=cfg: solve(model, sched, one[i], cfg))
            record(label, "eager", i, res, wall, refs[i])
    # batch throughput: N samples in one solve (sequential batch vs parallel)
    progress("tiny: batch throughput")
    for n in args.batch:
        if n > len(seeds):
            continue
        noise = noise_all.select(list(range(n)))
        # the batch's own reference: sample j of a batch is conditioned on digit j (the one-sample refs on digit 0)
        ref_n = solve(model, sched, noise, preset("sequential")).x0
        for label, cfg in (("sequential", preset("sequential")), ("taa-euler", preset("taa-euler")),
                           ("picard", preset("picard"))):
            solver = StaticSolver(model, sched, cfg, num_samples=n, sample_shape=spec.sample_shape, device=dev,
                                  engine=eng)
            solver.prepare(noise)
            solver.solve(noise)
            walls = []
            for _ in range(3):
                res, wall = timed(lambda solver=solver, noise=noise: solver.solve(noise))
                walls.append(wall)
            out["batch"].append({"solver": label, "engine": eng, "samples": n, "wall_s": statistics.median(walls),
                                 "iterations": res.iterations.tolist(),
                                 "psnr_min": min(psnrs(res.x0, ref_n))})
            del solver
            release()
    progress("tiny: window sequences")
    out["sequences"] = window_sequences(model, sched, spec.sample_shape, one, refs, dev, args.seq_solver)
    progress("tiny: float32 least squares")
    # float32 against float64 Anderson least squares (same engine, same model, the static path)
    for label in ("taa-euler", "taa-euler m3"):
        name, opts, _ = PARALLEL[label]
        for i in seeds:
            r64 = solve(model, sched, one[i], preset(name, **opts), engine="static")
            r32 = solve(model, sched, one[i], preset(name, **opts), engine="static", ls_dtype=torch.float32)
            out["lsq"].append({"solver": label, "seed": seeds[i], "iterations64": int(r64.iterations[0]),
                               "iterations32": int(r32.iterations[0]),
                               "max_abs_x0": float((r32.x0 - r64.x0).abs().max()),
                               "psnr_32_vs_64": psnrs(r32.x0, r64.x0)[0], "psnr64": psnrs(r64.x0, refs[i])[0],
                               "psnr32": psnrs(r32.x0, refs[i])[0]})
    return out


def diffusers_loop(model, one, refs, T, dev, seeds) -> list[dict[str, Any]]:
    """The plain baseline: diffusers' DDIMScheduler.step loop with the same adapter (float32 state), configured as
    DiT's DDIM respacing (linear betas, stride 1000/T, final alphabar 1)."""
    from diffusers import DDIMScheduler

    ds = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                       clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    ds.set_timesteps(T, device=dev)

    def loop(i: int) -> torch.Tensor:
        x = one[i].x_T.to(torch.float32)
        s = torch.zeros(1, dtype=torch.long, device=dev)
        with torch.no_grad():
            for t in ds.timesteps:
                eps = model(x, t.reshape(1), s)
                x = ds.step(eps, t, x, eta=0.0).prev_sample
        return x

    loop(0)
    rows = []
    for i in range(len(one)):
        x0, wall = timed(lambda i=i: loop(i))
        rows.append({"solver": "sequential-diffusers", "engine": "eager", "seed": seeds[i], "wall_s": wall,
                     "iterations": T, "nfe": T, "model_s": math.nan, "solver_s": math.nan,
                     "psnr": psnrs(x0.double(), refs[i])[0], "rows": []})
    return rows


def window_sequences(model, sched, shape, one, refs, dev, solver_name: str) -> dict[str, Any]:
    """Per W: every seed's window widths per iteration (what the XL/SD replays run), iterations and PSNR."""
    out = {}
    for W in WINDOWS:
        cfg = preset(solver_name, window=min(W, sched.num_steps))
        solver = StaticSolver(model, sched, cfg, num_samples=1, sample_shape=shape, device=dev,
                              engine=graph_engine(dev))
        runs = [solver.solve(noise) for noise in one]
        out[str(W)] = {"solver": solver_name, "widths": [r.timings.rows.tolist() for r in runs],
                       "iterations": [int(r.iterations[0]) for r in runs],
                       "psnr": [psnrs(r.x0, refs[i])[0] for i, r in enumerate(runs)]}
        del solver
        release()
    return out


# ------------------------------------------------------------------------------------------------------- sd
def run_sd(args: argparse.Namespace) -> dict[str, Any]:
    from parataa.models.embedded import digit_prompt

    dev, T, seeds, model, spec, sched, noise_all, one, eng = embedded_setup("tiny-sd", args)
    out: dict[str, Any] = {"runs": [], "errors": {}, "prompts": [digit_prompt(s % 10) for s in seeds]}
    refs = [solve(model, sched, one[i], preset("sequential")).x0 for i in seeds]

    def add(label, engine, i, res, wall):
        out["runs"].append({"solver": label, "engine": engine, "seed": seeds[i], "wall_s": wall,
                            "iterations": int(res.iterations[0]), "psnr": psnrs(res.x0, refs[i])[0]})

    for label, cfg, engines in (("sequential", preset("sequential"), ("eager", eng)),
                                ("picard", preset("picard"), ("eager", eng)),
                                ("taa-euler", preset("taa-euler"), (eng,))):
        for engine in engines:
            progress(f"sd: {label} ({engine})")
            if engine == "eager":
                run = lambda i, cfg=cfg: solve(model, sched, one[i], cfg)  # noqa: E731
            else:
                solver = StaticSolver(model, sched, cfg, num_samples=1, sample_shape=spec.sample_shape, device=dev,
                                      engine=engine)
                solver.prepare(one[0])
                run = lambda i, solver=solver: solver.solve(one[i])  # noqa: E731
            run(0)
            for i in range(len(seeds)):
                res, wall = timed(lambda i=i, run=run: run(i))
                add(label, engine, i, res, wall)
    progress("sd: paradigms pipeline")
    try:
        out["runs"] += paradigms_pipeline(model, spec, one, refs, T, dev, seeds)
    except Exception as err:
        out["errors"]["paradigms"] = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"[:4000]
    progress("sd: window sequences")
    out["sequences"] = window_sequences(model, sched, spec.sample_shape, one, refs, dev, args.seq_solver)
    return out


def paradigms_pipeline(model, spec, one, refs, T, dev, seeds) -> list[dict[str, Any]]:
    """diffusers' StableDiffusionParadigmsPipeline on tiny-sd's UNet: no VAE (output_type "latent"; height and width
    given as 8 x 16 so that its default VAE factor 8 gives the 16x16 pixel-space states), no tokenizer or text
    encoder (the adapter's prompt embeddings passed in), no safety checker; DDIMParallelScheduler from tiny-sd's
    scheduler config, parallel = T, tolerance 0.1 (our Picard's defaults), the same x_T."""
    from diffusers import DDIMParallelScheduler, StableDiffusionParadigmsPipeline

    pipe = StableDiffusionParadigmsPipeline(
        vae=None, text_encoder=None, tokenizer=None, unet=model.unet,
        scheduler=DDIMParallelScheduler.from_config(spec.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    size = 8 * spec.sample_shape[-1]

    calls = []  # one batched UNet call per parallel iteration (the pipeline's own callback indexes out of range)
    hook = model.unet.register_forward_pre_hook(lambda *a: calls.append(1))

    def run(i: int):
        calls.clear()
        with torch.no_grad():
            x = pipe(prompt_embeds=model.cond[i : i + 1], negative_prompt_embeds=model.uncond,
                     num_inference_steps=T, parallel=T, tolerance=0.1, guidance_scale=model.cfg_scale,
                     latents=one[i].x_T.to(torch.float32), height=size, width=size, output_type="latent").images
        return x, len(calls)

    run(0)
    rows = []
    for i in range(len(one)):
        (x0, iters), wall = timed(lambda i=i: run(i))
        rows.append({"solver": "paradigms-pipeline", "engine": "diffusers", "seed": seeds[i], "wall_s": wall,
                     "iterations": iters, "psnr": psnrs(x0.double(), refs[i])[0]})
    hook.remove()
    return rows


# -------------------------------------------------------------------------------------------------- windows
def run_windows(args: argparse.Namespace) -> dict[str, Any]:
    from parataa import dit_schedule, from_diffusers_config
    from parataa.distributed import DistributedDenoiser, cleanup, init_from_env
    from parataa.models.embedded import SD_V1_5_SCHEDULER

    env = init_from_env(device="cpu" if args.device == "cpu" else None, ranks_per_gpu=args.ranks_per_gpu)
    dev, world = env.device, env.world_size
    T = args.steps
    seqs = {}
    for key, path in zip(("xl", "sd"), args.sequences.split(","), strict=False):
        if path and Path(path).exists():
            seqs[key] = json.loads(Path(path).read_text())["sequences"]
    out: dict[str, Any] = {"world_size": world, "device": device_name(dev), "models": {}, "errors": {},
                           "ranks_per_gpu": env.ranks_per_gpu, "backend": env.backend}
    if world > 1 and env.ranks_per_gpu > 1 and dev.type == "cuda":
        # ranks that share a GPU queue on it and talk through gloo: the run proves the code path, nothing of speed
        out["timings_meaningless"] = "ranks share GPUs (ranks_per_gpu > 1, gloo): the timings say nothing of speed"
    buckets = sorted(set().union(*(default_buckets(min(w, T)) for w in WINDOWS)))
    for key in args.models.split(","):
        try:
            out["models"][key] = windows_model(key, args, dev, world, T, buckets, seqs.get(key), dit_schedule,
                                               from_diffusers_config, SD_V1_5_SCHEDULER, DistributedDenoiser)
        except Exception as err:
            out["errors"][key] = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"[:4000]
        release()
    cleanup()
    return out if env.is_main else {}


def windows_model(key, args, dev, world, T, buckets, seqs, dit_schedule, from_diffusers_config, sd_sched, Dist):
    from parataa.cuda_graphs import GraphedDenoiser

    if key == "xl":
        inner = xl_denoiser(dev, [207], small=args.small)
        sched = dit_schedule(T)
    else:
        inner = sd_denoiser(dev, ["a photograph of an astronaut riding a horse"], small=args.small)
        sched = from_diffusers_config(sd_sched, T)
    shape = inner.sample_shape
    progress(f"{key}: model ready (world size {world})")
    noise = draw_noise([0], T, shape).to(dev)
    res: dict[str, Any] = {"sample_shape": list(shape), "buckets": buckets, "steps": T}
    if world > 1:
        eager_model = EvenSplit(Dist(inner, chunk_size=1))
        graph_model = EvenSplit(Dist(GraphedDenoiser(inner), chunk_size=1))
        engine = "graphed-solver" if dev.type == "cuda" else "static"
    else:
        eager_model, graph_model, engine = inner, inner, graph_engine(dev)
    res["engine"] = engine
    # per-iteration time of the eager reference loop at full window W (stopping switched off: the window stays W)
    res["eager"] = {}
    for W in WINDOWS:
        W = min(W, T)
        cfg = preset("taa-euler", window=W, stop="step", abs_tol=1e-30, rel_tol=0.0, max_iters=args.iters + 1)
        r = solve(eager_model, sched, noise, cfg)
        tm = r.timings.iloc[1:]  # the first iteration has no history yet
        res["eager"][str(W)] = {"iteration_s": statistics.median((tm.model_s + tm.solver_s + tm.comm_s).tolist()),
                                "model_s": statistics.median(tm.model_s.tolist()),
                                "solver_s": statistics.median(tm.solver_s.tolist()),
                                "comm_s": statistics.median(tm.comm_s.tolist())}
    release()
    progress(f"{key}: eager per-iteration times done")
    # the static engine, every bucket: per-iteration wall, model and communication time (one solver, all buckets)
    solver = StaticSolver(graph_model, sched, preset("taa-euler", window=T), num_samples=1, sample_shape=shape,
                          device=dev, engine=engine, buckets=buckets)
    res["bucket"] = {}
    for B in buckets:
        rows = solver.replay(noise, [B] * (args.iters + 1))[1:]
        res["bucket"][str(B)] = {k: statistics.median(r[k] for r in rows) for k in ("wall_s", "model_s", "comm_s")}
    res["capture_s"] = solver.capture_s
    progress(f"{key}: buckets done (captures {solver.capture_s:.1f} s)")
    # the embedded model's window sequences at each W, replayed on this model (seed by seed)
    res["replay"] = {}
    if seqs:
        for W in WINDOWS:
            widths = seqs.get(str(W), {}).get("widths", [])[: args.replay_seeds]
            totals = [sum(r["wall_s"] for r in solver.replay(noise, w)) for w in widths]
            if totals:
                res["replay"][str(W)] = {"total_s": totals, "iterations": [len(w) for w in widths],
                                         "solver": seqs[str(W)]["solver"]}
    del solver
    release()
    progress(f"{key}: replays done")
    # the solver's share of an iteration at W = T for several solvers (graphed; the eager loop's share is above)
    res["share"] = {}
    for label, (name, opts) in {"taa-euler": ("taa-euler", {}), "taa-euler m3": ("taa-euler", {"history": 3}),
                                "fp+": ("fp+", {}), "picard": ("picard", {})}.items():
        s = StaticSolver(graph_model, sched, preset(name, **opts), num_samples=1, sample_shape=shape, device=dev,
                         engine=engine, buckets=[T])
        rows = s.replay(noise, [T] * (args.iters + 1))[1:]
        res["share"][label] = {k: statistics.median(r[k] for r in rows) for k in ("wall_s", "model_s", "comm_s")}
        del s
        release()
    progress(f"{key}: solver shares done")
    if world == 1:
        # sequential baselines on this model: the eager loop and a CUDA graph of one whole step
        res["sequential"] = {}
        for engine_s in ("eager", graph_engine(dev)):
            if engine_s == "eager":
                run = lambda: solve(inner, sched, noise, preset("sequential"))  # noqa: E731
            else:
                sq = StaticSolver(inner, sched, preset("sequential"), num_samples=1, sample_shape=shape, device=dev,
                                  engine=engine_s)
                sq.prepare(noise)
                run = lambda sq=sq: sq.solve(noise)  # noqa: E731
            run()
            walls = [timed(run)[1] for _ in range(1 if engine_s == "eager" else 3)]
            res["sequential"][engine_s] = {"total_s": min(walls)}
        release()
        # per-rank call times (graphed network call on ceil(B/g) states) for the g-GPU projection
        progress(f"{key}: sequential baselines done")
        if dev.type == "cuda":
            g_model = GraphedDenoiser(inner, warmup=1)
            sizes = sorted({-(-B // g) for B in buckets for g in (1, 2, 4, 8)})
            res["call_s"] = {str(r): time_call(g_model, r, shape, dev) for r in sizes}
            del g_model
    progress(f"{key}: done")
    res["peak_memory_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else None
    return res



# ------------------------------------------------------------------------------------------------- families
def run_families(args: argparse.Namespace) -> dict[str, Any]:
    """DPM-Solver++(2M) and flow-Euler cells (`--cells model:sampler:steps,...`, cfg 5, one sample per solve): the
    graphed sequential sampler, Picard, taa-euler and the fidelity-target rule, timed in interleaved rounds; PSNR
    against the eager sequential image of the same cell."""
    from families import CONDITIONS

    from parataa.models.registry import build_denoiser

    dev, eng = torch.device(args.device), graph_engine(torch.device(args.device))
    seeds = list(range(args.seeds))
    out: dict[str, Any] = {"runs": [], "capture_s": {}, "errors": {}}
    for cell in args.cells.split(","):
        model_name, sampler, steps_s = cell.split(":")
        T, conds = int(steps_s), CONDITIONS[model_name]
        # one-sample solves: every bundle is conditioned on the first condition (as the tiny section's)
        model, spec = build_denoiser(model_name, [conds[0]] * len(seeds), cfg_scale=5.0, device=dev,
                                     dtype=torch.float32)
        sched = spec(T, sampler=sampler)
        noise_all = draw_noise(seeds, T, spec.sample_shape).to(dev)
        one = [noise_all.select([i]) for i in range(len(seeds))]
        refs = [solve(model, sched, one[i], preset("sequential")).x0 for i in range(len(seeds))]
        name = f"{model_name} {sampler}-{T}"
        engines = {}
        for label, (preset_name, opts) in FAMILY_SOLVERS.items():
            progress(f"{name}: capture {label} ({eng})")
            engines[label] = captured(model, sched, preset(preset_name, **opts), spec.sample_shape, one[0], dev, eng)
            out["capture_s"][f"{name}/{label}/{eng}"] = engines[label].capture_s

        def record(label, i, res, wall, model_name=model_name, sampler=sampler, T=T, refs=refs):
            out["runs"].append({
                "model": model_name, "sampler": sampler, "steps": T, "solver": label, "engine": eng,
                "seed": seeds[i], "wall_s": wall, "iterations": int(res.iterations[0]), "nfe": int(res.nfe[0]),
                "psnr": psnrs(res.x0, refs[i])[0]})

        interleaved(engines, one, args.rounds, record, out["runs"], name)
        engines.clear()
        del model
        release()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("section", choices=("tiny", "sd", "windows", "families"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--batch", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4, 8])
    ap.add_argument("--seq-solver", default="taa-euler", help="preset whose window sequences are recorded")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile baseline")
    ap.add_argument("--models", default="xl,sd", help="windows: xl and/or sd")
    ap.add_argument("--sequences", default="", help="windows: tiny.json,sd.json (window sequences to replay)")
    ap.add_argument("--rounds", type=int, default=5, help="tiny: interleaved timing rounds (median per seed)")
    ap.add_argument("--iters", type=int, default=3, help="windows: timed iterations per measurement")
    ap.add_argument("--replay-seeds", type=int, default=3, help="windows: seeds whose window sequences are replayed")
    ap.add_argument("--small", action="store_true", help="windows: small stand-ins for the XL/SD models (CPU)")
    ap.add_argument("--ranks-per-gpu", type=int, default=1,
                    help="windows under torchrun: up to K ranks share each GPU (gloo; the code path, not a timing)")
    ap.add_argument("--cells", default=FAMILY_CELLS, help="families: model:sampler:steps, comma-separated")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = {"tiny": run_tiny, "sd": run_sd, "windows": run_windows, "families": run_families}[args.section](args)
    if not data:
        return
    dev = torch.device(args.device) if args.section != "windows" else None
    data["setting"] = {k: v for k, v in vars(args).items() if k != "out"}
    # the summed rule's version: since it has one, windows that do not reach x_0 freeze states within their share
    data["setting"].update(sum_rule=2, torch=torch.__version__, wall_s=time.perf_counter() - t0,
                           device_name=data.get("device") or device_name(dev or torch.device(args.device)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=1, default=float))
    print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
