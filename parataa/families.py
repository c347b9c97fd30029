"""Coefficient tables of two sampler families beyond DDIM/DDPM, and their sequential samplers.

Flow matching with Euler steps (diffusers' `FlowMatchEulerDiscreteScheduler`). The model predicts a velocity
v(x, tau) at level s (state x_s = (1 - s) x_0 + s noise, model timestep tau = s * num_train_timesteps), and a step
from level s_{t+1} down to s_t is

    x_t = x_{t+1} + (s_t - s_{t+1}) v(x_{t+1}, tau_t)

which is the one-state form x_t = a_t x_{t+1} + b_t m(x_{t+1}, tau_t) + c_t xi_t of `parataa.schedules` with
a = 1, b = s_t - s_{t+1}, c = 0 and the model output m being the velocity: `flow_euler_schedule` returns a
`Schedule`, so every solver of the package runs on it unchanged, given a denoiser that returns velocities.

DPM-Solver++(2M) (diffusers' `DPMSolverMultistepScheduler`, algorithm_type "dpmsolver++", solver_order 2). With
alpha_s = 1 / sqrt(1 + r_s^2), sigma_s = r_s alpha_s (r_s = sqrt((1 - alphabar) / alphabar), diffusers' `sigmas`)
and the data prediction D(x_s) = (x_s - sigma_s eps(x_s)) / alpha_s, the step reading x_{t+1} (and, from the
second step on, x_{t+2}) is

    x_t = (sigma_t / sigma_{t+1}) x_{t+1} + phi_t (1 + 1/(2 r)) D(x_{t+1}) - phi_t / (2 r) D(x_{t+2})
    phi_t = alpha_t (1 - e^{-h}),  e^{-h} = r_t / r_{t+1},  r = h_prev / h,  h_prev = log(r_{t+2} / r_{t+1})

(diffusers' midpoint form: D0 = D(x_{t+1}), D1 = (D0 - D(x_{t+2})) / r, x_t = ... + phi D0 + phi/2 D1). The first
step and the last one are first order (the D(x_{t+2}) term dropped), as diffusers does them: the first because no
earlier output exists, the last when final_sigmas_type is "zero" (its default: it then returns D(x_1) itself), when
lower_order_final holds and T < 15, or when euler_at_final is set. Written out in eps:

    x_t = a_t x_{t+1} + b_t eps(x_{t+1}, tau_t) + a2_t x_{t+2} + b2_t eps(x_{t+2}, tau_{t+1})

a lower-triangular system of band width 2 (`MultistepSchedule`; a2 = b2 = 0 on first-order steps).

Tables are float64, built from the float32 training levels diffusers builds, so that sequential sampling equals a
plain diffusers loop to float rounding (tests/test_families.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .noise import NoiseBundle
from .schedules import Schedule, betas_for

__all__ = [
    "DIT_SCHEDULER",
    "FLOW_EULER_DEFAULTS",
    "DPMPP_DEFAULTS",
    "MultistepSchedule",
    "flow_euler_schedule",
    "flow_sigmas",
    "dpmpp_2m_schedule",
    "sequential_multistep",
]

# DiT's training schedule as a diffusers config (tiny-dit, dit-xl-2-256 ship no scheduler config of their own):
# linear betas 1e-4 .. 0.02 over 1000 steps; diffusers builds them in float32
DIT_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
}
# FlowMatchEulerDiscreteScheduler's defaults of the fields the table reads
FLOW_EULER_DEFAULTS: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 1.0}
# DPMSolverMultistepScheduler's defaults of the fields the table reads
DPMPP_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "lower_order_final": True,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
    "lambda_min_clipped": -math.inf,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
}


def _refuse(cfg: Mapping[str, Any], what: str, allowed: Mapping[str, Any]) -> None:
    """Options the table does not model must keep the value named in `allowed`."""
    for key, want in allowed.items():
        got = cfg.get(key, want)
        if got != want and not (want is None and not got):
            raise ValueError(
                f"{what}: scheduler config {key}={got!r} is not supported (the triangular system models {key}="
                f"{want!r}); set {key}={want!r}"
            )


def _check_steps(num_steps: Any, upper: int) -> None:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or not 1 <= num_steps <= upper:
        raise ValueError(f"num_steps must be an integer in [1, {upper}], got {num_steps!r}")


def flow_sigmas(config: Mapping[str, Any], num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(levels s_0 > ... > s_{T-1} > s_T = 0, model timesteps of the first T) in the order diffusers steps them,
    float64, computed as FlowMatchEulerDiscreteScheduler.set_timesteps does (its float32 roundings included)."""
    cfg = {**FLOW_EULER_DEFAULTS, **dict(config)}
    _refuse(cfg, "flow-euler", {"use_dynamic_shifting": False, "invert_sigmas": False, "shift_terminal": None,
                                "use_karras_sigmas": False, "use_exponential_sigmas": False,
                                "use_beta_sigmas": False, "stochastic_sampling": False})
    n_train, shift = int(cfg["num_train_timesteps"]), float(cfg["shift"])
    if not shift > 0 or not math.isfinite(shift):
        raise ValueError(f"flow-euler: shift must be a positive number, got {cfg['shift']!r}")
    _check_steps(num_steps, n_train)
    # __init__: training levels (float32), shifted once; sigma_max / sigma_min are its ends
    train = torch.from_numpy(np.linspace(1, n_train, n_train, dtype=np.float32)[::-1].copy()) / n_train
    train = shift * train / (1 + (shift - 1) * train)
    s_max, s_min = train[0].item(), train[-1].item()
    # set_timesteps: linspace of the timesteps (float64), back to levels, shifted again, stored in float32
    s = np.linspace(s_max * n_train, s_min * n_train, num_steps) / n_train
    s = shift * s / (1 + (shift - 1) * s)
    s32 = torch.from_numpy(s).to(torch.float32)
    tau = (s32 * n_train).to(torch.float64).numpy()  # what the model is given (float32 in diffusers)
    return np.concatenate([s32.to(torch.float64).numpy(), [0.0]]), tau


