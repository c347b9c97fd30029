"""Coefficient tables and step rules of two sampler families beyond DDIM/DDPM.

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
lower_order_final holds and T < 15, or when euler_at_final is set. Each state depends on the two above it: a
lower-triangular system of band width 2 (`dpmpp_2m_schedule` gives its `DPMSchedule`; b2 = 0 on first-order
steps). Its step rule `DPMStep` reads two model outputs and turns the eps model's output into D itself, so every
solver and both engines run it on the eps model: `solve(model, dpmpp_2m_schedule(config, T), noise, config)`.

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

from .schedules import Schedule, betas_for
from .system import STEP_RULES, StepRule

__all__ = [
    "DIT_SCHEDULER",
    "FLOW_EULER_DEFAULTS",
    "DPMPP_DEFAULTS",
    "DPMSchedule",
    "DPMStep",
    "flow_euler_schedule",
    "flow_sigmas",
    "dpmpp_2m_schedule",
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
class DPMSchedule(Schedule):
    """DPM-Solver++(2M) as a `Schedule` in data-prediction form (D as in the module docstring):

        x_t = a_t x_{t+1} + b_t D(x_{t+1}, tau_t) + b2_t D(x_{t+2}, tau_{t+1}),   a_t = sigma_t / sigma_{t+1}

    b2 = 0 on first-order steps (always at t = T-1). alpha_in / alpha_out are alphabar at the states read and
    written (1 / (1 + r^2)), sigma the DDPM posterior std between them (tolerance scales, Picard). Its step rule is
    `DPMStep` (registered in `parataa.system.STEP_RULES` as "dpmpp-2m"), which reads two model outputs."""

    b2: torch.Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.num_steps
        if self.b2 is None or self.b2.shape != (n,) or self.b2.dtype != torch.float64:
            got = None if self.b2 is None else (self.b2.dtype, tuple(self.b2.shape))
            raise ValueError(f"DPMSchedule.b2 must be float64 of shape ({n},), got {got}")
        if float(self.b2[-1]) != 0.0:
            raise ValueError("DPMSchedule.b2[T-1] must be 0: the first step cannot read x_{T+1}")

    def to(self, device: torch.device | str) -> DPMSchedule:
        f = ("timesteps", "alpha_in", "alpha_out", "a", "b", "c", "sigma", "b2")
        return DPMSchedule(**{k: getattr(self, k).to(device) for k in f}, eta=self.eta, name=self.name,
                           final_noise=self.final_noise)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "second_order_steps": int((self.b2 != 0).sum())}


class DPMStep(StepRule):
    """The step rule of a `DPMSchedule`, on the eps model itself: `output` turns eps(x_{t+1}) into the data
    prediction D(x_{t+1}) = (x_{t+1} - sigma_{t+1} eps) / alpha_{t+1}, and a step is a_t x_{t+1} + b_t outs[0] +
    b2_t outs[1] (the data predictions at x_{t+1} and x_{t+2}), no noise.

    A last step that lands on clean data (a_0 = sigma_0 / sigma_1 = 0, x_0 = D(x_1)) is written in eps form,
    x_0 = x_1 / alpha_1 - (sigma_1 / alpha_1) eps(x_1): step 0 reads eps at x_1 (no other step reads the output at
    x_1) and a_0 = 1 / alpha_1 > 0, as the exact splitting needs (its products P_{t,s} = a_t ... a_{s-1} are
    divided by, through log a: with a_0 = 0 every order-k equation above step 0 of a window holding it is 0 / 0).
    Scratch entry at T: a = 1, zero weights, output x."""

    reads = 2

    def __init__(self, schedule: Schedule) -> None:
        def pad(v: torch.Tensor, value: float) -> torch.Tensor:
            return torch.cat([v, torch.full((1,), value, dtype=v.dtype, device=v.device)])

        if not isinstance(schedule, DPMSchedule):
            raise ValueError(f"schedule {schedule.name!r} is DPM-Solver++(2M)'s by name but not a DPMSchedule")
        assert schedule.b2 is not None
        alpha, sig = torch.sqrt(schedule.alpha_in), torch.sqrt(1 - schedule.alpha_in)
        a, b, ox, oe = schedule.a.clone(), schedule.b.clone(), 1 / alpha, -sig / alpha
        if float(a[0]) == 0.0:  # the last step in eps form
            a[0], b[0], ox[0], oe[0] = 1 / alpha[0], -sig[0] / alpha[0], 0.0, 1.0
        self.a_p, self.b_p, self.b2_p = pad(a, 1.0), pad(b, 0.0), pad(schedule.b2, 0.0)
        self.ox_p, self.oe_p = pad(ox, 1.0), pad(oe, 0.0)

    def a(self, t: torch.Tensor) -> torch.Tensor:
        return self.a_p[t]

    def output(self, t: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self.ox_p[t][..., None] * x + self.oe_p[t][..., None] * out

    def drift(self, t: torch.Tensor, outs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.b_p[t][..., None] * outs[0] + self.b2_p[t][..., None] * outs[1]

    def noise(self, t: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(xi)


STEP_RULES["dpmpp-2m"] = DPMStep


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


def dpmpp_2m_schedule(config: Mapping[str, Any], num_steps: int) -> DPMSchedule:
    """DPM-Solver++(2M) of a diffusers scheduler config (any DDIM/DPM config: the fields DPMSolverMultistepScheduler
    reads, its defaults for the others) as a `DPMSchedule` (module docstring)."""
    ts, r, cfg = _dpm_levels(config, num_steps)
    T = num_steps
    alpha = 1 / np.sqrt(r**2 + 1)
    sig = r * alpha
    a, c0, c1 = np.zeros(T), np.zeros(T), np.zeros(T)
    final_first = cfg["final_sigmas_type"] == "zero" or cfg["euler_at_final"] or (cfg["lower_order_final"] and T < 15)
    for i in range(T):  # diffusers' step i reads level r[i] (state x_{T-i}) and writes r[i+1]
        t = T - 1 - i
        phi = alpha[i + 1] * (1 - r[i + 1] / r[i])  # alpha_t (1 - e^{-h})
        a[t], c0[t] = sig[i + 1] / sig[i], phi
        if i > 0 and not (i == T - 1 and final_first):
            ratio = math.log(r[i - 1] / r[i]) / math.log(r[i] / r[i + 1])  # h_prev / h
            c0[t], c1[t] = phi * (1 + 0.5 / ratio), -phi * 0.5 / ratio
    ai, ao = alpha[:-1] ** 2, alpha[1:] ** 2
    sigma = np.sqrt(np.clip((1 - ao) / (1 - ai) * (1 - ai / ao), 0.0, None))

    def f64(v: np.ndarray) -> torch.Tensor:  # diffusers order -> index t
        return torch.from_numpy(np.asarray(v, dtype=np.float64)[::-1].copy())

    return DPMSchedule(
        timesteps=f64(ts), alpha_in=f64(ai), alpha_out=f64(ao), a=torch.from_numpy(a), b=torch.from_numpy(c0),
        c=torch.zeros(T, dtype=torch.float64), sigma=f64(sigma), eta=0.0, name=f"dpmpp-2m-{num_steps}",
        final_noise="none", b2=torch.from_numpy(c1),
    )
