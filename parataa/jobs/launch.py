"""Where a SLURM job starts: submit one job spec through submitit, follow it, return its summary.

Called by the workflow's rules (workflow/scripts/run_job.py) in their own process. The executor and the job's
size come from the rule's Snakemake `resources`, which the profile sets (local/config.yaml, slurm/config.yaml):

    executor        local (submitit LocalExecutor: a subprocess here), debug (in this process), slurm, inline
    runtime         minutes (sbatch --time)           mem_mb          memory per node
    partition, account, qos                           SLURM placement ("" = cluster default)
    gpus_per_node   GPUs per job (0: none)            tasks_per_node  processes (0: the study's world_size)
    cpus_per_task   CPUs per process (0: the study's threads)
    signal_delay_s  how long before the time limit SLURM sends submitit's checkpoint signal
    slurm_extra     "key=value,key=value": further #SBATCH options
    poll_s          seconds between state checks while waiting

Re-attachment: the submitit job id is stored in `record` (a JSON file beside the rule's output, not the output
itself, which Snakemake deletes before a rerun) together with a hash of the spec and the executor parameters.
A driver restarted after a crash finds the record and, if that SLURM job is still queued or running (or has
finished with a result), waits on it instead of submitting a duplicate. Ctrl-C / SIGTERM of the driver cancel
the job; a hard kill of the driver (SIGKILL, lost login session) leaves it running for the next driver.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import submitit

from .shard import ShardJob
from .spec import JobSpec

__all__ = ["EXECUTORS", "LIVE_STATES", "executor_params", "spec_key", "submit_and_wait"]

EXECUTORS = ("local", "debug", "slurm", "inline")
LIVE_STATES = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "COMPLETING",
    "CONFIGURING",
    "RESIZING",
    "SUSPENDED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
}


def _res(resources: Any) -> dict[str, Any]:
    if resources is None:
        return {}
    if hasattr(resources, "items"):
        return {k: v for k, v in resources.items() if not k.startswith("_")}
    return dict(resources)


def executor_params(
    kind: str, resources: Mapping[str, Any], *, world_size: int, threads: int, name: str
) -> dict[str, Any]:
    """submitit parameters of a job of `world_size` processes with `threads` CPU threads each."""
    r = _res(resources)
    if kind not in EXECUTORS:
        raise ValueError(f"resources.executor must be one of {EXECUTORS}, got {kind!r} (set it in the profile)")
    tasks = int(r.get("tasks_per_node", 0) or 0) or int(world_size)
    cpus = int(r.get("cpus_per_task", 0) or 0) or int(threads)
    p: dict[str, Any] = {
        "name": name,
        "timeout_min": int(r.get("runtime", 60) or 60),
        "nodes": 1,
        "tasks_per_node": tasks,
        "cpus_per_task": cpus,
    }
    gpus = int(r.get("gpus_per_node", 0) or 0)
    if gpus > 0:
        p["gpus_per_node"] = gpus
    if kind == "slurm":
        if r.get("mem_mb"):
            p["mem_gb"] = max(1, int(r["mem_mb"]) // 1024)
        # SIGUSR2 this long before the time limit: submitit then calls ShardJob.checkpoint and requeues.
        p["slurm_signal_delay_s"] = int(r.get("signal_delay_s", 0) or (120 if p["timeout_min"] >= 10 else 20))
        for key in ("partition", "account", "qos"):
            if r.get(key):
                p[f"slurm_{key}"] = str(r[key])
        extra = str(r.get("slurm_extra", "") or "")
        if extra:
            try:
                p["slurm_additional_parameters"] = dict(kv.split("=", 1) for kv in extra.split(","))
            except ValueError as e:
                raise ValueError(f"resources.slurm_extra must be 'key=value,key=value', got {extra!r}") from e
    return p


def spec_key(spec: JobSpec, params: Mapping[str, Any]) -> str:
    payload = [spec.to_dict(), sorted(params.items())]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _state(job: Any) -> str:
    try:
        return str(job.state).split()[0].upper()
    except Exception:  # noqa: BLE001 - a flaky sacct must not kill the driver
        return "UNKNOWN"


def _reattach(record: Path, key: str, folder: str, log: Callable[[str], None]) -> Any | None:
    try:
        rec = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("executor") != "slurm":
        return None
    job = submitit.SlurmJob(folder=folder, job_id=str(rec["job_id"]))
    if rec.get("key") != key:
        if not job.paths.result_pickle.exists() and _force_state(job) in LIVE_STATES:
            log(f"[launch] cancelling job {job.job_id}: its spec or resources differ from the current ones")
            job.cancel(check=False)
        return None
    if job.paths.result_pickle.exists():
        return job
    return job if _force_state(job) in LIVE_STATES else None


def _force_state(job: Any) -> str:
    try:
        return job.watcher.get_state(job.job_id, mode="force").split()[0].upper()
    except Exception:  # noqa: BLE001
        return "UNKNOWN"


class _Follower:
    """Echo state changes and the job's own [parataa] status lines into the driver's log."""

    def __init__(self, job: Any, name: str, log: Callable[[str], None]) -> None:
        self.job, self.name, self.log = job, name, log
        self.task0 = job.task(0)  # a job of several processes: rank 0's log (the job itself when it has one)
        self.state = ""
        self.pos = 0

    def step(self) -> None:
        st = _state(self.job)
        if st != self.state:
            self.log(f"[launch] {self.name}: job {self.job.job_id} {st}")
            self.state = st
        try:
            path = Path(self.task0.paths.stdout)
            if path.exists():
                with open(path, errors="replace") as f:
                    f.seek(self.pos)
                    chunk = f.read()
                    cut = chunk.rfind("\n") + 1
                    self.pos += len(chunk[:cut].encode(errors="replace"))
                for line in chunk[:cut].splitlines():
                    if line.startswith("[parataa]"):
                        self.log(line)
        except OSError:
            pass


def submit_and_wait(
    spec: JobSpec | Mapping[str, Any],
    *,
    resources: Mapping[str, Any] | None = None,
    folder: str | Path = "results/.submitit",
    record: str | Path | None = None,
    name: str = "parataa",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ShardJob()(spec) on the executor the resources name; block until it ends; return its summary.
    Raises submitit's FailedJobError / UncompletedJobError when the job fails or is cancelled."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    spec = JobSpec.coerce(spec)
    r = _res(resources)
    kind = str(r.get("executor", "local") or "local")
    if kind == "inline":
        return ShardJob()(spec)
    params = executor_params(kind, r, world_size=spec.world_size, threads=spec.threads, name=name)
    jobs_folder = str(Path(folder) / "%j")
    ex = submitit.AutoExecutor(folder=jobs_folder, cluster=kind)
    ex.update_parameters(**params)
    key = spec_key(spec, params)
    record = Path(record) if record else None
    job = _reattach(record, key, jobs_folder, log) if (record and kind == "slurm") else None
    if job is not None:
        log(f"[launch] {name}: re-attached to SLURM job {job.job_id} (from {record})")
    else:
        job = ex.submit(ShardJob(), spec.to_dict())  # the spec travels as a plain dict
        if record:
            from ..storage import atomic_write_json

            atomic_write_json(
                record,
                {
                    "job_id": str(job.job_id),
                    "executor": kind,
                    "key": key,
                    "name": name,
                    "folder": str(Path(folder).resolve()),
                },
            )
        log(f"[launch] {name}: submitted {kind} job {job.job_id}")

    cancelled = threading.Event()

    def _cancel(signum, frame):  # noqa: ARG001
        cancelled.set()
        job.cancel(check=False)
        raise KeyboardInterrupt(f"signal {signum}: cancelled job {job.job_id}")

    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, _cancel) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
    poll = float(r.get("poll_s", 0) or (15 if kind == "slurm" else 1))
    follow = _Follower(job, name, log)
    try:
        last_force = time.monotonic()
        while not job.done():
            follow.step()
            time.sleep(min(poll, 2.0))
            if kind == "slurm" and time.monotonic() - last_force >= poll:
                _force_state(job)  # a cancelled or killed job writes no result: ask sacct, not just the file
                last_force = time.monotonic()
        follow.step()
        # every process of a multi-process job returns the same summary; rank 0 is the one that stored the runs
        result = job.results()[0]
    except KeyboardInterrupt:
        if not cancelled.is_set():
            job.cancel(check=False)
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if record and record.exists():
        record.unlink()
    return result