def flow_euler_schedule(config: Mapping[str, Any] | None = None, num_steps: int = 50) -> Schedule:
    """Flow matching with Euler steps as a one-state `Schedule` (module docstring): a = 1, b_t = s_t - s_{t+1},
    c = 0; the model output is the velocity. `config` is a FlowMatchEulerDiscreteScheduler config.

    The DDIM-only fields carry the equivalent variance-preserving levels, so the tolerance scales of the stopping
    rules and Picard's step variance stay meaningful: a flow state at level s is k(s) times a variance-preserving
    state at alphabar = (1 - s)^2 / k(s)^2, k(s)^2 = (1 - s)^2 + s^2; `sigma` is the DDPM posterior std between
    the two levels of a step, times k(s_t) (the flow state's own scale)."""
    levels, tau = flow_sigmas(config or {}, num_steps)
    s_in = torch.from_numpy(levels[:-1][::-1].copy())  # index t: the level of the state x_{t+1} the step reads
    s_out = torch.from_numpy(levels[1:][::-1].copy())
    k2_in, k2_out = (1 - s_in) ** 2 + s_in**2, (1 - s_out) ** 2 + s_out**2
    ai, ao = (1 - s_in) ** 2 / k2_in, (1 - s_out) ** 2 / k2_out
    ratio = torch.where(ao > 0, ai / ao, torch.zeros_like(ai))
    sigma = torch.sqrt(torch.clamp((1 - ao) / torch.clamp(1 - ai, min=1e-300) * (1 - ratio), min=0.0))
    sigma = sigma * torch.sqrt(k2_out)
    n = s_in.shape[0]
    return Schedule(
        timesteps=torch.from_numpy(tau[::-1].copy()),
        alpha_in=ai,
        alpha_out=ao,
        a=torch.ones(n, dtype=torch.float64),
        b=s_out - s_in,
        c=torch.zeros(n, dtype=torch.float64),
        sigma=sigma,
        eta=0.0,
        name=f"flow-euler-{num_steps}",
        final_noise="none",
    )


