"""Flow-Euler and DPM-Solver++(2M) tables: sequential sampling equals diffusers' own loops, and the analytic model's
known answers (closed-form Euler products, the exact ODE endpoint and the methods' convergence orders)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import DiTTransformer2DModel, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from parataa import draw_noise
from parataa.families import DPMSchedule, dpmpp_2m_schedule, flow_euler_schedule, flow_sigmas
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


def _multistep_tol(sch: DPMSchedule, values: float) -> float:
    """step_loop_tol for a band of width 2 written in eps: x_t = (a_t + b_t / alpha_{t+1}) x_{t+1}
    - b_t sigma_{t+1} / alpha_{t+1} eps + (b2_t / alpha_{t+2}) x_{t+2} - ... (alpha, sigma of the states read).
    An error in x_{t+1} or x_{t+2} reaches x_t times at most the row sum of the state coefficients; each step
    rounds terms of size (sum of all coefficients) times the values' magnitude."""
    alpha, sig = torch.sqrt(sch.alpha_in), torch.sqrt(1 - sch.alpha_in)
    alpha_up = torch.cat([alpha[1:], torch.ones(1, dtype=torch.float64)])
    sig_up = torch.cat([sig[1:], torch.zeros(1, dtype=torch.float64)])
    rows = sch.a.abs() + sch.b.abs() / alpha + sch.b2.abs() / alpha_up
    every = rows + sch.b.abs() * sig / alpha + sch.b2.abs() * sig_up / alpha_up
    scale = float(every.max()) * values
    return step_loop_tol(SimpleNamespace(a=rows.clamp(min=1.0), num_steps=sch.num_steps), scale, torch.float32, 12)


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
    x0 = solve(den, sch, noise, preset("sequential")).x0
    torch.testing.assert_close(x0.float(), want, rtol=0, atol=_multistep_tol(sch, float(want.abs().max())))


def test_dpmpp_2m_band_structure():
    """First step and (final level 0) last step are first order; every other step reads two states. The last
    step returns the data prediction D(x_1) itself (a = sigma_0 / sigma_1 = 0, weight 1), and on every step the
    two data-prediction weights add up to phi = alpha_t (1 - e^{-h}), so a constant D = mu is carried exactly:
    a_t alpha_{t+1} + b_t + b2_t = alpha_t."""
    sch = dpmpp_2m_schedule({}, 10)
    assert float(sch.b2[-1]) == 0 and float(sch.b2[0]) == 0 and bool((sch.b2[1:-1] != 0).all())
    assert float(sch.a[0]) == 0.0 and float(sch.b[0]) == 1.0 and float(sch.alpha_out[0]) == 1.0
    carried = sch.a * torch.sqrt(sch.alpha_in) + sch.b + sch.b2
    torch.testing.assert_close(carried, torch.sqrt(sch.alpha_out), rtol=0, atol=rounding_tol(torch.float64, 8))
    assert sch.describe()["second_order_steps"] == 8 and sch.to("cpu").b2 is not None


def test_dpm_rule_reads_data_predictions_and_takes_the_last_step_in_eps_form():
    """`DPMStep` is the registered rule of every DPM schedule: it turns eps into the data prediction D at the state
    it was evaluated at, and writes the last step x_0 = D(x_1) (a_0 = 0 in data form) in eps form with a_0 =
    1 / alpha_1, the same value to float64 rounding. The exact splitting needs that form: with a_0 = 0 its order-k
    equations above step 0 are 0 / 0 (NaN), with the eps form they are finite."""
    from parataa.families import DPMStep
    from parataa.system import make_window, order_k_rhs, step_rule

    sch = dpmpp_2m_schedule({}, 6)
    rule = step_rule(sch)
    assert isinstance(rule, DPMStep) and rule.reads == 2
    x, eps = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    t = torch.arange(6)
    alpha, sig = torch.sqrt(sch.alpha_in)[:, None], torch.sqrt(1 - sch.alpha_in)[:, None]
    data = (x - sig * eps) / alpha
    tol = rounding_tol(torch.float64, 4, scale=float(data.abs().max()))
    torch.testing.assert_close(rule.output(t[1:], x[1:], eps[1:]), data[1:], rtol=0, atol=tol)
    assert torch.equal(rule.output(t[:1], x[:1], eps[:1]), eps[:1]) and float(rule.a(t[:1])) > 0
    last = rule.step(t[:1], x[:1], (rule.output(t[:1], x[:1], eps[:1]), torch.zeros(1, 4, dtype=torch.float64)),
                     torch.zeros(1, 4, dtype=torch.float64))
    torch.testing.assert_close(last, data[:1], rtol=0, atol=tol)
    # order-k equations of one window holding steps 0..5 (x_ext: 7 states), data form against the rule's form
    win = make_window(torch.tensor([6]), 6, 6)
    g, x_ext = torch.randn(1, 6, 4, dtype=torch.float64), torch.randn(1, 7, 4, dtype=torch.float64)
    data_form = order_k_rhs(sch.a[None], g, x_ext, win.width, 3)
    assert not bool(torch.isfinite(data_form[:, 1:3]).any())
    assert bool(torch.isfinite(order_k_rhs(rule.a(win.t), g, x_ext, win.width, 3)).all())


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
        a_T, a_0 = torch.sqrt(sch.alpha_in[-1]), torch.sqrt(sch.alpha_out[0])
        v_T, v_0 = (a**2 * q**2 + 1 - a**2 for a in (a_T, a_0))
        exact = a_0 * mu + v_0.sqrt() * (noise.x_T - a_T * mu) / v_T.sqrt()
        err.append(float((solve(den, sch, noise, preset("sequential")).x0 - exact).abs().max()))
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
    x0 = solve(den, sch, noise, preset("sequential")).x0
    torch.testing.assert_close(x0.float(), want, rtol=0, atol=_multistep_tol(sch, float(want.abs().max())))


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


