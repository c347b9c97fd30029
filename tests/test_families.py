"""Flow-Euler and DPM-Solver++(2M) tables: sequential sampling equals diffusers' own loops, and the analytic model's
known answers (closed-form Euler products, the exact ODE endpoint and the methods' convergence orders)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import DiTTransformer2DModel, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from parataa import draw_noise
from parataa.families import (
    MultistepSchedule,
    dpmpp_2m_schedule,
    flow_euler_schedule,
    flow_sigmas,
    sequential_multistep,
)
from parataa.models.flow import FLOW_GMM_SCHEDULER, FlowDiTDenoiser, GaussianMixtureFlow
from parataa.models.gmm import GaussianMixture, GaussianMixtureDenoiser
from parataa.solvers import preset, solve
from tests.helpers import rounding_tol, step_loop_tol

SD_V1_5 = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
               timestep_spacing="leading", set_alpha_to_one=False, clip_sample=False)


def _diffusers_flow_loop(model, cfg, steps, noise):
    sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    sched.set_timesteps(steps)
    x = noise.x_T.float()
    samples = torch.arange(x.shape[0])
    for tau in sched.timesteps:
        v = model(x.double(), tau.double().expand(x.shape[0]), samples).float()
        x = sched.step(v, tau, x).prev_sample
    return sched, x


def _diffusers_dpm_loop(model, cfg, steps, noise):
    sched = DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2)
    sched.set_timesteps(steps)
    x = noise.x_T.float()
    samples = torch.arange(x.shape[0])
    for tau in sched.timesteps:
        eps = model(x.double(), tau.double().expand(x.shape[0]), samples).float()
        x = sched.step(eps, tau, x).prev_sample
    return sched, x


def _multistep_tol(sch: MultistepSchedule, values: float) -> float:
    """step_loop_tol for a band of width 2: an error in x_{t+1} or x_{t+2} reaches x_t times at most the row sum
    |a_t| + |a2_t|; each step rounds terms of size (|a| + |b| + |a2| + |b2|) times the values' magnitude."""
    rows = (sch.a.abs() + sch.a2.abs()).clamp(min=1.0)
    scale = float((sch.a.abs() + sch.b.abs() + sch.a2.abs() + sch.b2.abs()).max()) * values
    return step_loop_tol(SimpleNamespace(a=rows, num_steps=sch.num_steps), scale, torch.float32, 12)


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture()


# ------------------------------------------------------------------ flow matching, Euler steps


@pytest.mark.parametrize(
    "cfg, steps", [({}, 50), ({"shift": 3.0}, 28), ({"shift": 0.5, "num_train_timesteps": 500}, 7)]
)
def test_flow_euler_matches_diffusers_loop_on_the_mixture(mixture, cfg, steps):
    den = GaussianMixtureFlow(mixture, [0, 4, 9], 5.0)
    noise = draw_noise([0, 1, 2], steps, (mixture.dim,))
    sched_d, want = _diffusers_flow_loop(den, cfg, steps, noise)
    sch = flow_euler_schedule(cfg, steps)
    torch.testing.assert_close(sch.timesteps.flip(0), sched_d.timesteps.double(), rtol=0, atol=0)
    ours = solve(den, sch, noise, preset("sequential"))
    tol = step_loop_tol(sch, float(want.abs().max()))
    torch.testing.assert_close(ours.x0.float(), want, rtol=0, atol=tol)


def test_flow_euler_matches_diffusers_loop_on_a_flow_dit():
    """tiny-flow's network (random weights: the architecture and the unrounded float timesteps are what matter)."""
    from parataa.models.embedded import tiny_flow_config

    torch.manual_seed(0)
    net = DiTTransformer2DModel(**tiny_flow_config())
    den = FlowDiTDenoiser(net, [3, 7], cfg_scale=4.0, guided_channels=None)
    steps = 6
    noise = draw_noise([5, 6], steps, den.sample_shape)
    _, want = _diffusers_flow_loop(den, FLOW_GMM_SCHEDULER, steps, noise)
    sch = flow_euler_schedule(FLOW_GMM_SCHEDULER, steps)
    ours = solve(den, sch, noise, preset("sequential"))
    torch.testing.assert_close(ours.x0.float(), want, rtol=0, atol=step_loop_tol(sch, float(want.abs().max())))
    # the model reads the level unrounded: two timesteps 0.4 apart give different velocities
    x = noise.x_T.double()
    v1 = den(x, torch.full((2,), 500.0, dtype=torch.float64), torch.arange(2))
    v2 = den(x, torch.full((2,), 500.4, dtype=torch.float64), torch.arange(2))
    assert not torch.equal(v1, v2)


