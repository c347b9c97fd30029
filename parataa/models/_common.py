"""What the network adapters share: device/dtype handling, micro-batching, and the clear missing-weights error."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["WeightsNotFoundError", "resolve_device", "resolve_dtype", "run_chunked", "load_part", "place"]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
}


class WeightsNotFoundError(FileNotFoundError, ValueError):
    """Pretrained weights are neither at the given path nor in the Hugging Face cache (and no network)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device must be available, got {str(device)!r} but CUDA is not; use device='cpu'")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def check_chunk_size(chunk_size: int | None) -> int | None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer (network rows per call) or None, got {chunk_size!r}")
    return chunk_size


def run_chunked(
    fn: Callable[[slice], torch.Tensor], n: int, rows_per_item: int, chunk_size: int | None
) -> torch.Tensor:
    """Evaluate fn over items 0..n-1 in slices of at most `chunk_size` network rows; concatenate the outputs.

    Each item costs `rows_per_item` rows (2 with classifier-free guidance). Chunking only bounds memory: every
    item is computed the same way, whatever the slice it falls in (up to the kernels' batch invariance).
    """
    per = n if chunk_size is None else max(1, chunk_size // rows_per_item)
    outs = [fn(slice(i, min(i + per, n))) for i in range(0, n, per)]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _quiet(cls: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """diffusers warns when `accelerate` is missing unless low_cpu_mem_usage is chosen explicitly."""
    if cls.__module__.startswith("diffusers"):
        return {"low_cpu_mem_usage": False, **kwargs}
    return kwargs


def place(module: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move a network to device/dtype in eval mode, frozen; cast only when the dtype differs (diffusers warns
    on every dtype cast)."""
    module = module.to(device)
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype)
    return module.eval().requires_grad_(False)


def load_part(cls: Any, name_or_path: str, subfolder: str | None, what: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained` of one component, with a clear error when the weights are not on this machine."""
    local = Path(name_or_path).expanduser()
    if local.exists():
        where = local / subfolder if subfolder else local
        if not where.exists():
            raise WeightsNotFoundError(
                f"{what}: {local} exists but has no {subfolder!r} folder; pass the root of a diffusers-format "
                f"snapshot (with {subfolder}/config.json), e.g. the folder `hf download` wrote"
            )
        return cls.from_pretrained(str(local), subfolder=subfolder, **_quiet(cls, kwargs))
    try:
        with warnings.catch_warnings():  # diffusers passes a deprecated hub argument; not the user's concern
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            return cls.from_pretrained(name_or_path, subfolder=subfolder, **_quiet(cls, kwargs))
    except (OSError, ValueError, RuntimeError) as e:
        cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
            os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
        )
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        raise WeightsNotFoundError(
            f"{what} weights {name_or_path!r} (subfolder {subfolder!r}) not found: not a local path, and not in "
            f"the Hugging Face cache {cache}{' (HF_HUB_OFFLINE is set)' if offline else ''}. On a machine with "
            f"network run `hf download {name_or_path} --local-dir DIR` (older hubs: `huggingface-cli download "
            f"{name_or_path} --local-dir DIR`), copy DIR here and pass it as the model path (--model-path DIR). "
            f"Cause: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e


class GuidedAdapter:
    """What the diffusers adapters share: input checks, dtype/device casts, chunked evaluation, VAE decoding.

    Subclasses set sample_shape, device, dtype, chunk_size, guided, vae, vae_scaling_factor, calls, and define
    `_condition(samples)` (what `_eval` takes per row) and `_eval(x, tau, condition)`.
    """

    sample_shape: tuple[int, ...]
    device: torch.device
    dtype: torch.dtype
    chunk_size: int | None
    vae: Any
    vae_scaling_factor: float
    calls: int

    @property
    def guided(self) -> bool:
        raise NotImplementedError

    def _condition(self, samples: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _eval(self, x: torch.Tensor, tau: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, self.sample_shape))}], got {tuple(x.shape)}")
        self.calls += 1
        xm = x.to(self.device, self.dtype)
        tau = timesteps.to(self.device).round().long()
        cond = self._condition(samples.to(self.device).long())
        out = run_chunked(
            lambda s: self._eval(xm[s], tau[s], cond[s]), x.shape[0], 2 if self.guided else 1, self.chunk_size
        )
        return out.to(x.device, x.dtype)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Final states -> images [B, C, H, W] in [0, 1] (float32, CPU), through the VAE if there is one."""
        x = x0.to(self.device, self.dtype)
        if self.vae is not None:
            img = run_chunked(
                lambda s: self.vae.decode(x[s] / self.vae_scaling_factor).sample, x.shape[0], 1, self.chunk_size
            )
        else:
            img = x
        return ((img.float() + 1) / 2).clamp(0, 1).cpu()
