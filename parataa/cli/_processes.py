"""Several processes for `parataa sample` and `parataa compare` on one machine, without SLURM.

`--gpus N` starts the command again under torch.distributed.run with N processes, one per GPU (NCCL);
`--processes N` does the same on the CPU (gloo), for checks and tests, and on GPUs with `--device cuda`: one
process per GPU (NCCL), or with `--ranks-per-gpu K` up to K processes sharing each GPU, process r on GPU r mod G
(gloo; NCCL refuses two ranks on one device). Every process builds the model on its own device and runs the same
solver; each model call's rows are cut into fixed chunks of `--chunk-size` rows (`parataa.distributed.
DistributedDenoiser`) and spread over the processes, so the result is the same, bit for bit, at every process
count for one chunk size (1 process included: it evaluates the same chunks). Only the first process prints and
writes files.

The processes die with the command (Linux): torch.distributed.run gets SIGKILL when the command's process ends,
however it ends (SIGINT, SIGTERM, SIGKILL), and each worker when torch.distributed.run ends, so signalling the
command leaves no worker running.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..jobs.preflight import alive as _alive  # exists and is not a zombie
from ..jobs.spec import DEFAULT_CHUNK_SIZE  # network rows per call when the model calls are spread

LAUNCHED = "PARATAA_CLI_PROCESSES"  # set in the processes torch.distributed.run starts for the command
PARENT = "PARATAA_CLI_PARENT"  # the pid of the command that started them


def add_arguments(p: argparse.ArgumentParser, *, chunk_size: bool = True) -> None:
    g = p.add_argument_group("processes (one machine, no SLURM)")
    g.add_argument(
        "--gpus", type=int, default=None,
        help="spread every model call over N GPUs of this machine, one process each (NCCL); the same result as "
        "--gpus 1 with the same --chunk-size",
    )  # fmt: skip
    g.add_argument(
        "--processes", type=int, default=None,
        help="the same with N processes: on the CPU (gloo), or with --device cuda on GPUs, one per GPU (NCCL) unless "
        "--ranks-per-gpu says they may share",
    )  # fmt: skip
    g.add_argument(
        "--ranks-per-gpu", type=int, default=None, metavar="K",
        help="with --processes N --device cuda: up to K processes share each GPU, process r on GPU r mod GPUs, over "
        "gloo (NCCL refuses two processes on one GPU); the same bits as one process, timings meaningless",
    )  # fmt: skip
    if chunk_size:
        g.add_argument(
            "--chunk-size", type=int, default=None,
            help=f"network rows per call (default: the whole call; {DEFAULT_CHUNK_SIZE} with --gpus/--processes)",
        )  # fmt: skip


def check(args: argparse.Namespace) -> int | None:
    """The process count asked for (None: a plain single-process run), checked before anything is built; also
    --chunk-size, which sets how the model calls are split, and --ranks-per-gpu against the GPUs there are."""
    if getattr(args, "chunk_size", None) is not None and args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be an integer >= 1, got {args.chunk_size}")
    if args.gpus is not None and args.processes is not None:
        raise ValueError("--gpus and --processes: give one of them (GPUs: --gpus N; CPU processes: --processes N)")
    k = getattr(args, "ranks_per_gpu", None)
    if k is not None and (not isinstance(k, int) or k < 1):
        raise ValueError(f"--ranks-per-gpu must be an integer >= 1, got {k}")
    n = args.gpus if args.gpus is not None else args.processes
    if n is None:
        if k is not None:
            raise ValueError(f"--ranks-per-gpu {k} places processes on GPUs: add --processes N --device cuda")
        return None
    flag = "--gpus" if args.gpus is not None else "--processes"
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{flag} must be an integer >= 1, got {n}")
    device = str(args.device)
    if args.gpus is not None:
        if k is not None:
            raise ValueError(
                f"--gpus {n} --ranks-per-gpu {k}: --gpus gives each process its own GPU; to share GPUs use "
                f"--processes {n} --device cuda --ranks-per-gpu {k}"
            )
        if device not in ("cpu", "cuda"):
            raise ValueError(f"--gpus places process i on cuda:i; leave --device out (got {args.device!r})")
        have = _gpu_count()
        if have < n:
            raise ValueError(
                f"--gpus {n}: this machine has {have} CUDA GPU(s); ask for at most {have}"
                + (f", or share them: --processes {n} --device cuda --ranks-per-gpu {-(-n // have)}" if have else "")
            )
    elif device == "cpu":
        if k is not None:
            raise ValueError(f"--ranks-per-gpu {k} places processes on GPUs: add --device cuda (got --device cpu)")
    elif device == "cuda":
        have = _gpu_count()
        need = -(-n // have) if have else 0
        if have == 0:
            raise ValueError(f"--processes {n} --device cuda: no CUDA GPU is visible here; use --device cpu")
        if need > (k or 1):
            share = f"--ranks-per-gpu {need}"
            raise ValueError(
                f"--processes {n} --device cuda: this machine has {have} CUDA GPU(s), so {need} processes would share "
                f"one, and --ranks-per-gpu is {k or 1}"
                + (" (one process per GPU over NCCL, which refuses two on one GPU)" if not k else "")
                + f"; add {share} to share GPUs over gloo, or ask for at most {have * (k or 1)} processes"
            )
    else:
        raise ValueError(
            f"--processes places process r on GPU r mod GPUs (--device cuda) or on the CPU (--device cpu); "
            f"got --device {args.device}"
        )
    if args.chunk_size is None:
        args.chunk_size = DEFAULT_CHUNK_SIZE
    return n


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _die_with_parent(parent: int | None = None) -> None:
    """Have the kernel send this process SIGKILL when its parent ends (Linux; elsewhere nothing). With `parent`,
    exit at once if that process is already gone (it may end between this process's start and the prctl)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
        return
    if parent is not None and not _alive(parent):
        os._exit(128 + int(signal.SIGKILL))


def _launched_by(command: int) -> bool:
    """Whether this worker's parent is still the launcher that `command` started (its parent is `command`). A
    launcher that ended before this worker's prctl left it with another parent and no death signal to come.
    True where /proc cannot tell (not Linux: there is no death signal either)."""
    try:
        stat = Path(f"/proc/{os.getppid()}/stat").read_text()
    except OSError:
        return not sys.platform.startswith("linux")
    return int(stat[stat.rindex(")") + 2 :].split()[1]) == command


def worker_guard() -> int | None:
    """In a worker: it ends with torch.distributed.run, which ends with the command (both by the kernel's death
    signal); 1 when the command that started the group is already gone, or no longer its launcher's parent (the
    worker should exit), else None. Called first thing in `python -m parataa` (parataa/__main__.py): from then on
    the kernel ends the worker with the group."""
    _die_with_parent()
    parent = os.environ.get(PARENT)
    if parent and not (_alive(int(parent)) and _launched_by(int(parent))):
        return 1
    return None


def relaunch(n: int, argv: list[str]) -> int:
    """Run this very command again in n processes under torch.distributed.run; the exit status of the group."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "parataa"]
    env = {
        **os.environ,
        LAUNCHED: str(n),
        PARENT: str(os.getpid()),
        "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE", "0"),
    }
    env.setdefault("OMP_NUM_THREADS", "1")
    # torch.distributed.run dies with this process (SIGKILL included), and every worker with it (worker_guard)
    group = subprocess.Popen([*cmd, *argv], env=env, preexec_fn=functools.partial(_die_with_parent, os.getpid()))

    def end(signum: int, frame: Any) -> None:  # noqa: ARG001
        # SIGINT/SIGTERM: the group ends now (its death signals do the rest), and so does this process, without the
        # interpreter's unwinding and shutdown (which waits on threads and can take long on a loaded machine)
        # (no group.wait() here: the interrupted wait below holds Popen's lock; init reaps the killed group)
        group.kill()
        os._exit(128 + signum)

    old = {s: signal.signal(s, end) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return group.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def start(args: argparse.Namespace) -> tuple[int | None, Any]:
    """(exit status, None) when this process only launched the group and is done; (None, env) to go on, where env
    is this process's parataa.distributed.DistEnv (None for a plain single-process run)."""
    n = check(args)
    if n is None:
        return None, None
    if os.environ.get(LAUNCHED) is None and n > 1:
        return relaunch(n, args.argv), None
    # a worker (LAUNCHED set) was bound to the group's life by worker_guard in `python -m parataa`, before any import
    from ..distributed import init_from_env

    cpu = args.processes is not None and str(args.device) == "cpu"
    env = init_from_env(device="cpu" if cpu else None, ranks_per_gpu=getattr(args, "ranks_per_gpu", None) or 1)
    args.device = str(env.device)
    return None, env


def spread(model: Any, args: argparse.Namespace, env: Any) -> Any:
    """The model wrapped so that every call is cut into fixed chunks of --chunk-size rows and spread over the
    processes (over this one alone without --gpus/--processes); unchanged when no chunk size is asked for."""
    if env is None and getattr(args, "chunk_size", None) is None:
        return model
    from ..distributed import DistributedDenoiser

    return DistributedDenoiser(model, chunk_size=int(args.chunk_size))


def writes(env: Any) -> bool:
    """True in the process that prints and writes (the only one without --gpus/--processes)."""
    return env is None or env.rank == 0


def finish(env: Any) -> None:
    if env is not None:
        from ..distributed import cleanup

        cleanup()
