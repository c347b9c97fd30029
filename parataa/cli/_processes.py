"""One process per GPU for `parataa sample` and `parataa compare` on one machine, without SLURM.

`--gpus N` starts the command again under torch.distributed.run with N processes (NCCL); `--processes N` does the
same on the CPU (gloo), for checks and tests. Every process builds the model on its own device and runs the same
solver; each model call's rows are cut into fixed chunks of `--chunk-size` rows (`parataa.distributed.
DistributedDenoiser`) and spread over the processes, so the result is the same, bit for bit, at every process
count for one chunk size (1 process included: it evaluates the same chunks). Only the first process prints and
writes files.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from ..jobs.spec import DEFAULT_CHUNK_SIZE  # network rows per call when the model calls are spread

LAUNCHED = "PARATAA_CLI_PROCESSES"  # set in the processes torch.distributed.run starts for the command


def add_arguments(p: argparse.ArgumentParser, *, chunk_size: bool = True) -> None:
    g = p.add_argument_group("processes (one machine, no SLURM)")
    g.add_argument(
        "--gpus", type=int, default=None,
        help="spread every model call over N GPUs of this machine, one process each (NCCL); the same result as "
        "--gpus 1 with the same --chunk-size",
    )  # fmt: skip
    g.add_argument("--processes", type=int, default=None, help="the same with N processes on the CPU (gloo)")
    if chunk_size:
        g.add_argument(
            "--chunk-size", type=int, default=None,
            help=f"network rows per call (default: the whole call; {DEFAULT_CHUNK_SIZE} with --gpus/--processes)",
        )  # fmt: skip


def check(args: argparse.Namespace) -> int | None:
    """The process count asked for (None: a plain single-process run), checked before anything is built; also
    --chunk-size, which sets how the model calls are split."""
    if getattr(args, "chunk_size", None) is not None and args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be an integer >= 1, got {args.chunk_size}")
    if args.gpus is not None and args.processes is not None:
        raise ValueError("--gpus and --processes: give one of them (GPUs: --gpus N; CPU processes: --processes N)")
    n = args.gpus if args.gpus is not None else args.processes
    if n is None:
        return None
    flag = "--gpus" if args.gpus is not None else "--processes"
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{flag} must be an integer >= 1, got {n}")
    if args.gpus is not None:
        import torch

        have = torch.cuda.device_count()
        if have < n:
            raise ValueError(f"--gpus {n}: this machine has {have} CUDA GPU(s); ask for at most {have}")
        if str(args.device) not in ("cpu", "cuda"):
            raise ValueError(f"--gpus places process i on cuda:i; leave --device out (got {args.device!r})")
    elif str(args.device) != "cpu":
        raise ValueError(f"--processes runs on the CPU; use --gpus N for GPUs (got --device {args.device})")
    if args.chunk_size is None:
        args.chunk_size = DEFAULT_CHUNK_SIZE
    return n


def relaunch(n: int, argv: list[str]) -> int:
    """Run this very command again in n processes under torch.distributed.run; the exit status of the group."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "parataa"]
    env = {**os.environ, LAUNCHED: str(n), "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE", "0")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.call([*cmd, *argv], env=env)


def start(args: argparse.Namespace) -> tuple[int | None, Any]:
    """(exit status, None) when this process only launched the group and is done; (None, env) to go on, where env
    is this process's parataa.distributed.DistEnv (None for a plain single-process run)."""
    n = check(args)
    if n is None:
        return None, None
    if os.environ.get(LAUNCHED) is None and n > 1:
        return relaunch(n, args.argv), None
    from ..distributed import init_from_env

    env = init_from_env(device="cpu" if args.processes is not None else None)
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
