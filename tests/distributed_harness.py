"""Test harness: check that multi-process window evaluation reproduces the single-process solve bit for bit.

    python -m tests.distributed_harness --world-size 3 [--chunk-size 4] [--out results.pt]   (from the repo root)

spawns N CPU processes (gloo), runs real solves on every rank with a `DistributedDenoiser` — TAA on a tiny
randomly initialised conv net (float32, guidance by batch doubling, so batch-shape effects are real), FP+ on
the exact Gaussian-mixture model, and TAA with an out-of-memory error injected on the last rank — and compares the
trajectories of rank 0 with the same solves in this process without a process group. Prints a JSON summary and
exits 1 on any mismatch. tests/test_distributed.py imports `run_check`, `run_scenarios` and the test doubles.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from parataa.distributed import DistributedDenoiser, barrier, check_world_size, cleanup, init_from_env
from parataa.models import GaussianMixture, GaussianMixtureDenoiser
from parataa.noise import NoiseBundle, draw_noise
from parataa.schedules import Schedule, from_diffusers_config
from parataa.solvers import Denoiser, preset, solve

__all__ = [
    "InjectedOOM",
    "TinyConvDenoiser",
    "TinyConvNet",
    "free_port",
    "problem",
    "main",
    "run_check",
    "run_job",
    "run_scenarios",
]

DIM, CLASSES, STEPS, SEEDS = 8, 4, 12, (0, 1, 2)


class TinyConvNet(nn.Module):
    """A small conv net in the shape of a UNet level: conv, GroupNorm, embeddings, skip concat, 1x1 projection."""

    def __init__(self, channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.temb = width
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.norm = nn.GroupNorm(4, width)
        self.emb = nn.Linear(width, width)
        self.class_emb = nn.Embedding(num_classes + 1, width)  # the last one is the null label
        self.conv_mid = nn.Conv2d(width, width, 3, padding=1)
        self.skip = nn.Conv2d(2 * width, width, 1)  # 1x1 conv on the skip concat, as a UNet resnet shortcut
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)

    def time_embedding(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.temb // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=timesteps.device) / half)
        arg = timesteps.float()[:, None] * freqs[None]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h0 = self.conv_in(x)
        e = self.emb(self.time_embedding(timesteps)) + self.class_emb(labels)
        h = F.silu(self.norm(h0) + e[:, :, None, None])
        h = F.silu(self.conv_mid(h))
        h = F.silu(self.skip(torch.cat([h, h0], dim=1)))
        return self.conv_out(h)


class TinyConvDenoiser:
    """A `TinyConvNet` with fixed random weights as a guided `Denoiser` on [2, 8, 8] states.

    Classifier-free guidance as the real adapters do it: one network call on the doubled batch [x with the
    class labels; x with the null label], then eps_u + s (eps_c - eps_u). The network runs in float32, and its
    results depend on the batch size (CPU 1x1-conv kernels are not batch-invariant), as a real model's do.
    """

    sample_shape = (2, 8, 8)

    def __init__(self, num_classes: int, labels: Sequence[int], guidance_scale: float = 5.0, seed: int = 0) -> None:
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.num_classes, self.guidance_scale = num_classes, float(guidance_scale)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = TinyConvNet(self.sample_shape[0], num_classes)
        self.net.eval().requires_grad_(False)

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        labels = self.labels.to(x.device)[samples]
        null = torch.full_like(labels, self.num_classes)
        with torch.inference_mode():
            out = self.net(
                torch.cat([x, x]).to(torch.float32),
                torch.cat([timesteps, timesteps]),
                torch.cat([labels, null]),
            ).to(torch.float64)
        cond, uncond = out[:b], out[b:]
        return uncond + self.guidance_scale * (cond - uncond)


class InjectedOOM:
    """A real `Denoiser` wrapped to raise torch's out-of-memory error on calls of more than `max_rows` rows.

    `ranks`: raise only on these ranks (None: everywhere), to check that the ranks agree on the retry.
    """

    def __init__(self, inner: Denoiser, max_rows: int, ranks: Sequence[int] | None = None) -> None:
        self.inner, self.max_rows = inner, max_rows
        self.ranks = None if ranks is None else set(ranks)
        self.raised = 0

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if x.shape[0] > self.max_rows and (self.ranks is None or rank in self.ranks):
            self.raised += 1
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected: {x.shape[0]} rows > {self.max_rows}) on rank {rank}"
            )
        return self.inner(x, timesteps, samples)


def problem(model_kind: str) -> tuple[Denoiser, Schedule, NoiseBundle]:
    """(model, schedule, noise) of the check: 'net' (tiny conv net, [2, 8, 8]) or 'gmm' (exact mixture, R^8)."""
    mixture = GaussianMixture(dim=DIM, num_classes=CLASSES, spread=0.15, seed=0)
    sched = from_diffusers_config(mixture.scheduler_config, STEPS, sampler="ddim")
    labels = [s % CLASSES for s in SEEDS]
    model: Denoiser
    if model_kind == "net":
        model = TinyConvDenoiser(CLASSES, labels, guidance_scale=5.0, seed=0)
        shape: tuple[int, ...] = TinyConvDenoiser.sample_shape
    elif model_kind == "gmm":
        model, shape = GaussianMixtureDenoiser(mixture, labels, 5.0), (DIM,)
    else:
        raise ValueError(f"model_kind must be 'net' or 'gmm', got {model_kind!r}")
    return model, sched, draw_noise(list(SEEDS), STEPS, shape)


def run_scenarios(chunk_size: int = 4, world: int | None = None) -> dict[str, dict[str, Any]]:
    """The check's solves on this process (inside a process group or not). Same on every rank.

    taa-net      TAA on the tiny conv net, chunk_size rows per call
    fp+-gmm       FP+ on the Gaussian mixture
    taa-net-oom  TAA on the tiny conv net starting at 2 * chunk_size rows per call, with an out-of-memory error on
                  the last rank for calls above chunk_size rows: must end at chunk_size and equal taa-net
    """
    if world is None:
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    out: dict[str, dict[str, Any]] = {}
    for name, method, kind, start, oom in (
        ("taa-net", "taa", "net", chunk_size, False),
        ("fp+-gmm", "fp+", "gmm", chunk_size, False),
        ("taa-net-oom", "taa", "net", 2 * chunk_size, True),
    ):
        inner, sched, noise = problem(kind)
        if oom:
            inner = InjectedOOM(inner, max_rows=chunk_size, ranks=[world - 1])
        model = DistributedDenoiser(inner, chunk_size=start)
        res = solve(model, sched, noise, preset(method))
        out[name] = {
            "trajectory": res.trajectory,
            "iterations": res.iterations,
            "finished": bool(res.finished.all()),
            "chunk_size": model.chunk_size,
            "chunk_size_changes": model.chunk_size_changes,
            "network_calls": model.network_calls,
            "comm_seconds": model.comm_seconds,
            "world_size": world,
        }
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, chunk_size: int, out_path: str) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
        }
    )
    torch.set_num_threads(1)
    init_from_env("gloo", timeout_s=120, device="cpu")
    try:
        check_world_size(world)
        results = run_scenarios(chunk_size)
        if rank == 0:
            torch.save(results, out_path)
        barrier()
    finally:
        cleanup()


def run_check(world_size: int, chunk_size: int = 4) -> dict[str, dict[str, Any]]:
    """Spawn `world_size` gloo processes on CPU, run `run_scenarios` on each, return rank 0's results."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    worker = importlib.import_module("tests.distributed_harness")._worker  # picklable under `python -m`
    with tempfile.TemporaryDirectory(prefix="parataa-dist-") as tmp:
        path = str(Path(tmp) / "rank0.pt")
        torch.multiprocessing.start_processes(
            worker,
            args=(world_size, free_port(), chunk_size, path),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        return torch.load(path, weights_only=False)


def _job_worker(rank: int, world: int, port: int, spec: dict[str, Any], summary: str | None = None) -> None:
    from parataa.jobs.shard import ShardJob

    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
        }
    )
    try:
        out = ShardJob()(spec)
        if summary is not None and rank == 0:
            Path(summary).write_text(json.dumps(out))
    finally:
        cleanup()


