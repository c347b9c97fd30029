"""What a job checks and sets about the process it runs in, before any noise or weights are loaded: the
number of processes against the study config, the device, deterministic kernels."""

from __future__ import annotations

import os
from collections.abc import Callable

import submitit
import torch

__all__ = ["WorldSizeError", "world_size_check", "device_check", "device_name", "set_determinism"]


class WorldSizeError(RuntimeError):
    """The job has a different number of processes than the study config asks for."""


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


def device_check(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device: the study config asks for {device!r} but this job sees no CUDA GPU "
            "(check the profile's gpus_per_node / partition, or set device: cpu)"
        )


def device_name(device: str) -> str:
    """What the samples table records as the device: the GPU's name, or "cpu"."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def set_determinism(on: bool) -> Callable[[], None]:
    """Deterministic kernels and no TF32 (docs/METHOD.md section 10: bitwise reruns on the same hardware and
    software).
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
