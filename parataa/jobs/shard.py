"""One cluster job: the runs of one (model, sampler, steps, seed shard), solved and stored.

`ShardJob` is a submitit checkpointable callable on a `JobSpec` (parataa.jobs.spec). It checks its process
(parataa.jobs.environment), loads the shard once (noise bundle, model from the registry, the sequential baseline)
and then solves and stores each run not already stored. After every solver iteration its callback keeps a
consistent copy of the full solver state (SolverState.state_dict) and, every `checkpoint_every_s`, writes it to
disk (parataa.jobs.checkpoint); when SLURM preempts or times the job out, submitit calls `checkpoint()`, which
writes the latest copy atomically and hands back a fresh `ShardJob` to requeue. The requeued job skips runs
whose manifest is already valid and resumes the interrupted one from its state with `resume=`, so it ends with
the same result, bit for bit, as an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import submitit
import torch

from .. import storage
from ..distributed import DistributedDenoiser, init_from_env
from ..fidelity import FidelityRecorder
from ..models import weights_identity
from ..models.registry import build_denoiser
from ..noise import NoiseBundle, load_noise
from ..schedules import Schedule
from ..solvers import SolveResult, SolverState, solve
from .checkpoint import load_state, remove_state, save_state, snapshot
from .environment import WorldSizeError, device_check, device_name, set_determinism, world_size_check
from .identity import weights_digest
from .spec import JobSpec, RunSpec

__all__ = ["ShardJob", "RunOutcome", "WorldSizeError", "status"]


def status(spec: JobSpec, msg: str) -> None:
    """One line per event on the job's stdout; the launcher echoes lines starting with [parataa]."""
    print(f"[parataa] {spec.name}: {msg}", flush=True)


@dataclass
class Shard:
    """What every run of a job shares, loaded once: the model, its schedule, the noise and the baseline."""

    model: Any  # the Denoiser the solvers call
    schedule: Schedule
    noise: NoiseBundle
    noise_sha256: str
    baseline: storage.Run | None  # the sequential run of the same seeds (None for the sequential job itself)
    device: str  # this process's device (cuda:<local rank> in a multi-GPU job)
    world_size: int
    rank: int
    weights: dict[str, Any]  # parataa.models.weights_identity: source, file hashes, synthetic or not


@dataclass
class Solved:
    """A finished solve and what the callback kept beside it."""

    result: SolveResult
    iterates: torch.Tensor | None  # [K, I, *S] float32
    fidelity: dict[str, np.ndarray] | None  # FidelityRecorder rows (parallel runs), None for the baseline
    wall_s: float


