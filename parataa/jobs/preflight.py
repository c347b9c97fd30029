"""What the workflow checks and sets up in the Snakemake process itself, before any job runs.

- `check_slurm`: with `--profile slurm`, a working scheduler: sbatch, sacct, squeue and scancel on PATH, the
  controller answering `scontrol ping`, accounting answering `sacct` (submitit follows jobs with it). One
  message naming what is missing, instead of submitit's traceback for every job.
- `forward_interrupts`: SIGINT to Snakemake (Ctrl-C, `kill -INT <pid>`) is passed on to its running rule jobs,
  whose launchers cancel their cluster or local jobs (parataa.jobs.launch); Snakemake alone would wait for
  them to finish. A POSIX shell starts a background command (`snakemake ... &` in a script) with SIGINT
  ignored; installing the handler makes `kill -INT` work there too.
- `DRIVER_ENV`: the Snakemake process id, for the launchers: when Snakemake disappears (SIGKILL, lost
  session), a launcher cancels its local job (no one could re-attach to it) and leaves a SLURM job running for
  the next Snakemake to re-attach to.
- `stale_lock`: Snakemake locks the working directory while it runs and a hard kill leaves the lock behind;
  each run records its process here, so the next one can say that the lock is stale and how to remove it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = [
    "DRIVER_ENV",
    "SLURM_TOOLS",
    "check_slurm",
    "alive",
    "children",
    "forward_interrupts",
    "record_driver",
    "forget_driver",
    "stale_lock",
]

DRIVER_ENV = "PARATAA_SNAKEMAKE_PID"
SLURM_TOOLS = ("sbatch", "sacct", "squeue", "scancel", "scontrol")
_DRIVERS = Path(".snakemake") / "parataa-drivers"
_LOCKS = Path(".snakemake") / "locks"


# ------------------------------------------------------------------------------------------- SLURM


def _probe(cmd: list[str], timeout: float) -> str | None:
    """None when `cmd` exits 0 within `timeout` s; otherwise what it said."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(cmd)}` did not answer within {timeout:.0f} s"
    except OSError as e:
        return f"`{' '.join(cmd)}` could not run ({e})"
    if p.returncode != 0:
        said = (p.stderr.strip() or p.stdout.strip() or "no output").splitlines()[-1]
        return f"`{' '.join(cmd)}` failed (exit {p.returncode}): {said}"
    return None


def check_slurm(timeout: float = 20.0) -> str | None:
    """None when SLURM can take jobs from here; otherwise one message naming everything that is missing."""
    problems = [f"{t}: not found on PATH" for t in SLURM_TOOLS if shutil.which(t) is None]
    for what, cmd in (
        ("sbatch", ["sbatch", "--version"]),
        ("the controller (slurmctld)", ["scontrol", "ping"]),
        ("accounting (sacct, slurmdbd)", ["sacct", "-n", "-X", "-P", "-o", "JobID", "-S", "now"]),
    ):
        if shutil.which(cmd[0]) is not None:
            said = _probe(cmd, timeout)
            if said:
                problems.append(f"{what}: {said}")
    if not problems:
        return None
    return (
        "--profile slurm needs a working SLURM here (submitit submits with sbatch, follows jobs with sacct and "
        "squeue, cancels with scancel), but:\n  - "
        + "\n  - ".join(problems)
        + "\nRun on the cluster's login node (with its SLURM on PATH), or use --profile local on this machine."
    )


# --------------------------------------------------------------------------------- processes, signals


def alive(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): existence is all we can tell
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (Linux /proc; elsewhere `pgrep -P`)."""
    proc = Path("/proc")
    if proc.is_dir():
        out = []
        for d in proc.iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                out.append(int(d.name))
        return out
    try:
        p = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(x) for x in p.stdout.split()]


def forward_interrupts() -> bool:
    """Install, in Snakemake's main thread, a SIGINT handler that sends SIGINT to every child process (the rule
    jobs, whose launchers cancel their jobs) and then interrupts Snakemake as Python's default handler does.
    Sets DRIVER_ENV for the launchers. Returns False where signals cannot be set (not the main thread)."""
    os.environ[DRIVER_ENV] = str(os.getpid())

    def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
        for child in children(os.getpid()):
            try:
                os.kill(child, signal.SIGINT)
            except OSError:
                pass
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------- locks


def _driver_file(pid: int | None = None) -> Path:
    return _DRIVERS / f"{socket.gethostname()}-{pid or os.getpid()}.json"


def record_driver(argv: list[str]) -> None:
    """Called once Snakemake holds its lock and starts jobs: which process holds which lock files."""
    locks = sorted(p.name for p in _LOCKS.glob("*.lock")) if _LOCKS.is_dir() else []
    _DRIVERS.mkdir(parents=True, exist_ok=True)
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": argv,
        "locks": locks,
    }
    _driver_file().write_text(json.dumps(info, indent=2) + "\n")


def forget_driver() -> None:
    try:
        _driver_file().unlink()
    except FileNotFoundError:
        pass


def stale_lock() -> str | None:
    """A message when a lock of this working directory was left by a Snakemake of this host that no longer runs
    (killed hard); None otherwise. Records of drivers that ended normally are removed on the way."""
    if not _DRIVERS.is_dir():
        return None
    held = {p.name for p in _LOCKS.glob("*.lock")} if _LOCKS.is_dir() else set()
    host = socket.gethostname()
    for f in sorted(_DRIVERS.glob("*.json")):
        try:
            info = json.loads(f.read_text())
            pid, locks = int(info["pid"]), set(info.get("locks") or [])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if info.get("host") != host or alive(pid):
            continue
        if not held & locks:
            f.unlink(missing_ok=True)  # it ended, or its locks were removed already
            continue
        argv = [str(a) for a in info.get("argv") or ["snakemake"]]
        command = shlex.join(["snakemake", *argv[1:], "--unlock"])
        return (
            f"[parataa] the lock in {_LOCKS}/ was left by snakemake pid {pid} (started {info.get('started')}), "
            "which no longer runs: it was killed hard (kill -9, lost session). Remove the stale lock by running "
            f"the same command once with --unlock added:\n    {command}\n"
            "then run it again without --unlock (interrupted outputs are redone: rerun-incomplete is on)."
        )
    return None
