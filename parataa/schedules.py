"""Coefficient tables of the DDIM family: the linear part of the triangular system.

Notation (code name -> symbol of docs/METHOD.md section 1), all float64:

    T            number of sampling steps
    timesteps    tau_t, the model timestep of step t (t = 0 .. T-1, increasing)
    alpha_in     alphabar at the state the step reads, A_{t+1} = alphabar(tau_t)
    alpha_out    alphabar at the state the step writes, A_t
    a, b, c      x_t = a_t x_{t+1} + b_t eps(x_{t+1}, tau_t) + c_t xi_t
    sigma        sigma_t, the DDPM posterior standard deviation of step t
    eta          0 = DDIM, 1 = DDPM with the fixed "small" posterior variance
    final_noise  what the last step (t = 0) does when eta > 0, see below

Step t reads state x_{t+1} and writes x_t; x_T is the initial noise, x_0 the sample. Every step carries its
own (alpha_in, alpha_out) pair because diffusers computes the output level as alphabar(tau_t - ratio), which
for "linspace" spacing is not always the level the next step reads; keeping both reproduces diffusers'
`step()` exactly.

The last step. Every step uses c_t = eta sigma_t and b_t = sqrt(1 - A_t - c_t^2) - a_t sqrt(1 - A_{t+1}), the
last one included: that is diffusers' `DDIMScheduler.step`, which adds eta sigma_0 xi_0 at the last step too
(final_noise="diffusers", the default of `from_diffusers_config`). The ParaTAA authors' code instead makes the last
step deterministic, c_0 = 0 and b_0 = sqrt(1 - A_0) - a_0 sqrt(1 - A_1) (final_noise="none", the default of
`from_alphas` and DiT's rule: its sampler adds no noise at t = 0). The two differ only where sigma_0 > 0, i.e.
DDIM with eta > 0 whose final level A_0 < 1 (diffusers' set_alpha_to_one=False, Stable Diffusion v1.5's setting):
0.054 at x_0 for DDIM-50, eta = 1 on a small random UNet. The paper's settings do not depend on the choice: its
DDIM has eta = 0 (c = 0 at every step) and its DDPM ends at A_0 = 1 (sigma_0 = 0), as diffusers' DDPMScheduler
(no variance at t = 0) and DiT's sampler do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "Schedule",
    "betas_for",
    "from_alphas",
    "from_diffusers_config",
    "dit_respacing",
    "dit_schedule",
]

_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
FINAL_NOISE = ("diffusers", "none")
_SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class Schedule:
    """Per-step coefficients of one sampler; index t is the step that writes state x_t."""

    timesteps: torch.Tensor  # [T] model timesteps tau_t (float64 holding integers)
    alpha_in: torch.Tensor  # [T]
    alpha_out: torch.Tensor  # [T]
    a: torch.Tensor  # [T]
    b: torch.Tensor  # [T]
    c: torch.Tensor  # [T]
    sigma: torch.Tensor  # [T]
    eta: float
    name: str = "ddim"
    final_noise: str = "none"  # "diffusers" (c_0 = eta sigma_0) or "none" (c_0 = 0), see the module docstring

    def __post_init__(self) -> None:
        if self.final_noise not in FINAL_NOISE:
            raise ValueError(f"final_noise must be one of {FINAL_NOISE}, got {self.final_noise!r}")
        n = self.timesteps.shape[0]
        for field in ("alpha_in", "alpha_out", "a", "b", "c", "sigma"):
            v = getattr(self, field)
            if v.shape != (n,) or v.dtype != torch.float64:
                raise ValueError(
                    f"Schedule.{field} must be float64 of shape ({n},), got {v.dtype} {tuple(v.shape)}"
                )
        if n < 1:
            raise ValueError("Schedule must have at least one step, got 0")

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def __len__(self) -> int:
        return self.num_steps

    def to(self, device: torch.device | str) -> Schedule:
        return Schedule(
            **{
                f: getattr(self, f).to(device)
                for f in ("timesteps", "alpha_in", "alpha_out", "a", "b", "c", "sigma")
            },
            eta=self.eta,
            name=self.name,
            final_noise=self.final_noise,
        )

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary stored with every result."""
        return {
            "name": self.name,
            "eta": self.eta,
            "num_steps": self.num_steps,
            # integral model timesteps (DDIM, DDPM, DPM-Solver++) as ints, a flow schedule's fractional ones as floats
            "timesteps": [int(v) if float(v).is_integer() else float(v) for v in self.timesteps.tolist()],
            "alpha_final": float(self.alpha_out[0]),
            "final_noise": self.final_noise,
        }