@dataclass(frozen=True)
class RunOutcome:
    """One solved run, for the job's status line and summary."""

    tag: str
    dir: str
    iterations_max: int
    iterations_mean: float
    err_max: float  # max distance of x0 to the baseline's over the shard (NaN without a baseline)
    wall_s: float

    @classmethod
    def of(cls, run: RunSpec, solved: Solved, baseline: storage.Run | None) -> RunOutcome:
        res = solved.result
        err = math.nan
        if baseline is not None:
            x0 = res.x0.detach().to("cpu", torch.float64).numpy()
            err = float(np.abs(x0 - baseline.x0).max())
        return cls(
            tag=run.tag,
            dir=run.dir,
            iterations_max=int(res.iterations.max()),
            iterations_mean=float(res.iterations.double().mean()),
            err_max=err,
            wall_s=solved.wall_s,
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ShardJob(submitit.helpers.Checkpointable):
    """Callable on a job spec (a JobSpec or its to_dict()); returns a summary dict."""

    def __init__(self) -> None:
        self._live: dict[str, Any] | None = None  # the run being solved: path, key, latest snapshot

    def __getstate__(self) -> dict[str, Any]:
        return {"_live": None}  # never pickle models or tensors into the requeued submission

    def checkpoint(self, spec: JobSpec | Mapping[str, Any]) -> submitit.helpers.DelayedSubmission:
        self.save_checkpoint()
        return submitit.helpers.DelayedSubmission(ShardJob(), spec)

    def save_checkpoint(self) -> Path | None:
        live = self._live
        if live is None or live.get("snapshot") is None or live.get("rank", 0) != 0:
            return None
        save_state(live["path"], live["key"], live["snapshot"])
        print(f"[parataa] checkpoint: {live['path']} (iteration {live['snapshot']['state']['iteration']})", flush=True)
        return live["path"]

    def __call__(self, spec: JobSpec | Mapping[str, Any]) -> dict[str, Any]:
        spec = JobSpec.coerce(spec)
        threads = torch.get_num_threads()
        restore = set_determinism(spec.deterministic)
        try:
            return self._call(spec)
        finally:  # matters only when the job runs inside another process (tests, executor "inline")
            restore()
            torch.set_num_threads(threads)

    def _call(self, spec: JobSpec) -> dict[str, Any]:
        t_job = time.perf_counter()
        world_size, rank = world_size_check(spec.world_size)
        device = spec.device
        device_check(device)
        if world_size > 1:
            # Every rank runs the same solver; only the model calls are spread (parataa.distributed).
            place = init_from_env(device="cpu" if device == "cpu" else None, ranks_per_gpu=spec.ranks_per_gpu)
            device = str(place.device)
        torch.set_num_threads(max(1, spec.threads))
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        todo = [r for r in spec.runs if not storage.is_complete(r.dir, spec.run_config(r))]
        status(
            spec,
            f"start: {len(spec.runs)} run(s), {len(spec.runs) - len(todo)} already done, "
            f"device {device}, world size {world_size}, restart {restart}",
        )
        summary: dict[str, Any] = {
            "name": spec.name,
            "runs": [],
            "job_id": os.environ.get("SLURM_JOB_ID"),
            "restart": restart,
        }
        load_peak = 0.0
        if todo:
            shard = self._load(spec, device, world_size, rank)
            load_peak = _restart_peak(device)  # the solves' own peak is measured from here
            for i, run in enumerate(todo):
                solved = self._solve(spec, run, shard)
                if rank == 0:  # every rank holds the same result; one writes it
                    self._store(spec, run, shard, solved)
                    remove_state(spec.state_path(run))
                out = RunOutcome.of(run, solved, shard.baseline)
                status(
                    spec,
                    f"run {i + 1}/{len(todo)} {run.tag}: iterations max {out.iterations_max}, "
                    f"mean {out.iterations_mean:.2f}, "
                    + ("the baseline" if math.isnan(out.err_max) else f"err_max {out.err_max:.2e}")
                    + f", {out.wall_s:.2f} s",
                )
                summary["runs"].append(out.to_dict())
        summary["runs_dirs"] = [r.dir for r in spec.runs]
        summary["wall_s"] = time.perf_counter() - t_job
        peak, solve_peak = _peak_gpu_memory_gib(device, world_size, load_peak)
        summary["peak_gpu_memory_gib"], summary["solve_peak_gpu_memory_gib"] = peak, solve_peak
        per_gpu = (
            f", peak GPU memory per rank {_gib(peak)} GiB (after loading: {_gib(solve_peak)} GiB)" if peak else ""
        )
        status(spec, f"done in {summary['wall_s']:.1f} s{per_gpu}")
        return summary

    # ------------------------------------------------------------------------------------------ steps

    def _load(self, spec: JobSpec, device: str, world_size: int, rank: int) -> Shard:
        """The noise bundle, the model and its schedule, the baseline: each checked against the spec."""
        noise_path = Path(spec.noise)
        noise = load_noise(noise_path)
        if list(noise.seeds) != list(spec.seeds) or noise.num_steps != spec.steps:
            raise ValueError(
                f"{noise_path}: bundle has seeds {list(noise.seeds)} and {noise.num_steps} steps; "
                f"the job needs seeds {list(spec.seeds)} and {spec.steps} steps (rerun the noise rule)"
            )
        m = spec.model
        den, info = build_denoiser(
            m.name,
            list(spec.conditions),
            cfg_scale=m.cfg_scale,
            device=device,
            dtype=m.dtype,
            chunk_size=None,  # the wrapper below hands it calls of exactly m.rows_per_call rows
            path=m.path,
            options=m.options,
        )
        # At every world size, 1 included: the same fixed-size chunks, so the same float32 rounding in every
        # network call and results that do not depend on the number of processes (parataa.distributed).
        den = DistributedDenoiser(den, chunk_size=m.rows_per_call)
        if tuple(info.sample_shape) != tuple(noise.sample_shape):
            raise ValueError(
                f"model {m.name} has state shape {tuple(info.sample_shape)} but the noise bundle has "
                f"{noise.sample_shape}; delete {noise_path} and rerun"
            )
        base = None
        if spec.baseline:
            base = storage.load_run(spec.baseline, tables=False)
            if list(base.seeds) != list(spec.seeds):
                raise ValueError(
                    f"{spec.baseline}: baseline seeds {list(base.seeds)} differ from the shard's "
                    f"{list(spec.seeds)}; rerun the baseline"
                )
            found = (base.manifest.get("config") or {}).get("weights_sha256")
            if found != m.weights:
                raise ValueError(
                    f"{spec.baseline}: baseline made with weights {found} but this job's are {m.weights}; "
                    "rerun the baseline (snakemake plans it again)"
                )
        weights = weights_identity(m.name, m.path) if rank == 0 else {}
        if rank == 0 and m.weights is not None and weights_digest(weights) != m.weights:
            raise ValueError(
                f"weights of {m.name} ({m.path or 'default'}) are {weights_digest(weights)}, not {m.weights} as "
                "planned: they changed since the plan; run snakemake again to plan the study with them"
            )
        return Shard(
            weights=weights,
            model=den,
            schedule=info(spec.steps, sampler=spec.sampler),
            noise=noise.to(device),
            noise_sha256=noise.sha256(),
            baseline=base,
            device=device,
            world_size=world_size,
            rank=rank,
        )

    def _solve(self, spec: JobSpec, run: RunSpec, shard: Shard) -> Solved:
        """Solve one run, resuming from its checkpoint if there is one, checkpointing as it goes."""
        cfg = run.config
        key = spec.run_key(run)
        spath = spec.state_path(run)
        payload = load_state(spath, key, shard.device)
        resume = SolverState.from_state_dict(payload["state"]) if payload else None
        wall_before = float(payload["wall_s"]) if payload else 0.0
        iterates: list[torch.Tensor] = list(payload["iterates"]) if payload else []
        recorder = self._recorder(spec, shard)
        if recorder is not None and payload:
            recorder.load_state_dict(payload["fidelity"])
        n_iter = spec.save_iterates
        total = spec.steps if run.solver == "sequential" else (cfg.max_iters or spec.steps)
        bar = None
        if spec.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=total,
                initial=resume.iteration if resume else 0,
                desc=run.tag,
                unit="it",
                bar_format="{desc}: iteration {n_fmt} (at most {total_fmt}) [{elapsed}, {rate_fmt}]",
                file=sys.stderr,
                mininterval=2.0,
                dynamic_ncols=False,
                ascii=True,
            )
        if resume is not None:
            status(spec, f"resuming {run.tag} from iteration {resume.iteration}")
        every = spec.checkpoint_every_s
        t0 = time.perf_counter()
        last_save = t0
        self._live = {"path": spath, "key": key, "snapshot": None, "rank": shard.rank}

        def on_iteration(it_info) -> None:
            nonlocal last_save
            if n_iter > 0:
                iterates.append(it_info.trajectory[:n_iter, 0].detach().to("cpu", torch.float32).clone())
            if recorder is not None:
                recorder(it_info)
            snap = {
                "state": snapshot(it_info.state),
                "iterates": list(iterates),
                "wall_s": wall_before + time.perf_counter() - t0,
            }
            if recorder is not None:
                snap["fidelity"] = recorder.state_dict()
            self._live["snapshot"] = snap  # one assignment: a signal sees the old or the new copy, both whole
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"frozen<= {int(it_info.frozen.max())}", refresh=False)
            if every > 0 and shard.rank == 0 and time.perf_counter() - last_save >= every:
                save_state(spath, key, snap)
                last_save = time.perf_counter()

        res = solve(shard.model, shard.schedule, shard.noise, cfg, callback=on_iteration, resume=resume)
        wall = wall_before + time.perf_counter() - t0
        if bar is not None:
            bar.close()
        self._live = None
        return Solved(
            result=res,
            iterates=torch.stack(iterates, dim=1) if iterates else None,
            fidelity=recorder.rows if recorder is not None else None,
            wall_s=wall,
        )

    @staticmethod
    def _recorder(spec: JobSpec, shard: Shard) -> FidelityRecorder | None:
        """For a parallel run: every iteration's x0 against the baseline's (states in [-1, 1]: data range 2),
        the decoded images too when the config asks (fidelity_decode) and the model has a decoder."""
        if shard.baseline is None:
            return None
        decode = _decoder(shard.model) if spec.fidelity_decode else None
        ref = torch.from_numpy(shard.baseline.x0).to(shard.noise.x_T.device)
        return FidelityRecorder(ref, data_range=2.0, decode=decode)

    def _store(self, spec: JobSpec, run: RunSpec, shard: Shard, solved: Solved) -> None:
        """Write the run's directory (parataa.storage.write_run)."""
        res, base = solved.result, shard.baseline
        m = spec.model
        x0 = res.x0.detach().to("cpu", torch.float64).numpy()
        device = device_name(spec.device)
        samples, conv, timings, fidelity = storage.run_tables(
            res,
            study=spec.study,
            model=m.name,
            sampler=spec.sampler,
            steps=spec.steps,
            solver=run.solver,
            solver_tag=run.tag,
            cfg_scale=m.cfg_scale,
            conditions=spec.conditions,
            wall_s=solved.wall_s,
            world_size=shard.world_size,
            device=device,
            ref_x0=None if base is None else base.x0,
            psnr=None if base is None else _psnr(x0, base.x0, shard.model),
            fidelity=solved.fidelity,
        )
        extra: dict[str, Any] = {
            "baseline": None,
            "schedule": storage.schedule_record(shard.schedule),
            "weights": shard.weights,
            # how the world's ranks met: one per GPU over NCCL (1), or up to this many sharing a GPU over gloo
            "ranks_per_gpu": spec.ranks_per_gpu,
        }
        if base is not None:
            extra["baseline"] = {
                "path": os.path.relpath(base.directory / "manifest.json", run.dir),
                "sha256": storage.sha256_file(base.directory / "manifest.json"),
            }
        storage.write_run(
            run.dir,
            samples=samples,
            convergence=conv,
            timings=timings,
            trajectory=res.trajectory.detach().to("cpu", torch.float32).numpy(),
            x0=x0,
            seeds=spec.seeds,
            config=spec.run_config(run),
            noise_sha256=shard.noise_sha256,
            devices=[device],
            world_size=shard.world_size,
            iterates=solved.iterates.numpy() if solved.iterates is not None else None,
            fidelity=fidelity,
            extra=extra,
        )