def test_flow_euler_is_the_closed_form_recurrence_on_one_gaussian():
    """One class, no guidance: data N(mu, q^2 I). At level m the velocity is kappa(m) (x - (1 - m) mu) - mu,
    kappa = (m - (1 - m) q^2) / ((1 - m)^2 q^2 + m^2), so with y = x - (1 - s) mu an Euler step from s to s' is
    y' = y + (s' - s) kappa(m) (y + (m - s) mu), m = tau / 1000 the level the model reads (tau = float32(1000 s)):
    a scalar-coefficient recurrence that the sampler must follow to float64 rounding, x_0 = mu + y_0."""
    q = 0.5
    mix = GaussianMixture(dim=8, num_classes=1, spread=q)
    den = GaussianMixtureFlow(mix, [0, 0], 1.0)
    mu = mix.means[0]
    for cfg, steps in (({}, 12), ({"shift": 3.0}, 9)):
        levels, tau = flow_sigmas(cfg, steps)
        noise = draw_noise([0, 1], steps, (8,))
        y = noise.x_T - (1 - float(levels[0])) * mu
        for i in range(steps):
            s, s_next, m = float(levels[i]), float(levels[i + 1]), float(tau[i]) / 1000
            kappa = (m - (1 - m) * q**2) / ((1 - m) ** 2 * q**2 + m**2)
            y = y + (s_next - s) * kappa * (y + (m - s) * mu)
        x0 = solve(den, flow_euler_schedule(cfg, steps), noise, preset("sequential")).x0
        want = mu + y
        assert float((x0 - want).abs().max()) <= steps * rounding_tol(torch.float64, 16, float(want.abs().max()))


def test_flow_euler_converges_at_first_order_to_the_exact_endpoint():
    """The exact flow of N(mu, q^2 I) maps x_T to mu + q x_T; Euler's error halves when the steps double."""
    q = 0.5
    mix = GaussianMixture(dim=8, num_classes=1, spread=q)
    den = GaussianMixtureFlow(mix, [0, 0], 1.0)
    err = []
    for steps in (40, 80):
        noise = draw_noise([0, 1], steps, (8,))
        x0 = solve(den, flow_euler_schedule({}, steps), noise, preset("sequential")).x0
        err.append(float((x0 - (mix.means[0] + q * noise.x_T)).abs().max()))
    assert 1.8 < err[0] / err[1] < 2.2, err  # 2^1 (1 + O(1/T)); measured 2.01


# ------------------------------------------------------------------ DPM-Solver++(2M)


@pytest.mark.parametrize(
    "extra, steps",
    [
        ({}, 25),  # the mixture's config with DPM-Solver's defaults: final level 0, last step first order
        ({"final_sigmas_type": "sigma_min"}, 20),  # last step second order (T >= 15)
        ({"final_sigmas_type": "sigma_min"}, 10),  # lower_order_final with T < 15
        ({"final_sigmas_type": "sigma_min", "euler_at_final": True}, 16),
        (SD_V1_5, 25),  # Stable Diffusion v1.5's config: leading spacing, steps_offset 1
        ({"timestep_spacing": "trailing"}, 7),
        ({}, 1),
    ],
)
def test_dpmpp_2m_matches_diffusers_loop_on_the_mixture(mixture, extra, steps):
    cfg = {**mixture.scheduler_config, **extra}
    den = GaussianMixtureDenoiser(mixture, [0, 4, 9], 5.0)
    noise = draw_noise([0, 1, 2], steps, (mixture.dim,))
    sched_d, want = _diffusers_dpm_loop(den, cfg, steps, noise)
    sch = dpmpp_2m_schedule(cfg, steps)
    torch.testing.assert_close(sch.timesteps.flip(0), sched_d.timesteps.double(), rtol=0, atol=0)
    traj = sequential_multistep(den, sch, noise)
    torch.testing.assert_close(traj[:, 0].float(), want, rtol=0, atol=_multistep_tol(sch, float(want.abs().max())))