# ------------------------------------------------------------------ every solver on flow-Euler


FLOW_SOLVERS = [
    ("fp", {}),
    ("fp+", {}),
    ("aa", {}),
    ("taa", {}),
    ("taa", {"splitting": "euler"}),
    ("taa-euler", {}),
    ("picard", {}),
]


@pytest.mark.parametrize("solver, options", FLOW_SOLVERS)
@pytest.mark.parametrize("window", [2, 20])
def test_every_solver_matches_sequential_on_flow_euler(mixture, solver, options, window):
    """Flow-Euler is a one-state table, so every solver runs on it. The final trajectory meets the step rule
    (recomputed from scratch) and x_0 lies within the first-order propagation bound of the sequential one."""
    from parataa.stopping import tolerance_scale
    from tests.test_solvers import residual_bound, residuals

    steps = 20
    model = GaussianMixtureFlow(mixture, [0, 4, 9], 5.0)
    sched = flow_euler_schedule(FLOW_GMM_SCHEDULER, steps)
    noise = draw_noise([0, 1, 2], steps, (mixture.dim,))
    ref = solve(model, sched, noise, preset("sequential"))
    cfg = preset(solver, window=window, **options)
    res = solve(model, sched, noise, cfg)
    assert bool(res.finished.all()) and int(res.iterations.max()) <= steps
    rho = residuals(model, sched, noise, res.trajectory)
    if solver != "picard" and cfg.stop == "step":
        slack = rounding_tol(torch.float64, 4 * steps, scale=float(res.trajectory.abs().max()))
        thr = torch.clamp(cfg.rel_tol * tolerance_scale(sched, cfg.tol_scale), min=cfg.abs_tol)
        assert bool((rho <= thr + slack).all())
    err = torch.linalg.vector_norm(res.x0 - ref.x0, dim=-1)
    assert bool((err <= residual_bound(model, sched, noise, ref.trajectory, rho)).all())


def test_exact_and_euler_splittings_coincide_on_flow_euler(mixture):
    """a_t = 1 on every flow-Euler step, so P_{t,s} = 1 and the exact splitting's order-k equations are the Euler
    splitting's: TAA on either gives the same iterates (float64 rounding of the prefix sums)."""
    steps = 16
    model = GaussianMixtureFlow(mixture, [1, 2], 5.0)
    sched = flow_euler_schedule({}, steps)
    noise = draw_noise([3, 4], steps, (mixture.dim,))
    exact = solve(model, sched, noise, preset("taa", splitting="exact"))
    euler = solve(model, sched, noise, preset("taa", splitting="euler"))
    assert torch.equal(exact.iterations, euler.iterations)
    tol = rounding_tol(torch.float64, 4 * steps, scale=float(exact.trajectory.abs().max())) * steps
    torch.testing.assert_close(exact.trajectory, euler.trajectory, rtol=0, atol=tol)


# ------------------------------------------------------------------ every solver on DPM-Solver++(2M)


def _dpm_outputs(model, rule, timesteps: torch.Tensor, traj: torch.Tensor) -> torch.Tensor:
    """The data predictions D(x_{t+1}) [N, T, D] of a trajectory [N, T+1, D], recomputed from scratch (`DPMStep`)."""
    n, T1, d = traj.shape
    T = T1 - 1
    t = torch.arange(T).repeat(n)
    x_up = traj[:, 1:].reshape(n * T, d)
    eps = model(x_up, timesteps[t], torch.arange(n).repeat_interleave(T))
    return rule.output(t, x_up, eps).reshape(n, T, d)


def _dpm_residual_response(model, sch, noise, sample: int) -> list[torch.Tensor]:
    """||d x_0 / d R_t||_2 for t = 0..T-1: how a residual R_t added to step t of the banded system reaches x_0,
    linearised at the sequential trajectory (autograd through the exact mixture and the step rule)."""
    from parataa.system import step_rule

    T, d = sch.num_steps, noise.x_T.shape[-1]
    rule, s = step_rule(sch), torch.tensor([sample])

    def x0_of(res: torch.Tensor) -> torch.Tensor:
        x_up, d_prev = noise.x_T[sample : sample + 1].to(torch.float64), torch.zeros(1, d, dtype=torch.float64)
        for t in range(T - 1, -1, -1):
            tt = torch.tensor([t])
            d_now = rule.output(tt, x_up, model(x_up, sch.timesteps[tt], s))
            x_up, d_prev = rule.step(tt, x_up, (d_now, d_prev), torch.zeros_like(x_up)) + res[t], d_now
        return x_up[0]

    jac = torch.autograd.functional.jacobian(x0_of, torch.zeros(T, d, dtype=torch.float64))  # [d, T, d]
    return [torch.linalg.matrix_norm(jac[:, t], ord=2) for t in range(T)]


