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
from .system import StepRule

__all__ = [
    "DIT_SCHEDULER",
    "FLOW_EULER_DEFAULTS",
    "DPMPP_DEFAULTS",
    "DPMSchedule",
    "DPMStep",
    "DataPrediction",
    "BandedDataPrediction",
    "dpmpp_2m_system",
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
class DPMSchedule(Schedule):
    """DPM-Solver++(2M) as a `Schedule` whose model output is the data prediction D (see `DataPrediction`):

        x_t = a_t x_{t+1} + b_t D(x_{t+1}, tau_t) + b2_t D(x_{t+2}, tau_{t+1}),   a_t = sigma_t / sigma_{t+1}

    b2 = 0 on first-order steps (always at t = T-1). alpha_in / alpha_out are alphabar at the states read and
    written (1 / (1 + r^2)), sigma the DDPM posterior std between them (tolerance scales, Picard). Its step rule
    (`make_step_rule`) is `DPMStep`, which reads two model outputs."""

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

    def make_step_rule(self) -> StepRule:
        return DPMStep(self)

    def one_output(self) -> Schedule:
        """The same steps as a one-output `Schedule` (a, b, c = 0) whose model output is
        m_t = D(x_{t+1}) + (b2_t / b_t) D(x_{t+2}): what `BandedDataPrediction` returns (`dpmpp_2m_system`).

        Where the last step lands on clean data (a_0 = sigma_0 / sigma_1 = 0, x_0 = D(x_1)) it is written in eps
        form instead, x_0 = x_1 / alpha_1 - (sigma_1 / alpha_1) eps(x_1), the same step with a non-zero linear
        part: the exact splitting's products P_{t,s} of a's must not vanish, and `BandedDataPrediction` returns
        eps for that step's rows."""
        a, b = self.a.clone(), self.b.clone()
        if float(a[0]) == 0.0:
            alpha1 = torch.sqrt(self.alpha_in[0])
            a[0], b[0] = 1 / alpha1, -torch.sqrt(1 - self.alpha_in[0]) / alpha1
        f = ("timesteps", "alpha_in", "alpha_out", "c", "sigma")
        return Schedule(**{k: getattr(self, k) for k in f}, a=a, b=b, eta=self.eta, name=self.name,
                        final_noise=self.final_noise)


class DPMStep(StepRule):
    """The step rule of a `DPMSchedule`: a = sigma_t / sigma_{t+1}, drift = b_t outs[0] + b2_t outs[1] (the data
    predictions at x_{t+1} and x_{t+2}), no noise. Scratch entry at T: a = 1, zero weights."""

    reads = 2

    def __init__(self, schedule: DPMSchedule) -> None:
        def pad(v: torch.Tensor, value: float) -> torch.Tensor:
            return torch.cat([v, torch.full((1,), value, dtype=v.dtype, device=v.device)])

        assert schedule.b2 is not None
        self.a_p, self.b_p, self.b2_p = pad(schedule.a, 1.0), pad(schedule.b, 0.0), pad(schedule.b2, 0.0)

    def a(self, t: torch.Tensor) -> torch.Tensor:
        return self.a_p[t]

    def drift(self, t: torch.Tensor, outs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if len(outs) < 2:
            raise ValueError(
                "a DPM-Solver++(2M) step reads two model outputs (the data predictions at x_{t+1} and x_{t+2}) but "
                f"this solver passed {len(outs)}; sample it with parataa.families.sequential_multistep"
            )
        return self.b_p[t][..., None] * outs[0] + self.b2_p[t][..., None] * outs[1]

    def noise(self, t: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(xi)


class DataPrediction:
    """A `Denoiser` returning the data prediction D = (x - sqrt(1 - A) eps) / sqrt(A) of an eps model, A the
    alphabar of the state each timestep of `schedule` reads (timesteps not in the schedule are refused)."""

    def __init__(self, model: Any, schedule: Schedule) -> None:
        self.model, self.schedule = model, schedule
        self.calls = 0

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        ts = self.schedule.timesteps.to(timesteps.device)
        idx = torch.searchsorted(ts, timesteps.to(ts.dtype).contiguous()).clamp(max=ts.shape[0] - 1)
        if not bool((ts[idx] == timesteps.to(ts.dtype)).all()):
            raise ValueError(
                f"DataPrediction: timesteps {timesteps.tolist()} are not all steps of {self.schedule.name}"
            )
        self.last_eps, self.last_idx = self.model(x, timesteps, samples).to(torch.float64), idx
        A = self.schedule.alpha_in.to(x.device)[idx].view(-1, *([1] * (x.ndim - 1)))
        return (x.to(torch.float64) - torch.sqrt(1 - A) * self.last_eps) / torch.sqrt(A)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return self.model.decode(x0)


class BandedDataPrediction(DataPrediction):
    """A `Denoiser` that lets a one-output solver run DPM-Solver++(2M): for a row of step t it returns
    m_t = D(x_{t+1}) + (b2_t / b_t) D(x_{t+2}), so that b_t m_t is the step's whole drift.

    D(x_{t+2}) is the data prediction of step t+1 of the same sample: from the same call when step t+1 is in the
    batch (every window position but the top), else the last one computed (the frozen state above a window; the
    previous step in sequential sampling). Under the per-step and summed stopping rules a state above the window
    keeps the value its output was computed at, so the steps are exactly DPM-Solver++(2M)'s; Picard moves the
    states it freezes after their last evaluation, so there the output above the window is off by less than the
    last change (its tolerance). One instance per solve (it remembers outputs per sample and step). A last step
    landing on clean data gets eps instead (`DPMSchedule.one_output`)."""

    def __init__(self, model: Any, schedule: DPMSchedule) -> None:
        super().__init__(model, schedule)
        assert schedule.b2 is not None
        self.ratio = schedule.b2 / schedule.b
        self.cache: torch.Tensor | None = None  # [N, T, D] last data prediction per (sample, step)
        self.eps_last = float(schedule.a[0]) == 0.0

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        d = super().__call__(x, timesteps, samples)
        flat = d.reshape(d.shape[0], -1)
        T = self.schedule.num_steps
        n = int(samples.max()) + 1
        if self.cache is None or self.cache.shape[0] < n or self.cache.device != flat.device:
            grown = torch.zeros(n, T, flat.shape[1], dtype=torch.float64, device=flat.device)
            if self.cache is not None:
                grown[: self.cache.shape[0]] = self.cache.to(flat.device)
            self.cache = grown
        idx = torch.searchsorted(self.schedule.timesteps.to(flat.device), timesteps.to(torch.float64).contiguous())
        self.cache[samples, idx] = flat
        above = self.cache[samples, (idx + 1).clamp(max=T - 1)]
        ratio = self.ratio.to(flat.device)[idx][:, None]
        out = flat + ratio * above
        if self.eps_last:  # the last step in eps form (`DPMSchedule.one_output`)
            out = torch.where((idx == 0)[:, None], self.last_eps.reshape(out.shape), out)
        return out.reshape(d.shape)


def dpmpp_2m_system(model: Any, schedule: DPMSchedule) -> tuple[BandedDataPrediction, Schedule]:
    """(model, schedule) on which every solver of the package runs DPM-Solver++(2M): the eps model wrapped in a
    fresh `BandedDataPrediction` and the schedule's `one_output` form. Make a new pair for every solve."""
    return BandedDataPrediction(model, schedule), schedule.one_output()


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


@torch.no_grad()
def sequential_multistep(model: Any, schedule: DPMSchedule, noise: NoiseBundle) -> torch.Tensor:
    """Back-substitution of a `DPMSchedule` through its step rule, t = T-1 down to 0, one model call per step;
    returns the trajectory [N, T+1, *S] (float64; index T is x_T). `model` is the eps `Denoiser`."""
    if noise.num_steps != schedule.num_steps:
        raise ValueError(f"noise bundle has {noise.num_steps} steps but the schedule has {schedule.num_steps}; "
                         "draw the bundle with num_steps equal to the sampler's step count")
    T, n = schedule.num_steps, noise.num_samples
    device = noise.x_T.device
    sch = schedule.to(device)
    rule, data = sch.make_step_rule(), DataPrediction(model, sch)
    x = torch.zeros(n, T + 1, int(np.prod(noise.sample_shape)), dtype=torch.float64, device=device)
    x[:, T] = noise.x_T.reshape(n, -1).to(torch.float64)
    samples = torch.arange(n, device=device)
    d_prev = torch.zeros_like(x[:, T])  # the engines' zeros for the output above x_T
    for t in range(T - 1, -1, -1):
        d = data(x[:, t + 1].reshape(n, *noise.sample_shape), sch.timesteps[t].expand(n), samples).reshape(n, -1)
        if not bool(torch.isfinite(d).all()):
            raise FloatingPointError(f"model output is not finite at step t={t} (reading state x_{t + 1})")
        steps = torch.full((n,), t, dtype=torch.long, device=device)
        x[:, t] = rule.step(steps, x[:, t + 1], (d, d_prev), torch.zeros_like(d))
        d_prev = d
    return x.reshape(n, T + 1, *noise.sample_shape)