def betas_for(
    beta_schedule: str,
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    *,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Training betas as diffusers defines them (diffusers builds them in float32: pass dtype=torch.float32)."""
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=dtype)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=dtype) ** 2
    elif beta_schedule == "squaredcos_cap_v2":

        def f(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [
                min(1 - f((i + 1) / num_train_timesteps) / f(i / num_train_timesteps), 0.999)
                for i in range(num_train_timesteps)
            ],
            dtype=dtype,
        )
    else:
        raise ValueError(f"beta_schedule must be one of {_BETA_SCHEDULES}, got {beta_schedule!r}")
    return betas


def from_alphas(
    timesteps: Sequence[float] | torch.Tensor,
    alpha_in: Sequence[float] | torch.Tensor,
    alpha_out: Sequence[float] | torch.Tensor,
    eta: float = 0.0,
    name: str = "ddim",
    final_noise: str = "none",
) -> Schedule:
    """Build a schedule from per-step noise levels; steps listed from t = 0 (least noisy) upwards.

    final_noise "none": the last step adds no noise (c_0 = 0, the DDPM convention and the authors' DDIM);
    "diffusers": it adds eta sigma_0 xi_0 like every other step (DDIMScheduler.step).
    """
    if not (0.0 <= eta <= 1.0) or not math.isfinite(eta):
        raise ValueError(f"eta must be in [0, 1] (0 = DDIM, 1 = DDPM), got {eta}")
    if final_noise not in FINAL_NOISE:
        raise ValueError(f"final_noise must be one of {FINAL_NOISE}, got {final_noise!r}")
    ts = torch.as_tensor(timesteps, dtype=torch.float64)
    ai = torch.as_tensor(alpha_in, dtype=torch.float64)
    ao = torch.as_tensor(alpha_out, dtype=torch.float64)
    if not (ts.shape == ai.shape == ao.shape) or ts.ndim != 1:
        raise ValueError(
            f"timesteps, alpha_in and alpha_out must be 1-D of equal length, got {tuple(ts.shape)}, "
            f"{tuple(ai.shape)}, {tuple(ao.shape)}"
        )
    if bool(((ai <= 0) | (ai >= 1)).any()):
        raise ValueError("alpha_in must lie in (0, 1): a step cannot read a noiseless or pure-noise state")
    if bool(((ao <= 0) | (ao > 1)).any()) or bool((ao < ai).any()):
        raise ValueError("alpha_out must lie in (0, 1] and be >= alpha_in (each step removes noise)")
    a = torch.sqrt(ao / ai)
    # DDPM posterior std; zero when the step lands on alphabar = 1
    sigma = torch.sqrt((1 - ao) / (1 - ai) * (1 - ai / ao))
    c = eta * sigma
    if final_noise == "none":
        c[0] = 0.0
    b = torch.sqrt(torch.clamp(1 - ao - c**2, min=0.0)) - a * torch.sqrt(1 - ai)
    return Schedule(
        timesteps=ts,
        alpha_in=ai,
        alpha_out=ao,
        a=a,
        b=b,
        c=c,
        sigma=sigma,
        eta=float(eta),
        name=name,
        final_noise=final_noise,
    )


def _diffusers_timesteps(num_steps: int, num_train: int, spacing: str, steps_offset: int) -> np.ndarray:
    """Descending inference timesteps exactly as DDIMScheduler/DDPMScheduler.set_timesteps build them."""
    if spacing == "linspace":
        ts = np.linspace(0, num_train - 1, num_steps).round()[::-1].copy().astype(np.int64)
    elif spacing == "leading":
        ratio = num_train // num_steps
        ts = (np.arange(0, num_steps) * ratio).round()[::-1].copy().astype(np.int64)
        ts += steps_offset
    elif spacing == "trailing":
        ratio = num_train / num_steps
        ts = np.round(np.arange(num_train, 0, -ratio)).astype(np.int64)
        ts -= 1
    else:
        raise ValueError(f"timestep_spacing must be one of {_SPACINGS}, got {spacing!r}")
    return ts


def from_diffusers_config(
    config: Mapping[str, Any],
    num_steps: int,
    *,
    sampler: str = "ddim",
    eta: float | None = None,
    final_noise: str = "diffusers",
) -> Schedule:
    """Coefficients equivalent to a diffusers DDIMScheduler / DDPMScheduler `step()` loop.

    `config` is the scheduler's config dict (``scheduler.config`` or its scheduler_config.json).
    sampler "ddim" takes eta (default 0); "ddpm" is eta = 1 with the final level alphabar = 1, as DDPMScheduler
    does. Betas are built in float32 like diffusers so that the tables match its `step()` to float precision.
    final_noise "diffusers" (default) adds eta sigma_0 xi_0 at the last step as DDIMScheduler.step does; "none"
    is the authors' deterministic last step (module docstring; equal for the paper's DDIM eta = 0 and DDPM).
    """
    cfg = dict(config)
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
    if cfg.get("clip_sample", False):
        raise ValueError(
            "clip_sample must be False: clipping x0 makes the step nonlinear in a way the triangular system does "
            "not model. Set scheduler config clip_sample=False (Stable Diffusion and DiT ship it off)."
        )
    if cfg.get("thresholding", False):
        raise ValueError(
            "thresholding must be False: dynamic thresholding is not part of the triangular system"
        )
    pred = cfg.get("prediction_type", "epsilon")
    if pred != "epsilon":
        raise ValueError(f"prediction_type must be 'epsilon', got {pred!r}")
    if sampler == "ddpm":
        vt = cfg.get("variance_type", "fixed_small")
        if vt not in ("fixed_small", "learned_range", "learned"):
            raise ValueError(f"variance_type must be 'fixed_small' for DDPM sampling, got {vt!r}")
    num_train = int(cfg.get("num_train_timesteps", 1000))
    if not isinstance(num_steps, int) or not (1 <= num_steps <= num_train):
        raise ValueError(f"num_steps must be an integer in [1, {num_train}], got {num_steps!r}")
    if cfg.get("trained_betas") is not None:
        betas = torch.tensor(cfg["trained_betas"], dtype=torch.float32)
    else:
        betas = betas_for(
            cfg.get("beta_schedule", "linear"),
            num_train,
            float(cfg.get("beta_start", 1e-4)),
            float(cfg.get("beta_end", 0.02)),
            dtype=torch.float32,
        )
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).to(torch.float64)
    spacing = cfg.get("timestep_spacing", "leading")
    ts_desc = _diffusers_timesteps(num_steps, num_train, spacing, int(cfg.get("steps_offset", 0)))
    ratio = num_train // num_steps
    if sampler == "ddim":
        final = 1.0 if cfg.get("set_alpha_to_one", True) else float(alphas_cumprod[0])
        eta_v = 0.0 if eta is None else float(eta)
    else:
        final = 1.0
        eta_v = 1.0 if eta is None else float(eta)
        if eta_v != 1.0:
            raise ValueError(
                f"eta must be 1 for sampler 'ddpm' (use sampler 'ddim' for other eta), got {eta_v}"
            )
    ts = ts_desc[::-1].copy()  # ascending: index t = step writing x_t
    if len(np.unique(ts)) != len(ts) or ts.min() < 0 or ts.max() >= num_train:
        raise ValueError(f"{num_steps} steps with spacing {spacing!r} give invalid timesteps {ts.tolist()}")
    ai = alphas_cumprod[torch.from_numpy(ts)]
    prev = ts - ratio
    ao = torch.tensor(
        [float(alphas_cumprod[p]) if p >= 0 else final for p in prev.tolist()], dtype=torch.float64
    )
    return from_alphas(ts, ai, ao, eta=eta_v, name=f"{sampler}-{num_steps}", final_noise=final_noise)


def dit_respacing(num_steps: int, num_train: int = 1000, ddim_style: bool = True) -> list[int]:
    """The timesteps DiT's `space_timesteps` keeps: the "ddimN" stride for DDIM; otherwise one section of N
    steps spread evenly over [0, num_train - 1] (DiT's "N" respacing string, as its DDPM sampling uses)."""
    if not isinstance(num_steps, int) or not (1 <= num_steps <= num_train):
        raise ValueError(f"num_steps must be an integer in [1, {num_train}], got {num_steps!r}")
    if ddim_style:
        for stride in range(1, num_train):
            if len(range(0, num_train, stride)) == num_steps:
                return list(range(0, num_train, stride))
        if num_steps == num_train:
            return list(range(num_train))
        raise ValueError(
            f"num_steps={num_steps} cannot be reached with a fixed DDIM stride over {num_train} steps"
        )
    if num_steps == 1:
        return [0]
    # DiT's space_timesteps accumulates the fractional stride in floating point and rounds each partial sum;
    # round(i * frac) differs from it for 278 of the step counts 2..1000 (e.g. 21), so accumulate the same way
    frac = (num_train - 1) / (num_steps - 1)
    kept, pos = [], 0.0
    for _ in range(num_steps):
        kept.append(round(pos))
        pos += frac
    return kept


def dit_schedule(
    num_steps: int,
    *,
    sampler: str = "ddim",
    eta: float | None = None,
    num_train: int = 1000,
    beta_schedule: str = "linear",
    final_noise: str = "none",
) -> Schedule:
    """DiT's respaced diffusion: kept timesteps, final level alphabar = 1, betas built in float64 as DiT does.

    The last step adds no noise (final_noise "none", DiT's `nonzero_mask`); with alphabar = 1 there sigma_0 = 0, so
    "diffusers" would give the same table. DDPM here uses the fixed posterior variance (eta = 1): DiT's own
    `p_sample` uses the variance its model predicts (learned sigma), which is not a fixed coefficient and not part of
    the triangular system; the adapter drops those output channels.
    """
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
    scale = 1000 / num_train
    betas = betas_for(beta_schedule, num_train, scale * 1e-4, scale * 0.02, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    kept = dit_respacing(num_steps, num_train, ddim_style=(sampler == "ddim"))
    ai = alphas_cumprod[torch.tensor(kept)]
    ao = torch.cat([torch.ones(1, dtype=torch.float64), ai[:-1]])
    eta_v = (0.0 if sampler == "ddim" else 1.0) if eta is None else float(eta)
    return from_alphas(kept, ai, ao, eta=eta_v, name=f"dit-{sampler}-{num_steps}", final_noise=final_noise)
