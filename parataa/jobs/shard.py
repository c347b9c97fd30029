"""One cluster job: the runs of one (model, sampler, steps, seed shard), solved and stored.

`ShardJob` is a submitit checkpointable callable. After every solver iteration its callback keeps a consistent
copy of the full solver state (SolverState.state_dict) and, every `checkpoint_every_s`, writes it to disk; when
SLURM preempts or times the job out, submitit calls `checkpoint()`, which writes the latest copy atomically and
hands back a fresh `ShardJob` to requeue. The requeued job skips runs whose manifest is already valid and
resumes the interrupted one from its state with `resume=`, so it ends with the same result, bit for bit, as an
uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import submitit
import torch

from .. import storage
from ..noise import load_noise
from ..solvers import SolverConfig, SolverState, solve
from .models import build_model

__all__ = ["ShardJob", "WorldSizeError", "run_key", "save_state", "load_state", "status"]

STATE_FORMAT = "parataa.solver_state/1"


class WorldSizeError(RuntimeError):
    """The job has a different number of processes than the study config asks for."""


def status(spec: dict[str, Any], msg: str) -> None:
    """One line per event on the job's stdout; the launcher echoes lines starting with [parataa]."""
    print(f"[parataa] {spec['name']}: {msg}", flush=True)


def run_config(spec: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The full cell config stored in the manifest (and compared to decide whether a run is done)."""
    m = spec["model"]
    return {
        "study": spec["study"],
        "model": m["name"],
        "model_options": m.get("options") or {},
        "model_path": m.get("path"),
        "dtype": m.get("dtype"),
        "chunk_size": m.get("chunk_size"),
        "cfg_scale": float(m["cfg_scale"]),
        "sampler": spec["sampler"],
        "steps": int(spec["steps"]),
        "shard": int(spec["shard"]),
        "seeds": [int(s) for s in spec["seeds"]],
        "conditions": list(spec["conditions"]),
        "solver": run["solver"],
        "solver_tag": run["tag"],
        "solver_config": dict(run["config"]),
        "device": spec["device"],
        "world_size": int(spec["world_size"]),
        "save_iterates": int(spec["save_iterates"]),
        "deterministic": bool(spec.get("deterministic", True)),
    }


def run_key(spec: dict[str, Any], run: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(run_config(spec, run), sort_keys=True).encode()).hexdigest()


def state_path(spec: dict[str, Any], run: dict[str, Any]) -> Path:
    m = spec["model"]["name"]
    return (
        Path(spec["state_dir"])
        / m
        / f"{spec['sampler']}-{spec['steps']}"
        / run["tag"]
        / f"shard-{spec['shard']}"
        / "state.pt"
    )


# ------------------------------------------------------------------------------------ solver state I/O


def save_state(path: Path, key: str, payload: dict[str, Any]) -> None:
    """torch.save the checkpoint atomically, then its sha256 (a checkpoint without a matching hash is ignored)."""
    buf = io.BytesIO()
    torch.save({"format": STATE_FORMAT, "key": key, **payload}, buf)
    digest = storage.atomic_write_bytes(path, buf.getvalue())
    storage.atomic_write_json(path.with_name(path.name + ".json"), {"sha256": digest, "key": key})


def load_state(path: Path, key: str, device: str) -> dict[str, Any] | None:
    """The checkpoint of the run with this key, or None when there is none, or it is corrupt, truncated or
    from a different config (then the run starts over, which gives the same result)."""
    side = path.with_name(path.name + ".json")
    if not path.is_file() or not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
        raw = path.read_bytes()
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("key") != key or hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
        print(f"[parataa] ignoring checkpoint {path}: hash or config does not match", file=sys.stderr, flush=True)
        return None
    payload = torch.load(io.BytesIO(raw), map_location=device, weights_only=True)
    if payload.get("format") != STATE_FORMAT or payload.get("key") != key:
        return None
    return payload


def _snapshot(state: SolverState) -> dict[str, Any]:
    """A copy of the state that later in-place updates cannot change (log entries are never mutated)."""
    out: dict[str, Any] = {}
    for k, v in state.state_dict().items():
        if isinstance(v, torch.Tensor):
            out[k] = v.detach().clone()
        elif isinstance(v, list):
            out[k] = list(v)
        else:
            out[k] = v
    return out


# ------------------------------------------------------------------------------------------ the job


def world_size_check(expected: int) -> tuple[int, int]:
    """(world size, rank) of this job, checked against the config before any weights are loaded."""
    try:
        env = submitit.JobEnvironment()
        actual, rank = int(env.num_tasks), int(env.global_rank)
    except RuntimeError:  # not inside a submitit job (tests, inline runs)
        actual, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if actual != expected:
        raise WorldSizeError(
            f"world_size: the study config asks for {expected} process(es) but this job has {actual}; set the "
            f"profile's tasks_per_node (x nodes) to {expected}, or world_size in the study config to {actual}"
        )
    return actual, rank


def _device_check(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device: the study config asks for {device!r} but this job sees no CUDA GPU "
            "(check the profile's gpus_per_node / partition, or set device: cpu)"
        )


def set_determinism(on: bool) -> Callable[[], None]:
    """Deterministic kernels and no TF32 (docs/METHOD.md section 10: bitwise reruns on the same hardware and software).
    Returns a function that restores the previous settings (for jobs run inside another process)."""
    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )

    def restore() -> None:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev[4], prev[5]

    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS initialises
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on
    torch.backends.cuda.matmul.allow_tf32 = not on
    torch.backends.cudnn.allow_tf32 = not on
    return restore


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


class ShardJob(submitit.helpers.Checkpointable):
    """Callable on a job spec (parataa.jobs.plan.baseline_spec / group_spec); returns a summary dict."""

    def __init__(self) -> None:
        self._live: dict[str, Any] | None = None  # the run being solved: path, key, latest snapshot

    def __getstate__(self) -> dict[str, Any]:
        return {"_live": None}  # never pickle models or tensors into the requeued submission

    def checkpoint(self, spec: dict[str, Any]) -> submitit.helpers.DelayedSubmission:
        self.save_checkpoint()
        return submitit.helpers.DelayedSubmission(ShardJob(), spec)

    def save_checkpoint(self) -> Path | None:
        live = self._live
        if live is None or live.get("snapshot") is None or live.get("rank", 0) != 0:
            return None
        save_state(live["path"], live["key"], live["snapshot"])
        print(f"[parataa] checkpoint: {live['path']} (iteration {live['snapshot']['state']['iteration']})", flush=True)
        return live["path"]

    def __call__(self, spec: dict[str, Any]) -> dict[str, Any]:
        threads = torch.get_num_threads()
        restore = set_determinism(bool(spec.get("deterministic", True)))
        try:
            return self._call(spec)
        finally:  # matters only when the job runs inside another process (tests, executor "inline")
            restore()
            torch.set_num_threads(threads)

    def _call(self, spec: dict[str, Any]) -> dict[str, Any]:
        t_job = time.perf_counter()
        world_size, rank = world_size_check(int(spec["world_size"]))
        device = spec["device"]
        _device_check(device)
        if world_size > 1:
            # Every rank runs the same solver; only the model calls are spread (parataa.distributed).
            from ..distributed import init_from_env

            device = str(init_from_env(device="cpu" if device == "cpu" else None).device)
        torch.set_num_threads(max(1, int(spec.get("threads", 1))))
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        todo = [r for r in spec["runs"] if not storage.is_complete(r["dir"], run_config(spec, r))]
        status(
            spec,
            f"start: {len(spec['runs'])} run(s), {len(spec['runs']) - len(todo)} already done, "
            f"device {device}, world size {world_size}, restart {restart}",
        )
        summary = {"name": spec["name"], "runs": [], "job_id": os.environ.get("SLURM_JOB_ID"), "restart": restart}
        if todo:
            noise_path = Path(spec["noise"])
            noise = load_noise(noise_path)
            if list(noise.seeds) != [int(s) for s in spec["seeds"]] or noise.num_steps != int(spec["steps"]):
                raise ValueError(
                    f"{noise_path}: bundle has seeds {list(noise.seeds)} and {noise.num_steps} steps; "
                    f"the job needs seeds {spec['seeds']} and {spec['steps']} steps (rerun the noise rule)"
                )
            noise_sha = noise.sha256()
            m = spec["model"]
            den, sched, shape, info = build_model(
                m["name"],
                spec["conditions"],
                sampler=spec["sampler"],
                steps=int(spec["steps"]),
                cfg_scale=float(m["cfg_scale"]),
                device=device,
                dtype=m.get("dtype"),
                chunk_size=m.get("chunk_size") if world_size == 1 else None,
                path=m.get("path"),
                options=m.get("options"),
            )
            if world_size > 1:
                from ..distributed import DistributedDenoiser

                den = DistributedDenoiser(den, chunk_size=int(m.get("chunk_size") or 8))
            if tuple(shape) != tuple(noise.sample_shape):
                raise ValueError(
                    f"model {m['name']} has state shape {shape} but the noise bundle has "
                    f"{noise.sample_shape}; delete {noise_path} and rerun"
                )
            noise = noise.to(device)
            base = None
            if spec.get("baseline"):
                base = storage.load_run(spec["baseline"], tables=False)
                if list(base.seeds) != [int(s) for s in spec["seeds"]]:
                    raise ValueError(
                        f"{spec['baseline']}: baseline seeds {list(base.seeds)} differ from the "
                        f"shard's {spec['seeds']}; rerun the baseline"
                    )
            for i, run in enumerate(todo):
                out = self._solve_and_store(spec, run, den, sched, noise, noise_sha, info, base, world_size, rank)
                status(
                    spec,
                    f"run {i + 1}/{len(todo)} {run['tag']}: iterations max {out['iterations_max']}, "
                    f"mean {out['iterations_mean']:.2f}, err_max {out['err_max']:.2e}, "
                    f"{out['wall_s']:.2f} s",
                )
                summary["runs"].append(out)
        summary["runs_dirs"] = [r["dir"] for r in spec["runs"]]
        summary["wall_s"] = time.perf_counter() - t_job
        status(spec, f"done in {summary['wall_s']:.1f} s")
        return summary

    def _solve_and_store(self, spec, run, den, sched, noise, noise_sha, info, base, world_size, rank):
        cfg = SolverConfig.from_dict(run["config"])
        key = run_key(spec, run)
        spath = state_path(spec, run)
        payload = load_state(spath, key, spec["device"])
        resume = SolverState.from_state_dict(payload["state"]) if payload else None
        wall_before = float(payload["wall_s"]) if payload else 0.0
        iterates: list[torch.Tensor] = list(payload["iterates"]) if payload else []
        n_iter = int(spec["save_iterates"])
        T = int(spec["steps"])
        total = T if run["solver"] == "sequential" else (cfg.max_iters or T)
        bar = None
        if spec.get("progress", True):
            from tqdm import tqdm

            bar = tqdm(
                total=total,
                initial=resume.iteration if resume else 0,
                desc=run["tag"],
                unit="it",
                file=sys.stderr,
                mininterval=2.0,
                dynamic_ncols=False,
                ascii=True,
            )
        if resume is not None:
            status(spec, f"resuming {run['tag']} from iteration {resume.iteration}")
        every = float(spec.get("checkpoint_every_s", 0))
        t0 = time.perf_counter()
        last_save = t0
        self._live = {"path": spath, "key": key, "snapshot": None, "rank": rank}

        def on_iteration(it_info) -> None:
            nonlocal last_save
            if n_iter > 0:
                iterates.append(it_info.trajectory[:n_iter, 0].detach().to("cpu", torch.float32).clone())
            snap = {
                "state": _snapshot(it_info.state),
                "iterates": list(iterates),
                "wall_s": wall_before + time.perf_counter() - t0,
            }
            self._live["snapshot"] = snap  # one assignment: a signal sees the old or the new copy, both whole
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"frozen<= {int(it_info.frozen.max())}", refresh=False)
            if every > 0 and rank == 0 and time.perf_counter() - last_save >= every:
                save_state(spath, key, snap)
                last_save = time.perf_counter()

        res = solve(den, sched, noise, cfg, callback=on_iteration, resume=resume)
        wall = wall_before + time.perf_counter() - t0
        if bar is not None:
            bar.close()
        self._live = None
        out = (
            self._store(
                spec,
                run,
                res,
                cfg,
                noise_sha,
                info,
                base,
                world_size,
                wall,
                torch.stack(iterates, dim=1) if iterates else None,
                den,
                sched,
            )
            if rank == 0
            else {}
        )
        for p in (spath, spath.with_name(spath.name + ".json")):
            if p.exists():
                p.unlink()
        return out

    def _store(self, spec, run, res, cfg, noise_sha, info, base, world_size, wall, iterates, den=None, sched=None):
        T = int(spec["steps"])
        m = spec["model"]
        x0 = res.x0.detach().to("cpu", torch.float64).numpy()
        device = _device_name(spec["device"])
        samples, conv, timings = storage.run_tables(
            res,
            study=spec["study"],
            model=m["name"],
            sampler=spec["sampler"],
            steps=T,
            solver=run["solver"],
            solver_tag=run["tag"],
            cfg_scale=m["cfg_scale"],
            conditions=spec["conditions"],
            wall_s=wall,
            world_size=world_size,
            device=device,
            ref_x0=None if base is None else base.x0,
            psnr=None if base is None else _psnr(x0, base.x0, info, den),
        )
        extra: dict[str, Any] = {"baseline": None}
        if sched is not None:
            extra["schedule"] = storage.schedule_record(sched)
        if base is not None:
            extra["baseline"] = {
                "path": os.path.relpath(base.directory / "manifest.json", run["dir"]),
                "sha256": storage.sha256_file(base.directory / "manifest.json"),
            }
        storage.write_run(
            run["dir"],
            samples=samples,
            convergence=conv,
            timings=timings,
            trajectory=res.trajectory.detach().to("cpu", torch.float32).numpy(),
            x0=x0,
            seeds=spec["seeds"],
            config=run_config(spec, run),
            noise_sha256=noise_sha,
            devices=[device],
            world_size=world_size,
            iterates=iterates.numpy() if iterates is not None else None,
            extra=extra,
        )
        return {
            "tag": run["tag"],
            "dir": run["dir"],
            "iterations_max": int(res.iterations.max()),
            "iterations_mean": float(res.iterations.double().mean()),
            "err_max": float(np.nanmax(samples["err_max"])) if base is not None else math.nan,
            "wall_s": wall,
        }


def _psnr(x0: np.ndarray, ref: np.ndarray, info: Any, den: Any) -> np.ndarray:
    """PSNR (dB, data range [0, 1]) of decoded images; NaN where the model has no image space."""
    decode = getattr(getattr(den, "inner", den), "decode", None) or info.get("decode")
    if callable(decode):
        a = np.asarray(decode(torch.from_numpy(x0)), dtype=np.float64)
        b = np.asarray(decode(torch.from_numpy(ref)), dtype=np.float64)
    elif info.get("pixel_range") is not None:
        lo, hi = info["pixel_range"]
        a = np.clip((x0 - lo) / (hi - lo), 0, 1)
        b = np.clip((ref - lo) / (hi - lo), 0, 1)
    else:
        return np.full(x0.shape[0], np.nan)
    mse = ((a - b) ** 2).reshape(a.shape[0], -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return np.where(mse > 0, -10 * np.log10(mse), np.inf)