@dataclass(frozen=True)
class MultistepSchedule:
    """A banded lower-triangular sampler of width 2; index t is the step that writes state x_t:

        x_t = a_t x_{t+1} + b_t eps(x_{t+1}, tau_t) + a2_t x_{t+2} + b2_t eps(x_{t+2}, tau_{t+1})

    a2_{T-1} = b2_{T-1} = 0 (the first step reads x_T only). `levels[t]` is diffusers' sigma
    r = sqrt((1 - alphabar) / alphabar) of state x_t (levels[0] = 0 when the last step lands on clean data)."""

    timesteps: torch.Tensor  # [T] model timestep tau_t of the state x_{t+1} step t reads
    levels: torch.Tensor  # [T+1]
    a: torch.Tensor  # [T]
    b: torch.Tensor  # [T]
    a2: torch.Tensor  # [T]
    b2: torch.Tensor  # [T]
    name: str = "dpmpp-2m"

    def __post_init__(self) -> None:
        n = self.timesteps.shape[0]
        if n < 1:
            raise ValueError("MultistepSchedule must have at least one step, got 0")
        for field in ("timesteps", "a", "b", "a2", "b2", "levels"):
            v = getattr(self, field)
            want = (n + 1,) if field == "levels" else (n,)
            if v.shape != want or v.dtype != torch.float64:
                raise ValueError(f"MultistepSchedule.{field} must be float64 of shape {want}, got {v.dtype} "
                                 f"{tuple(v.shape)}")
        if float(self.a2[-1]) != 0.0 or float(self.b2[-1]) != 0.0:
            raise ValueError(
                "MultistepSchedule: the first step (t = T-1) cannot read x_{T+1}; a2 and b2 must be 0 there"
            )

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def __len__(self) -> int:
        return self.num_steps

    def to(self, device: torch.device | str) -> MultistepSchedule:
        f = ("timesteps", "levels", "a", "b", "a2", "b2")
        return MultistepSchedule(**{k: getattr(self, k).to(device) for k in f}, name=self.name)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "num_steps": self.num_steps,
                "timesteps": [int(v) for v in self.timesteps.tolist()],
                "second_order_steps": int((self.a2 != 0).sum())}


