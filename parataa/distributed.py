"""Multi-GPU window evaluation: the solver runs identically on every rank, only the model call is spread.

Every rank holds the whole solver state and runs the same solver code; a `DistributedDenoiser` wraps the model
so that one window evaluation (one parallel step) is cut into chunks, the chunks are split over the ranks, and
the outputs are all-gathered, so every rank continues with the same eps.

Reproducibility (docs/METHOD.md section 10): the chunk boundaries depend only on the number of rows and
`chunk_size`, never on the world size, and every network call has exactly `chunk_size` rows (the last chunk is
padded by repeating its last row). A row is therefore evaluated in the same batch, with the same neighbours,
whatever the number of GPUs: with deterministic kernels the results are bitwise identical for any world size on
the same hardware, world size 1 included when it runs through this wrapper (the jobs always do,
parataa.jobs.shard). The promise is per chunk size: float32 kernels are not batch-invariant, so two chunk sizes
(or an unwrapped model, which sees the whole window in one call) agree only within float32 rounding of the
network's output, not bit for bit.

Process-group setup (`init_from_env`) understands torchrun (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT)
and SLURM, through submitit when the job was submitted by submitit. Call `check_world_size` before loading
weights, so a job started with the wrong number of processes fails in seconds, not after a model load.

Placement (`place_rank`): one process per GPU over NCCL by default; `ranks_per_gpu` K >= 2 lets up to K processes
share a GPU (rank r on GPU r mod G) over gloo, which carries CUDA tensors between processes on one GPU where NCCL
refuses two ranks on one device. Sharing a GPU proves the code path (rank placement, the chunked calls over
collectives, the peak-memory gather) and gives the same bits; its timings say nothing of several GPUs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .solvers.base import Denoiser

__all__ = [
    "DistEnv",
    "DistributedDenoiser",
    "barrier",
    "check_gpu_sharing",
    "check_world_size",
    "chunk_ranges",
    "cleanup",
    "init_from_env",
    "is_main",
    "is_out_of_memory",
    "place_rank",
    "world_size",
]

log = logging.getLogger(__name__)


def is_out_of_memory(err: BaseException) -> bool:
    """A GPU out-of-memory error, as torch raises it (typed) or as some kernels report it (RuntimeError text)."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