@pytest.mark.parametrize("solver, options", FLOW_SOLVERS)
@pytest.mark.parametrize("window", [3, 20])
def test_every_solver_matches_sequential_on_dpmpp_2m(mixture, solver, options, window):
    """Every solver runs DPM-Solver++(2M) on the eps model through its registered two-output rule. The final
    trajectory meets the stopping rule under residuals recomputed from scratch: per step under "step", in sum
    under "sum" (whose accepted window takes one more update after its outputs were kept, so the output the step
    below read lags that update); x_0 lies within twice the first-order response of x_0 to those residuals."""
    from parataa.stopping import tolerance_scale
    from parataa.system import rms, step_rule

    steps = 20
    model = GaussianMixtureDenoiser(mixture, [0, 4, 9], 5.0)
    sch = dpmpp_2m_schedule(mixture.scheduler_config, steps)
    noise = draw_noise([0, 1, 2], steps, (mixture.dim,))
    ref = solve(model, sch, noise, preset("sequential")).trajectory
    cfg = preset(solver, window=window, **options)
    res = solve(model, sch, noise, cfg)
    assert bool(res.finished.all()) and int(res.iterations.max()) <= steps
    # residuals of the final trajectory, from scratch: R_t = a x_{t+1} + b D(x_{t+1}) + b2 D(x_{t+2}) - x_t
    traj, n, rule = res.trajectory, noise.num_samples, step_rule(sch)
    outs = _dpm_outputs(model, rule, sch.timesteps, traj)
    up = torch.cat([outs[:, 1:], torch.zeros_like(outs[:, :1])], dim=1)
    resid = rule.step(torch.arange(steps).expand(n, steps), traj[:, 1:], (outs, up), noise.xi) - traj[:, :-1]
    scale = float(ref.abs().max())
    slack = rounding_tol(torch.float64, 4 * steps, scale=scale)
    if solver != "picard" and cfg.stop == "step":
        thr = torch.clamp(cfg.rel_tol * tolerance_scale(sch, cfg.tol_scale), min=cfg.abs_tol)
        assert bool((rms(resid) <= thr + slack).all())
    elif cfg.stop == "sum":
        assert bool((rms(resid).sum(dim=1) <= cfg.sum_tol + steps * slack).all())
    for i in range(n):
        gains = torch.stack(_dpm_residual_response(model, sch, noise, i))
        bound = 2.0 * float((gains * torch.linalg.vector_norm(resid[i], dim=-1)).sum())
        err = float(torch.linalg.vector_norm(res.x0[i] - ref[i, 0]))
        assert err <= bound + rounding_tol(torch.float64, 64 * steps, scale), (i, err, bound)


@pytest.mark.parametrize("solver", ["sequential", "taa", "taa-euler", "picard"])
def test_static_engine_equals_the_eager_one_on_both_families(mixture, solver):
    """The static engine (fixed shapes, masks) runs both families through the same step rule, DPM-Solver++(2M) on
    the eps model itself: same iterations, the eager loops' trajectory bit for bit (CPU)."""
    steps = 12
    noise = draw_noise([0, 1, 2], steps, (mixture.dim,))
    flow = GaussianMixtureFlow(mixture, [0, 1, 2], 5.0), flow_euler_schedule({}, steps)
    dpm = GaussianMixtureDenoiser(mixture, [0, 1, 2], 5.0), dpmpp_2m_schedule(mixture.scheduler_config, steps)
    for model, sched in (flow, dpm):
        for window in (None, 5):
            cfg = preset(solver) if solver == "sequential" else preset(solver, window=window)
            eager = solve(model, sched, noise, cfg)
            static = solve(model, sched, noise, cfg, engine="static")
            assert torch.equal(eager.iterations, static.iterations)
            assert torch.equal(static.trajectory, eager.trajectory), (sched.name, window)


def test_a_flow_schedules_stored_summary_keeps_its_fractional_timesteps(mixture):
    """Schedule.describe() (stored with every result) holds the model timesteps as the network sees them: a flow
    schedule's 1000 s are fractional and were cut to integers before; DDIM's stay integers."""
    import json

    from parataa.schedules import from_diffusers_config

    flow = flow_euler_schedule(None, 7)
    stored = flow.describe()["timesteps"]
    assert stored == [float(v) if not float(v).is_integer() else int(v) for v in flow.timesteps.tolist()]
    assert any(isinstance(v, float) for v in stored), "the 7-step flow schedule has fractional timesteps"
    assert json.loads(json.dumps(stored)) == stored
    ddim = from_diffusers_config(mixture.scheduler_config, 10, sampler="ddim").describe()
    assert all(isinstance(v, int) for v in ddim["timesteps"])