def _restart_peak(device: str) -> float:
    """The peak allocated GPU memory so far (GiB; 0 on the CPU), then the peak counter restarted."""
    if not str(device).startswith("cuda"):
        return 0.0
    dev = torch.device(device)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30
    torch.cuda.reset_peak_memory_stats(dev)
    return peak


def _peak_gpu_memory_gib(
    device: str, world_size: int, load_peak: float
) -> tuple[list[float], list[float]] | tuple[None, None]:
    """Every rank's peak allocated GPU memory (GiB, rank order) over the whole job and after loading (the solves
    alone; `load_peak` is the peak up to then); (None, None) on the CPU. A collective when world_size > 1: every
    rank calls it."""
    if not str(device).startswith("cuda"):
        return None, None
    after = torch.cuda.max_memory_allocated(torch.device(device)) / 2**30
    mine = (max(load_peak, after), after)
    if world_size == 1:
        return [mine[0]], [mine[1]]
    out: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(out, mine)
    return [float(v[0]) for v in out], [float(v[1]) for v in out]


def _gib(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _decoder(model: Any) -> Any:
    """The model's decode (x0 -> images in [0, 1]), through a DistributedDenoiser; None when it has none."""
    decode = getattr(getattr(model, "inner", model), "decode", None)
    return decode if callable(decode) else None


def _psnr(x0: np.ndarray, ref: np.ndarray, model: Any) -> np.ndarray:
    """PSNR (dB, data range [0, 1]) of decoded images; NaN where the model has no image space."""
    decode = _decoder(model)
    if decode is None:
        return np.full(x0.shape[0], np.nan)
    a = np.asarray(decode(torch.from_numpy(x0)), dtype=np.float64)
    b = np.asarray(decode(torch.from_numpy(ref)), dtype=np.float64)
    mse = ((a - b) ** 2).reshape(a.shape[0], -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return np.where(mse > 0, -10 * np.log10(mse), np.inf)