def chunk_ranges(num_chunks: int, world: int) -> list[tuple[int, int]]:
    """Balanced contiguous ranges of chunk indices, one [start, end) per rank (sizes differ by at most one)."""
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    return [((r * num_chunks) // world, ((r + 1) * num_chunks) // world) for r in range(world)]


def world_size(group: Any = None) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def _rank(group: Any = None) -> int:
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DistributedDenoiser:
    """A `Denoiser` that evaluates a call's rows in fixed-size chunks spread over the ranks of a process group.

    Parameters
    ----------
    inner
        The model on this rank (a `Denoiser`; the same weights on every rank).
    chunk_size
        Rows per network call. The rows of a call are cut into chunks of `chunk_size` rows whose boundaries do not
        depend on the world size; the last chunk is padded by repeating its last row, so every network call has
        the same shape. Chunks go to the ranks as balanced contiguous ranges; each rank evaluates its chunks one
        network call each, and the outputs are all-gathered (padded to equal sizes) in float64, so every rank
        returns the full [B, *S] output (float64) in the original order.
    cfg_pairs_together
        Only matters for an inner model that sits below the guidance combine and declares
        ``cfg_layout = "halves"``: its rows are laid out [cond block; uncond block] (2P rows for P pairs, row i
        and row i + P belong to one state). With True, a chunk takes `chunk_size` pairs, i.e. matching slices of
        both halves, and hands the network 2 * chunk_size rows in the same [cond; uncond] layout, so a
        pair is always evaluated in one call. With False the 2P rows are chunked like any other rows. A guided
        `Denoiser` (the protocol: one guided eps per state) evaluates both halves of each row inside one inner
        call already, so the flag has no effect on it.
    group
        The process group (None: the default group; without an initialised group the wrapper runs on this
        process alone, as world size 1, which is the undistributed reference).

    Out of memory
        If the inner model raises an out-of-memory error on any rank, all ranks (they agree through a small
        all-reduce) discard the call's partial outputs, halve the chunk size and retry; the window itself is never
        shrunk (that would change the algorithm). The smaller size sticks for later calls. This changes which rows
        share a network call, so the bitwise world-size invariance holds per chunk size: a run that lowered its
        chunk size equals a run that used the lowered size from the call where it was lowered. `chunk_size` is the
        size in use, `requested_chunk_size` the one asked for, and `chunk_size_changes` lists every change
        (call index, old, new); each change is logged as a warning.

    Attributes for logs: `comm_seconds` (cumulative seconds in collectives, including waiting for slower ranks;
    the solver's `Evaluator` subtracts it from the model time), `chunk_size`, `calls`, `network_calls`.
    """

    graph_safe = False  # agrees with the other ranks through host-side checks: not capturable in a CUDA graph

    def __init__(self, inner: Denoiser, *, chunk_size: int, cfg_pairs_together: bool = True, group: Any = None) -> None:
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        layout = getattr(inner, "cfg_layout", None)
        if layout not in (None, "halves"):
            raise ValueError(f"inner.cfg_layout must be None or 'halves', got {layout!r}")
        self.inner = inner
        self.requested_chunk_size = chunk_size
        self.chunk_size = chunk_size
        self.cfg_pairs_together = bool(cfg_pairs_together)
        self.group = group
        self.comm_seconds = 0.0
        self.calls = 0
        self.network_calls = 0
        self.chunk_size_changes: list[dict[str, int]] = []

    @property
    def world_size(self) -> int:
        return world_size(self.group)

    @property
    def rank(self) -> int:
        return _rank(self.group)

    def describe(self) -> dict[str, Any]:
        """What a run's log records about the evaluation layout."""
        return {
            "world_size": self.world_size,
            "requested_chunk_size": self.requested_chunk_size,
            "chunk_size": self.chunk_size,
            "cfg_pairs_together": self.cfg_pairs_together,
            "chunk_size_changes": list(self.chunk_size_changes),
            "comm_seconds": self.comm_seconds,
        }

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if timesteps.shape[0] != n or samples.shape[0] != n:
            raise ValueError(
                f"x, timesteps and samples must have the same number of rows, got {n}, "
                f"{timesteps.shape[0]}, {samples.shape[0]}"
            )
        paired = getattr(self.inner, "cfg_layout", None) == "halves" and self.cfg_pairs_together
        if paired and n % 2:
            raise ValueError(f"an inner model with cfg_layout='halves' needs an even number of rows, got {n}")
        call = self.calls
        self.calls += 1
        if n == 0:  # every rank sees the same rows, so all skip the collectives together
            return torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        while True:
            status, result, error = self._attempt(x, timesteps, samples, paired)
            world = status.shape[0]
            sizes = status[:, 2]
            if bool((sizes != n).any()):
                raise RuntimeError(
                    f"ranks disagree on the number of rows to evaluate ({sizes.tolist()}): the solver must run "
                    "identically on every rank (same config, noise bundle and resume state)"
                )
            failed = torch.nonzero(status[:, 1]).flatten().tolist()
            if failed:
                if error is not None:
                    raise error
                raise RuntimeError(f"model evaluation failed on rank(s) {failed} of {world}; see their logs")
            oom = torch.nonzero(status[:, 0]).flatten().tolist()
            if not oom:
                assert result is not None
                return result
            del result, error
            if x.device.type == "cuda":
                torch.cuda.empty_cache()
            old = self.chunk_size
            if old == 1:
                raise torch.OutOfMemoryError(
                    f"the model ran out of memory on rank(s) {oom} with one row per network call; "
                    "the window is never shrunk, so use a GPU with more memory or a smaller model dtype"
                )
            self.chunk_size = old // 2
            self.chunk_size_changes.append({"call": call, "old": old, "new": self.chunk_size})
            log.warning(
                "out of memory on rank(s) %s at chunk_size=%d: retrying call %d with chunk_size=%d "
                "(window unchanged; results now match runs with chunk_size=%d)",
                oom,
                old,
                call,
                self.chunk_size,
                self.chunk_size,
            )

    def _attempt(
        self, x: torch.Tensor, timesteps: torch.Tensor, samples: torch.Tensor, paired: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, BaseException | None]:
        """Evaluate this rank's chunks, agree on the outcome with the other ranks, gather on success.

        Returns (status [world, 3]: per rank OOM flag, other-error flag, row count; the full output or None;
        this rank's non-OOM exception or None).
        """
        n, shape, device = x.shape[0], tuple(x.shape[1:]), x.device
        c = self.chunk_size
        units = n // 2 if paired else n  # a unit is a row, or a (cond, uncond) pair
        num_chunks = -(-units // c)
        world, rank = self.world_size, self.rank
        ranges = chunk_ranges(num_chunks, world)
        lo, hi = ranges[rank]
        rows_per_chunk = 2 * c if paired else c
        local = torch.zeros((hi - lo) * rows_per_chunk, *shape, dtype=torch.float64, device=device)
        oom = failed = False
        error: BaseException | None = None
        try:
            for j in range(lo, hi):
                idx = self._chunk_index(j, c, units, paired, device)
                out = self.inner(x[idx], timesteps[idx], samples[idx])
                self.network_calls += 1
                if tuple(out.shape) != (idx.shape[0], *shape):
                    raise ValueError(
                        f"inner model returned shape {tuple(out.shape)} for a chunk of {idx.shape[0]} rows of "
                        f"shape {shape}"
                    )
                out = out.to(torch.float64)
                if paired:  # back from [cond c; uncond c] to per-pair order (cond_i, uncond_i)
                    out = out.reshape(2, c, *shape).transpose(0, 1).reshape(2 * c, *shape)
                local[(j - lo) * rows_per_chunk : (j - lo + 1) * rows_per_chunk] = out
                del out
        except Exception as err:  # every rank must learn of the failure, or the others hang in the gather
            if is_out_of_memory(err):
                oom = True
            else:
                failed, error = True, err
                log.error("model evaluation failed on rank %d: %r", rank, err)
        status = torch.zeros(world, 3, dtype=torch.long, device=device)
        status[rank] = torch.tensor([int(oom), int(failed), n], dtype=torch.long, device=device)
        if world > 1:
            with self._collective(device):
                dist.all_reduce(status, group=self.group)
        if oom or failed or bool(status[:, :2].any()):
            return status, None, error
        if world > 1:
            most = max(h - l_ for l_, h in ranges) * rows_per_chunk
            padded = torch.zeros(most, *shape, dtype=torch.float64, device=device)
            padded[: local.shape[0]] = local
            parts = [torch.empty_like(padded) for _ in range(world)]
            with self._collective(device):
                dist.all_gather(parts, padded, group=self.group)
            full = torch.cat([p[: (h - l_) * rows_per_chunk] for p, (l_, h) in zip(parts, ranges, strict=True)])
        else:
            full = local
        if paired:  # pair-major (cond_i, uncond_i) -> [cond block; uncond block]
            full = full.reshape(-1, 2, *shape)[:units].transpose(0, 1).reshape(n, *shape)
        else:
            full = full[:n]
        return status, full, None

    @staticmethod
    def _chunk_index(j: int, c: int, units: int, paired: bool, device: torch.device) -> torch.Tensor:
        """Row indices of chunk j: units j*c .. j*c+c-1, the overhang padded with the last unit."""
        u = torch.arange(j * c, (j + 1) * c, device=device).clamp(max=units - 1)
        return torch.cat([u, u + units]) if paired else u

    @contextmanager
    def _collective(self, device: torch.device) -> Iterator[None]:
        _sync(device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync(device)
            self.comm_seconds += time.perf_counter() - t0


@dataclass(frozen=True)
class DistEnv:
    """The process's place in the job: rank, world size, its device and how it was launched."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: no process group (a single process)
    launcher: str  # "torchrun", "submitit", "submitit-local", "slurm" or "single"
    ranks_per_gpu: int = 1  # the most processes one GPU may hold (>= 2: shared GPUs, gloo)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _slurm_env_export() -> str:
    """Export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from SLURM variables; returns the launcher name."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        import submitit

        # CUDA_VISIBLE_DEVICES is left alone: CUDA may already be initialised, and the device is picked from
        # LOCAL_RANK below whether SLURM shows each task all GPUs or only its own. overwrite=True: a MASTER_PORT
        # chosen in the job script is read (and kept) by submitit; without it, export refuses to run.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return "submitit"
    from submitit.slurm.slurm import SlurmJobEnvironment

    job = SlurmJobEnvironment()
    os.environ.update(
        {
            "MASTER_ADDR": job.hostnames[0],
            "MASTER_PORT": os.environ.get("MASTER_PORT", str(20000 + int(job.raw_job_id) % 40000)),
            "RANK": str(job.global_rank),
            "WORLD_SIZE": str(job.num_tasks),
            "LOCAL_RANK": str(job.local_rank),
        }
    )
    return "slurm"


def _submitit_local_env_export() -> str:
    """Export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK for the processes of a submitit LocalExecutor job
    (the local profile's `tasks_per_node` > 1): all on this host, the port derived from the job id (the
    controller's pid) unless MASTER_PORT is set."""
    job_id = os.environ.get("SUBMITIT_LOCAL_JOB_ID", "0")
    os.environ.update(
        {
            "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": os.environ.get("MASTER_PORT", str(20000 + int(job_id) % 40000)),
            "RANK": os.environ["SUBMITIT_LOCAL_GLOBALID"],
            "WORLD_SIZE": os.environ.get("SUBMITIT_LOCAL_NTASKS", "1"),
            "LOCAL_RANK": os.environ.get("SUBMITIT_LOCAL_LOCALID", os.environ["SUBMITIT_LOCAL_GLOBALID"]),
        }
    )
    return "submitit-local"


def place_rank(local_rank: int, gpus: int, ranks_per_gpu: int = 1) -> tuple[int | None, str]:
    """Where a process goes and which backend its group uses: (GPU index or None for the CPU, backend).

    `gpus` is the number of GPUs this process sees (0: none, the CPU). With `ranks_per_gpu` 1 each process gets
    its own GPU, cuda:LOCAL_RANK, and the group uses NCCL; a process that sees a single GPU takes it whatever its
    local rank (a scheduler that shows each task only its own GPU), and whether two processes then landed on one
    physical GPU is checked once the group exists (`check_gpu_sharing`). With `ranks_per_gpu` K >= 2, processes
    share GPUs: local rank r goes on GPU r mod `gpus` and the group uses gloo (NCCL refuses two ranks on one
    device). A pure function: it reads no environment and touches no GPU.
    """
    for name, value, least in (("local_rank", local_rank, 0), ("gpus", gpus, 0), ("ranks_per_gpu", ranks_per_gpu, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if gpus == 0:
        return None, "gloo"
    if ranks_per_gpu >= 2:
        return local_rank % gpus, "gloo"
    if local_rank < gpus:
        return local_rank, "nccl"
    if gpus == 1:
        return 0, "nccl"
    raise RuntimeError(
        f"LOCAL_RANK={local_rank} but this process sees {gpus} GPUs and ranks_per_gpu is 1 (one process per GPU, "
        f"NCCL): start at most {gpus} processes per node, or set ranks_per_gpu to "
        f"{-(-(local_rank + 1) // gpus)} or more to share GPUs (gloo)"
    )


def check_gpu_sharing(identities: list[Any], ranks_per_gpu: int = 1) -> None:
    """Raise unless every physical GPU holds at most `ranks_per_gpu` processes.

    `identities` has one entry per rank, in rank order: (host name, GPU uuid) of the rank's GPU, or None for a
    rank on the CPU. A pure function (`init_from_env` gathers the identities and calls it)."""
    holders: dict[Any, list[int]] = {}
    for rank, ident in enumerate(identities):
        if ident is not None:
            holders.setdefault(tuple(ident), []).append(rank)
    crowded = {k: v for k, v in holders.items() if len(v) > ranks_per_gpu}
    if not crowded:
        return
    (host, gpu), ranks = max(crowded.items(), key=lambda kv: len(kv[1]))
    most = max(len(v) for v in holders.values())
    if ranks_per_gpu == 1:
        raise RuntimeError(
            f"ranks {ranks} share one GPU ({gpu} on {host}) but ranks_per_gpu is 1 (one process per GPU, NCCL, which "
            f"refuses two ranks on one device): give each process its own GPU, or set ranks_per_gpu to {most} "
            "(study config; --ranks-per-gpu on the CLI) to share GPUs over gloo"
        )
    raise RuntimeError(
        f"ranks {ranks} share one GPU ({gpu} on {host}), more than ranks_per_gpu={ranks_per_gpu}: set ranks_per_gpu "
        f"to {most}, or start fewer processes per GPU"
    )


def _gpu_identity(dev: torch.device) -> tuple[str, str] | None:
    """(host, GPU uuid) of a CUDA device; None on the CPU."""
    if dev.type != "cuda":
        return None
    import socket

    props = torch.cuda.get_device_properties(dev)
    uuid = getattr(props, "uuid", None)
    return socket.gethostname(), str(uuid) if uuid is not None else f"{props.name} pci {props.pci_bus_id}"


def _pick_device(local_rank: int, device: str | None = None, ranks_per_gpu: int = 1) -> tuple[torch.device, str]:
    gpus = 0 if device == "cpu" or not torch.cuda.is_available() else torch.cuda.device_count()
    index, backend = place_rank(local_rank, gpus, ranks_per_gpu)
    return (torch.device("cpu") if index is None else torch.device("cuda", index)), backend


def init_from_env(
    backend: str | None = None, timeout_s: float | None = None, device: str | None = None, ranks_per_gpu: int = 1
) -> DistEnv:
    """Join the job's process group from the launcher's environment; a lone process gets no group.

    torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; under SLURM without them (srun, or a
    submitit job) they are derived from the SLURM variables (through submitit's `TorchDistributedEnvironment`
    for submitit jobs); in the processes of a submitit LocalExecutor job from submitit's SUBMITIT_LOCAL_* ones.
    Placement and backend (`place_rank`): with `ranks_per_gpu` 1, one process per GPU (cuda:LOCAL_RANK) over
    NCCL, and a group whose ranks turn out to share a physical GPU is refused before any NCCL communicator
    exists, with a message naming the option; with `ranks_per_gpu` K >= 2, up to K processes per GPU (cuda:
    LOCAL_RANK mod GPUs) over gloo; on the CPU gloo. NVLink multicast stays off (NCCL_NVLS_ENABLE=0 unless
    already set). `device="cpu"` keeps a process on the CPU even where GPUs exist (multi-process CPU checks);
    `timeout_s` bounds how long a collective waits for a missing rank.
    """
    if device not in (None, "cpu"):
        raise ValueError(f"device must be None (auto: cuda:LOCAL_RANK if GPUs, else cpu) or 'cpu', got {device!r}")
    if not isinstance(ranks_per_gpu, int) or isinstance(ranks_per_gpu, bool) or ranks_per_gpu < 1:
        raise ValueError(
            f"ranks_per_gpu must be an integer >= 1, got {ranks_per_gpu!r} (1: one process per GPU, NCCL; "
            "K >= 2: up to K processes share a GPU, gloo)"
        )
    if backend not in (None, "nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl', 'gloo' or None (auto), got {backend!r}")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        launcher = "torchrun"
    elif os.environ.get("SUBMITIT_EXECUTOR") == "local" and "SUBMITIT_LOCAL_GLOBALID" in os.environ:
        launcher = _submitit_local_env_export()
    elif "SLURM_PROCID" in os.environ and "SLURM_JOB_ID" in os.environ:
        launcher = _slurm_env_export()
    else:
        return DistEnv(0, 1, 0, _pick_device(0, device, ranks_per_gpu)[0], None, "single", ranks_per_gpu)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev, auto = _pick_device(local_rank, device, ranks_per_gpu)
    if backend is None:
        backend = auto
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError("backend 'nccl' needs CUDA GPUs; use 'gloo' (or None) on CPU")
    if backend == "nccl" and ranks_per_gpu >= 2:
        raise ValueError(
            f"backend 'nccl' with ranks_per_gpu={ranks_per_gpu}: NCCL refuses two ranks on one GPU; leave the "
            "backend to None (gloo) or set ranks_per_gpu to 1"
        )
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(f"{key} is not set: launch with torchrun, srun or submitit, or export it")
    kwargs: dict[str, Any] = {"backend": backend, "rank": rank, "world_size": world}
    if timeout_s is not None:
        kwargs["timeout"] = timedelta(seconds=timeout_s)
    if dev.type == "cuda":
        # No device_id for NCCL: its communicator is then made at the first collective, after the placement
        # check below, so ranks that share a GPU by mistake get a message naming ranks_per_gpu, not NCCL's
        # "invalid usage".
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(**kwargs)
    if dev.type == "cuda" and world > 1:
        _check_placement(dev, backend, ranks_per_gpu, world)
    return DistEnv(rank, world, local_rank, dev, backend, launcher, ranks_per_gpu)


def _check_placement(dev: torch.device, backend: str, ranks_per_gpu: int, world: int) -> None:
    """Gather every rank's (host, GPU uuid) over gloo (no NCCL communicator yet) and check the sharing."""
    group = dist.new_group(backend="gloo") if backend != "gloo" else None
    identities: list[Any] = [None] * world
    try:
        dist.all_gather_object(identities, _gpu_identity(dev), group=group)
    finally:
        if group is not None:
            dist.destroy_process_group(group)
    try:
        check_gpu_sharing(identities, ranks_per_gpu)
    except RuntimeError:
        cleanup()
        raise


def check_world_size(expected: int, actual: int | None = None) -> None:
    """Raise unless the job runs with the configured number of processes. Call it before loading weights."""
    if actual is None:
        actual = world_size()
    if expected != actual:
        raise ValueError(
            f"the config asks for world size {expected} (GPU processes) but this job runs with world size {actual}; "
            f"launch {expected} processes (torchrun --nproc-per-node {expected}, or SLURM --ntasks-per-node "
            f"{expected} --gpus-per-node {expected}) or set the config's world size to {actual}. "
            "Results do not depend on it, but timings and resource requests do."
        )


def is_main() -> bool:
    return _rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