def _dpm_timesteps(cfg: Mapping[str, Any], num_steps: int, lambdas: torch.Tensor) -> np.ndarray:
    """Descending timesteps as DPMSolverMultistepScheduler.set_timesteps builds them."""
    n_train = int(cfg["num_train_timesteps"])
    clipped = torch.searchsorted(torch.flip(lambdas, [0]), float(cfg["lambda_min_clipped"]))
    last = int((n_train - clipped).item())
    spacing = cfg["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, last - 1, num_steps + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last // (num_steps + 1)
        ts = (np.arange(0, num_steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
        return ts + int(cfg["steps_offset"])
    if spacing == "trailing":
        return np.arange(last, 0, -n_train / num_steps).round().copy().astype(np.int64) - 1
    raise ValueError(f"dpmpp-2m: timestep_spacing must be 'linspace', 'leading' or 'trailing', got {spacing!r}")


def _dpm_levels(config: Mapping[str, Any], num_steps: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(descending timesteps, levels r of the T states read and the final one, the full config)."""
    cfg = {**DPMPP_DEFAULTS, **{k: v for k, v in dict(config).items() if k in DPMPP_DEFAULTS}}
    _refuse(config, "dpmpp-2m", {"algorithm_type": "dpmsolver++", "solver_order": 2, "thresholding": False,
                                 "use_karras_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
                                 "use_exponential_sigmas": False, "use_beta_sigmas": False,
                                 "rescale_betas_zero_snr": False, "variance_type": None,
                                 "use_dynamic_shifting": False})
    if cfg["prediction_type"] != "epsilon":
        raise ValueError(f"dpmpp-2m: prediction_type must be 'epsilon', got {cfg['prediction_type']!r}")
    if cfg["final_sigmas_type"] not in ("zero", "sigma_min"):
        raise ValueError(f"dpmpp-2m: final_sigmas_type must be 'zero' or 'sigma_min', got {cfg['final_sigmas_type']!r}")
    n_train = int(cfg["num_train_timesteps"])
    _check_steps(num_steps, n_train - 1)
    if cfg["trained_betas"] is not None:
        betas = torch.tensor(cfg["trained_betas"], dtype=torch.float32)
    else:
        betas = betas_for(cfg["beta_schedule"], n_train, float(cfg["beta_start"]), float(cfg["beta_end"]),
                          dtype=torch.float32)
    ac32 = torch.cumprod(1.0 - betas, dim=0)
    lambdas = torch.log(torch.sqrt(ac32)) - torch.log(torch.sqrt(1 - ac32))
    ts = _dpm_timesteps(cfg, num_steps, lambdas)
    ac = ac32.to(torch.float64).numpy()
    r_all = np.sqrt((1 - ac) / ac)
    last = r_all[0] if cfg["final_sigmas_type"] == "sigma_min" else 0.0
    if len(set(ts.tolist())) != len(ts) or ts.min() < 0 or ts.max() >= n_train:
        raise ValueError(f"dpmpp-2m: {num_steps} steps give invalid timesteps {ts.tolist()}")
    return ts, np.concatenate([r_all[ts], [last]]), cfg


def dpmpp_2m_schedule(config: Mapping[str, Any], num_steps: int) -> MultistepSchedule:
    """DPM-Solver++(2M) of a diffusers scheduler config (any DDIM/DPM config: the fields DPMSolverMultistepScheduler
    reads, its defaults for the others) as a `MultistepSchedule` (module docstring)."""
    ts, r, cfg = _dpm_levels(config, num_steps)
    T = num_steps
    alpha = 1 / np.sqrt(r**2 + 1)
    sig = r * alpha
    a, b, a2, b2 = (np.zeros(T) for _ in range(4))
    final_first = cfg["final_sigmas_type"] == "zero" or cfg["euler_at_final"] or (cfg["lower_order_final"] and T < 15)
    for i in range(T):  # diffusers' step i reads level r[i] (state x_{T-i}) and writes r[i+1]
        e_mh = r[i + 1] / r[i]  # e^{-h}
        phi = alpha[i + 1] * (1 - e_mh)
        second = i > 0 and not (i == T - 1 and final_first)
        c0, c1 = phi, 0.0
        if second:
            r0 = math.log(r[i - 1] / r[i]) / math.log(r[i] / r[i + 1])
            c0, c1 = phi * (1 + 0.5 / r0), -phi * 0.5 / r0
        t = T - 1 - i
        a[t] = sig[i + 1] / sig[i] + c0 / alpha[i]
        b[t] = -c0 * sig[i] / alpha[i]
        if second:
            a2[t], b2[t] = c1 / alpha[i - 1], -c1 * sig[i - 1] / alpha[i - 1]
    f64 = lambda v: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))  # noqa: E731
    return MultistepSchedule(timesteps=f64(ts[::-1].astype(np.float64)), levels=f64(r[::-1]), a=f64(a), b=f64(b),
                             a2=f64(a2), b2=f64(b2), name=f"dpmpp-2m-{num_steps}")


@torch.no_grad()
def sequential_multistep(model: Any, schedule: MultistepSchedule, noise: NoiseBundle) -> torch.Tensor:
    """Back-substitution of a `MultistepSchedule`, t = T-1 down to 0, one model call per step; returns the
    trajectory [N, T+1, *S] (float64; index T is x_T). `model` is a `Denoiser` (eps of states at timesteps)."""
    if noise.num_steps != schedule.num_steps:
        raise ValueError(f"noise bundle has {noise.num_steps} steps but the schedule has {schedule.num_steps}; "
                         "draw the bundle with num_steps equal to the sampler's step count")
    T, n, shape = schedule.num_steps, noise.num_samples, noise.sample_shape
    device = noise.x_T.device
    sch = schedule.to(device)
    x = torch.zeros(n, T + 1, *shape, dtype=torch.float64, device=device)
    x[:, T] = noise.x_T.to(torch.float64)
    samples = torch.arange(n, device=device)
    eps_prev = torch.zeros_like(x[:, T])
    for t in range(T - 1, -1, -1):
        tau = sch.timesteps[t].expand(n)
        eps = model(x[:, t + 1], tau, samples).to(torch.float64)
        if not bool(torch.isfinite(eps).all()):
            raise FloatingPointError(f"model output is not finite at step t={t} (reading state x_{t + 1})")
        x_prev = x[:, t + 2] if t + 2 <= T else torch.zeros_like(eps)
        x[:, t] = sch.a[t] * x[:, t + 1] + sch.b[t] * eps + sch.a2[t] * x_prev + sch.b2[t] * eps_prev
        eps_prev = eps
    return x