def test_dpmpp_2m_band_structure():
    """First step and (final level 0) last step are first order; every other step reads two states."""
    sch = dpmpp_2m_schedule({}, 10)
    assert float(sch.a2[-1]) == 0 and float(sch.b2[-1]) == 0 and float(sch.a2[0]) == 0
    assert bool((sch.a2[1:-1] != 0).all()) and float(sch.levels[0]) == 0.0
    # the last step returns the data prediction D(x_1) = (x_1 - sigma_1 eps) / alpha_1
    r1 = sch.levels[1]
    alpha1 = 1 / torch.sqrt(r1**2 + 1)
    tol = rounding_tol(torch.float64, 8, float(1 / alpha1))
    assert abs(float(sch.a[0] - 1 / alpha1)) <= tol and abs(float(sch.b[0] + r1)) <= tol
    # the second-order steps sum to the first-order one on a constant data prediction: with D fixed, the D(x_{t+2})
    # weight c1 and the D(x_{t+1}) weight c0 add up to phi, so x_t = alpha_t mu + sigma_t z holds exactly
    assert sch.describe()["second_order_steps"] == 8


def test_dpmpp_2m_converges_at_second_order_to_the_exact_endpoint():
    """One class, no guidance: the probability-flow ODE of N(mu, q^2 I) maps x_T to alpha mu + sqrt(v) z,
    z = (x_T - alpha_T mu) / sqrt(v_T), v = alpha^2 q^2 + 1 - alpha^2. With the final level sigma_min (every step
    a plain ODE step) doubling the steps divides the error by about 2^2."""
    q = 0.5
    mix = GaussianMixture(dim=8, num_classes=1, spread=q)
    den = GaussianMixtureDenoiser(mix, [0, 0], 1.0)
    cfg = {**mix.scheduler_config, "final_sigmas_type": "sigma_min"}
    mu, err = mix.means[0], []
    for steps in (64, 128):
        noise = draw_noise([0, 1], steps, (8,))
        sch = dpmpp_2m_schedule(cfg, steps)
        a_T, a_0 = (1 / torch.sqrt(sch.levels[i] ** 2 + 1) for i in (-1, 0))
        v_T, v_0 = (a**2 * q**2 + 1 - a**2 for a in (a_T, a_0))
        exact = a_0 * mu + v_0.sqrt() * (noise.x_T - a_T * mu) / v_T.sqrt()
        err.append(float((sequential_multistep(den, sch, noise)[:, 0] - exact).abs().max()))
    assert err[0] / err[1] > 3.0, err  # 2^2 (1 + O(1/T)); measured 4.67 (the first-order first step fades)


@pytest.mark.parametrize("name, steps", [("tiny-dit", 8), ("tiny-sd", 6)])
def test_dpmpp_2m_matches_diffusers_loop_on_embedded_models(name, steps):
    """The embedded networks with their diffusers configs: tiny-sd's own (SD v1.5's), tiny-dit's training betas
    (DiT's linear 1e-4 .. 0.02 over 1000 steps, DPMSolverMultistepScheduler's defaults)."""
    from parataa.families import DIT_SCHEDULER
    from parataa.models.registry import build_denoiser

    den, spec = build_denoiser(name, [3, 7], cfg_scale=5.0)
    cfg = spec["scheduler_config"] or DIT_SCHEDULER
    noise = draw_noise([0, 1], steps, spec["sample_shape"])
    _, want = _diffusers_dpm_loop(den, cfg, steps, noise)
    sch = dpmpp_2m_schedule(cfg, steps)
    traj = sequential_multistep(den, sch, noise)
    torch.testing.assert_close(traj[:, 0].float(), want, rtol=0, atol=_multistep_tol(sch, float(want.abs().max())))


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="solver_order=3"):
        dpmpp_2m_schedule({"solver_order": 3}, 10)
    with pytest.raises(ValueError, match="algorithm_type='sde-dpmsolver\\+\\+'"):
        dpmpp_2m_schedule({"algorithm_type": "sde-dpmsolver++"}, 10)
    with pytest.raises(ValueError, match="prediction_type"):
        dpmpp_2m_schedule({"prediction_type": "v_prediction"}, 10)
    with pytest.raises(ValueError, match="num_steps"):
        dpmpp_2m_schedule({}, 0)
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        flow_euler_schedule({"use_dynamic_shifting": True}, 10)
    with pytest.raises(ValueError, match="shift"):
        flow_euler_schedule({"shift": -1.0}, 10)
    with pytest.raises(ValueError, match="num_steps"):
        flow_euler_schedule({}, 2.5)
