"""Pre-sampled noise: one CPU float64 generator per sample, drawn once before any solver runs.

A bundle holds, for every sample n (seed s_n):
    x_T   = xi_T                     the initial noise                      [N, *S]
    xi    = xi_0 .. xi_{T-1}         the per-step noise of stochastic steps  [N, T, *S]
    init  = independent N(0, I)      the "gaussian" initial guess of x_0..x_{T-1}  [N, T, *S]
The draw order is fixed (x_T, then xi_0..xi_{T-1}, then init), so x_T does not depend on eta and a sample's
noise does not depend on the batch it is in, the device, or the number of GPUs. Sequential sampling and every
parallel solver read the same bundle, so they solve the same equations.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["NoiseBundle", "draw_noise", "load_noise", "save_noise"]


@dataclass(frozen=True)
class NoiseBundle:
    seeds: tuple[int, ...]
    x_T: torch.Tensor
    xi: torch.Tensor
    init: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.seeds)
        if self.x_T.shape[0] != n or self.xi.shape[0] != n or self.init.shape[0] != n:
            raise ValueError(
                f"NoiseBundle tensors must have {n} samples (one per seed), got x_T {tuple(self.x_T.shape)}, "
                f"xi {tuple(self.xi.shape)}, init {tuple(self.init.shape)}"
            )
        if self.xi.shape != self.init.shape or self.xi.shape[2:] != self.x_T.shape[1:]:
            raise ValueError(
                f"NoiseBundle shapes disagree: x_T {tuple(self.x_T.shape)}, xi {tuple(self.xi.shape)}, "
                f"init {tuple(self.init.shape)}"
            )

    @property
    def num_samples(self) -> int:
        return len(self.seeds)

    @property
    def num_steps(self) -> int:
        return int(self.xi.shape[1])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_T.shape[1:])

    def to(self, device: torch.device | str) -> NoiseBundle:
        return NoiseBundle(self.seeds, self.x_T.to(device), self.xi.to(device), self.init.to(device))

    def select(self, index: Sequence[int]) -> NoiseBundle:
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return NoiseBundle(
            tuple(self.seeds[i] for i in idx.tolist()),
            self.x_T[idx.to(self.x_T.device)],
            self.xi[idx.to(self.xi.device)],
            self.init[idx.to(self.init.device)],
        )

    def sha256(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"seeds": list(self.seeds), "shape": list(self.xi.shape)}).encode())
        for t in (self.x_T, self.xi, self.init):
            h.update(t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
        return h.hexdigest()


def draw_noise(seeds: Sequence[int], num_steps: int, shape: Sequence[int]) -> NoiseBundle:
    """Draw a bundle: each sample from its own `torch.Generator` on the CPU, in float64."""
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds must name at least one sample, got an empty list")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape}")
    xs, xis, inits = [], [], []
    for s in seeds:
        g = torch.Generator(device="cpu").manual_seed(s)
        xs.append(torch.randn(shape, generator=g, dtype=torch.float64))
        xis.append(torch.randn((num_steps, *shape), generator=g, dtype=torch.float64))
        inits.append(torch.randn((num_steps, *shape), generator=g, dtype=torch.float64))
    return NoiseBundle(seeds, torch.stack(xs), torch.stack(xis), torch.stack(inits))


def save_noise(bundle: NoiseBundle, path: str | Path) -> str:
    """Write the bundle as safetensors (atomically) and return its sha256."""
    from safetensors.torch import save_file

    path = Path(path)
    digest = bundle.sha256()
    meta = {"seeds": json.dumps(list(bundle.seeds)), "sha256": digest, "format": "parataa.noise/1"}
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {
            "x_T": bundle.x_T.cpu().contiguous(),
            "xi": bundle.xi.cpu().contiguous(),
            "init": bundle.init.cpu().contiguous(),
        },
        str(tmp),
        metadata=meta,
    )
    tmp.replace(path)
    return digest


def load_noise(path: str | Path, expected_sha256: str | None = None) -> NoiseBundle:
    """Read a bundle and verify its content hash (and the expected one, when given)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in ("x_T", "xi", "init")}
    if meta.get("format") != "parataa.noise/1":
        raise ValueError(f"{path} is not a parataa noise bundle (format {meta.get('format')!r})")
    bundle = NoiseBundle(tuple(json.loads(meta["seeds"])), tensors["x_T"], tensors["xi"], tensors["init"])
    digest = bundle.sha256()
    if digest != meta.get("sha256"):
        raise ValueError(f"{path}: content sha256 {digest} does not match the stored {meta.get('sha256')}")
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(f"{path}: sha256 {digest} is not the expected {expected_sha256}")
    return bundle