def run_job(spec: dict[str, Any], world_size: int, summary: str | Path | None = None) -> None:
    """Run a job spec (`JobSpec.to_dict()`) as `world_size` processes on this machine, as torchrun would; with
    `summary`, rank 0 writes the job's summary there (JSON)."""
    worker = importlib.import_module("tests.distributed_harness")._job_worker
    args = (world_size, free_port(), spec, None if summary is None else str(summary))
    torch.multiprocessing.start_processes(worker, args=args, nprocs=world_size, join=True, start_method="spawn")


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.distributed_harness", description=__doc__.split("\n")[0])
    parser.add_argument("--world-size", type=int, required=True, help="number of gloo processes to spawn")
    parser.add_argument("--chunk-size", type=int, default=4, help="rows per network call")
    parser.add_argument("--out", type=Path, default=None, help="save rank 0's results here (torch.save)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    spread = run_check(args.world_size, args.chunk_size)
    local = run_scenarios(args.chunk_size, world=1)
    if args.out is not None:
        torch.save(spread, args.out)
    ok = True
    summary: dict[str, Any] = {"world_size": args.world_size, "scenarios": {}}
    for name, res in spread.items():
        same = torch.equal(res["trajectory"], local[name]["trajectory"])
        if name == "taa-net-oom":
            same = same and torch.equal(res["trajectory"], spread["taa-net"]["trajectory"])
            same = same and res["chunk_size"] == args.chunk_size
        ok = ok and same
        summary["scenarios"][name] = {
            "sha256_16": _digest(res["trajectory"]),
            "iterations": res["iterations"].tolist(),
            "finished": res["finished"],
            "chunk_size": res["chunk_size"],
            "chunk_size_changes": res["chunk_size_changes"],
            "comm_seconds": round(res["comm_seconds"], 4),
            "equal_to_single_process": same,
        }
    summary["ok"] = ok
    print(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
