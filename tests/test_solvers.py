"""Numerical properties of the solvers with known answers, on the exact Gaussian-mixture model."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch

from parataa.solvers import ModelOutputError, SolverConfig, preset, solve
from parataa.solvers._history import ridge_solve
from parataa.solvers.taa import taa_coefficients
from parataa.stopping import RULES, tolerance_scale
from parataa.system import euler_rhs, order_k_rhs, rms, suffix_sum
from tests.helpers import gmm_problem, rounding_tol, step_loop_tol

PARALLEL = ["fp", "fp+", "aa", "taa", "picard"]


def residuals(model, sched, noise, traj: torch.Tensor) -> torch.Tensor:
    """First-order residual RMS of every step of a final trajectory [N, T+1, D], recomputed from scratch."""
    n, T1, d = traj.shape
    T = T1 - 1
    x_up = traj[:, 1:].reshape(n * T, d)
    steps = torch.arange(T).repeat(n)
    samples = torch.arange(n).repeat_interleave(T)
    eps = model(x_up, sched.timesteps[steps], samples).reshape(n, T, d)
    rhs = sched.a[None, :, None] * traj[:, 1:] + sched.b[None, :, None] * eps + sched.c[None, :, None] * noise.xi
    return rms(rhs - traj[:, :-1])


def step_jacobians(model, sched, noise, traj: torch.Tensor, sample: int) -> list[torch.Tensor]:
    """J_t = d x_t / d x_{t+1} of the exact step along a trajectory (autograd on the analytic model)."""
    out = []
    for t in range(sched.num_steps):

        def step(x, t=t):
            e = model(x[None], sched.timesteps[t : t + 1], torch.tensor([sample]))[0]
            return sched.a[t] * x + sched.b[t] * e + sched.c[t] * noise.xi[sample, t]

        out.append(torch.autograd.functional.jacobian(step, traj[sample, t + 1]))
    return out


def residual_bound(model, sched, noise, ref: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Per-sample bound on ||x0 - x0_seq||_2 from the final trajectory's step residuals rho [N, T] (RMS).

    A trajectory with step residuals R_t differs from the sequential one by e_0 = -sum_t J_{0<-t} R_t to first
    order, with J_{0<-t} = J_0 J_1 ... J_{t-1} and ||R_t||_2 = sqrt(d) rho_t. Twice the first-order bound leaves
    room for the second-order terms at these tolerances.
    """
    d = ref.shape[-1]
    key = (sched.name, ref.shape, float(ref.sum()))
    if key not in _PROPAGATION:
        norms = torch.zeros(ref.shape[0], sched.num_steps, dtype=torch.float64)
        for n in range(ref.shape[0]):
            prod = torch.eye(d, dtype=torch.float64)
            for t, jac in enumerate(step_jacobians(model, sched, noise, ref, n)):
                norms[n, t] = torch.linalg.matrix_norm(prod, ord=2)
                prod = prod @ jac
        _PROPAGATION[key] = norms
    return 2.0 * d**0.5 * (_PROPAGATION[key] * rho).sum(dim=1)


_PROPAGATION: dict = {}  # ||J_{0<-t}|| along a sequential trajectory, computed once per problem


# (study name, options): the paper's solvers, and every solver on the Euler splitting with either stopping rule
SOLVER_VARIANTS = [
    ("fp", {}),
    ("fp+", {}),
    ("aa", {}),
    ("taa", {}),
    ("fp+", {"splitting": "euler", "init": "copy"}),
    ("aa", {"splitting": "euler", "init": "copy", "stop": "sum"}),
    ("taa", {"splitting": "euler"}),
    ("taa-euler", {}),
]


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("solver, options", SOLVER_VARIANTS)
@pytest.mark.parametrize("window", [1, 2, 10, 20])
def test_parallel_matches_sequential_within_tolerance_bound(mixture, sampler, solver, options, window):
    model, sched, noise = gmm_problem(mixture, steps=20, sampler=sampler)
    ref = solve(model, sched, noise, preset("sequential"))
    cfg = preset(solver, window=window, **options)
    res = solve(model, sched, noise, cfg)
    assert bool(res.finished.all())
    assert int(res.iterations.max()) <= sched.num_steps
    rho = residuals(model, sched, noise, res.trajectory)
    if cfg.stop == "step":
        # the final trajectory meets the rule, recomputed from scratch (every state is either accepted with its
        # residual measured or an exact step from the state above it); float64 rounding of the residuals only
        slack = rounding_tol(torch.float64, 4 * sched.num_steps, scale=float(res.trajectory.abs().max()))
        thr = torch.clamp(cfg.rel_tol * tolerance_scale(sched, cfg.tol_scale), min=cfg.abs_tol)
        assert bool((rho <= thr + slack).all())
    else:
        # the residuals of every accepted iterate add up to at most the budget (the returned one is a step beyond)
        log = res.log
        accepted = log[log["converged"]].groupby("sample")["rho"].sum()
        assert len(accepted) == noise.num_samples and bool((accepted <= cfg.sum_tol).all()), accepted
    err = torch.linalg.vector_norm(res.x0 - ref.x0, dim=-1)
    bound = residual_bound(model, sched, noise, ref.trajectory, rho)
    assert bool((err <= bound).all()), (err, bound)
    if window == 1 and cfg.init == "gaussian":
        # W = 1 is sequential sampling, bit for bit (a copied state may already meet the rule and be kept)
        assert torch.equal(res.trajectory, ref.trajectory)


def test_tighter_tolerance_gives_closer_samples(mixture):
    model, sched, noise = gmm_problem(mixture, steps=20)
    ref = solve(model, sched, noise, preset("sequential"))
    errs = []
    for tol in (1e-2, 1e-4, 1e-6):
        res = solve(model, sched, noise, preset("taa", abs_tol=tol, rel_tol=tol))
        errs.append(float((res.x0 - ref.x0).abs().max()))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-4


@pytest.mark.parametrize("history", [3, 4])
@pytest.mark.parametrize("window", [5, 13])
def test_taa_large_history_small_window_ends_within_T(mixture, history, window):
    model, sched, noise = gmm_problem(mixture, steps=30, sampler="ddpm")
    res = solve(model, sched, noise, preset("taa", history=history, window=window))
    assert bool(res.finished.all())
    assert int(res.iterations.max()) <= 30
    # a window of W states evaluates at most W states per iteration
    assert int(res.log.groupby(["sample", "iteration"]).size().max()) <= window


def test_max_iters_cuts_short_and_reports_unfinished(mixture):
    model, sched, noise = gmm_problem(mixture, steps=20)
    res = solve(model, sched, noise, preset("fp", max_iters=3))
    assert int(res.iterations.max()) == 3
    assert not bool(res.finished.any())


def test_taa_with_history_one_is_plain_fixed_point(mixture):
    model, sched, noise = gmm_problem(mixture, steps=20)

    def record(store):
        return lambda info: store.append(info.trajectory.clone())

    fp_iters, taa_iters = [], []
    fp = solve(model, sched, noise, preset("fp+"), callback=record(fp_iters))
    tm = solve(model, sched, noise, preset("taa", history=1), callback=record(taa_iters))
    assert len(fp_iters) == len(taa_iters)
    for a, b in zip(fp_iters, taa_iters, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(fp.trajectory, tm.trajectory)


def test_taa_with_history_one_is_plain_fixed_point_on_the_euler_splitting(mixture):
    model, sched, noise = gmm_problem(mixture, steps=20, sampler="ddpm")
    euler = dict(splitting="euler", init="copy")
    fp, tm = [], []
    solve(model, sched, noise, preset("fp+", **euler), callback=lambda i: fp.append(i.trajectory.clone()))
    solve(model, sched, noise, preset("taa", history=1, **euler), callback=lambda i: tm.append(i.trajectory.clone()))
    assert len(fp) == len(tm) and all(torch.equal(a, b) for a, b in zip(fp, tm, strict=True))


@pytest.mark.parametrize("window", [20, 7])
def test_fp_on_the_euler_splitting_is_the_picard_map(mixture, window):
    """FP with the Euler splitting, k = W and copy init updates exactly as ParaDiGMS' Picard: with both stopping
    rules made to freeze one state per iteration (nothing is ever accepted early), every iterate agrees."""
    model, sched, noise = gmm_problem(mixture, steps=20, sampler="ddpm")
    fp, pic = [], []
    cfg = preset("fp+", window=window, order=window, splitting="euler", init="copy", abs_tol=1e-300, rel_tol=0.0)
    a = solve(model, sched, noise, cfg, callback=lambda i: fp.append(i.trajectory.clone()))
    b = solve(
        model,
        sched,
        noise,
        preset("picard", window=window, picard_tol=0.0),
        callback=lambda i: pic.append(i.trajectory.clone()),
    )
    assert a.iterations.tolist() == b.iterations.tolist() == [20, 20, 20]
    # the two sum the same increments in another order: float64 rounding over a window of W terms, carried
    # through up to T iterations; an error made at step t reaches x_0 multiplied by up to P_{0,t} = a_0 ... a_{t-1}
    # (DDPM's a_t > 1), the schedule's largest linear amplification
    amplification = max(float(torch.cumprod(sched.a.double(), 0).max()), 1.0)
    tol = rounding_tol(torch.float64, 4 * window * 20, scale=float(a.trajectory.abs().max())) * amplification
    for x, y in zip(fp, pic, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=tol)


def test_sum_rule_accepts_the_whole_window_or_nothing():
    from parataa.system import make_window

    def stop_test(cfg, rho, valid, win, thr, spent):
        return RULES["sum"].test(cfg, rho, valid, win.lo, thr, spent, win.num_steps)

    cfg = preset("taa-euler", sum_tol=0.4)
    thr = torch.zeros(1, 4)
    # T = 4, whole window [0, 4), nothing frozen: accepted when the 4 residuals sum to <= 0.4
    win = make_window(torch.tensor([4]), 4, 4)
    none_spent = torch.zeros(1, dtype=torch.float64)
    rho = torch.tensor([[0.05, 0.3, 0.01, 0.0]], dtype=torch.float64)
    u_star, accepted = stop_test(cfg, rho, win.valid, win, thr, none_spent)
    assert u_star.tolist() == [-1] and accepted.tolist() == [[True, True, True, True]]
    # 0.51 > 0.4: nothing is accepted, not even the converged top; the top takes the exact step
    rho = torch.tensor([[0.2, 0.3, 0.01, 0.0]], dtype=torch.float64)
    u_star, accepted = stop_test(cfg, rho, win.valid, win, thr, none_spent)
    assert u_star.tolist() == [3] and not bool(accepted.any())
    # T = 8, window [2, 6) below a frozen x_6: its budget is 0.4 (8 - 2) / 8 = 0.3, and what was accepted
    # before (0.1) counts against it
    win = make_window(torch.tensor([6]), 4, 8)
    rho = torch.tensor([[0.1, 0.05, 0.03, 0.01]], dtype=torch.float64)  # 0.19
    spent = torch.tensor([0.1], dtype=torch.float64)
    assert stop_test(cfg, rho, win.valid, win, thr, spent)[0].tolist() == [-1]  # 0.29 <= 0.3
    # over budget (0.31 > 0.3): this window does not reach x_0, so the states within their share 0.4 / 8 = 0.05
    # are accepted as measured and the window moves on below them
    spent = torch.tensor([0.12], dtype=torch.float64)
    u_star, accepted = stop_test(cfg, rho, win.valid, win, thr, spent)
    assert u_star.tolist() == [0] and accepted.tolist() == [[False, True, True, True]]


def test_sum_rule_stops_later_for_a_smaller_budget(mixture):
    model, sched, noise = gmm_problem(mixture, steps=30, sampler="ddpm")
    ref = solve(model, sched, noise, preset("sequential"))
    iters, errs = [], []
    for tol in (0.2, 0.02, 0.002):
        res = solve(model, sched, noise, preset("taa-euler", sum_tol=tol))
        iters.append(float(res.iterations.double().mean()))
        errs.append(float((res.x0 - ref.x0).abs().max()))
    assert iters[0] <= iters[1] <= iters[2] and iters[0] < iters[2]
    assert errs[0] > errs[1] > errs[2]


def test_taa_gamma_equals_direct_suffix_ridge_least_squares():
    g = torch.Generator().manual_seed(3)
    n, w, k, d, lam = 2, 7, 3, 11, 1e-3
    df = torch.randn(n, w, k, d, generator=g, dtype=torch.float64)
    dx = torch.randn(n, w, k, d, generator=g, dtype=torch.float64)
    f = torch.randn(n, w, d, generator=g, dtype=torch.float64)
    valid = torch.ones(n, w, dtype=torch.bool)
    valid[1, 5:] = False  # a shorter window for the second sample
    gamma, ok = taa_coefficients((dx, df), f, valid, lam)
    assert bool(ok.all())
    for i in range(n):
        top = int(valid[i].sum())
        for t in range(top):
            a = torch.cat([df[i, s].T for s in range(t, top)])  # [(top-t) d, k]
            b = torch.cat([f[i, s] for s in range(t, top)])
            direct = torch.linalg.solve(a.T @ a + lam * torch.eye(k, dtype=torch.float64), a.T @ b)
            torch.testing.assert_close(gamma[i, t], direct, rtol=1e-10, atol=1e-12)


def test_suffix_sum():
    v = torch.arange(5.0)[None]
    assert suffix_sum(v).tolist() == [[10.0, 10.0, 9.0, 7.0, 4.0]]


def test_ridge_solve_flags_singular_and_nonfinite_systems():
    gram = torch.tensor(
        [[[1.0, 1.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 3.0]], [[float("nan"), 0.0], [0.0, 1.0]]],
        dtype=torch.float64,
    )
    rhs = torch.tensor([[1.0, 1.0], [2.0, 3.0], [1.0, 1.0]], dtype=torch.float64)
    gamma, ok = ridge_solve(gram, rhs, 0.0)
    assert ok.tolist() == [False, True, False]
    assert gamma[1].tolist() == [1.0, 1.0]
    assert gamma[0].tolist() == [0.0, 0.0] and gamma[2].tolist() == [0.0, 0.0]
    # an empty column (no data yet) solves to zero instead of making the system singular
    gamma, ok = ridge_solve(
        torch.tensor([[[2.0, 0.0], [0.0, 0.0]]], dtype=torch.float64),
        torch.tensor([[4.0, 0.0]], dtype=torch.float64),
        0.0,
    )
    assert ok.tolist() == [True] and gamma.tolist() == [[2.0, 0.0]]


def test_ridge_zero_still_converges(mixture):
    model, sched, noise = gmm_problem(mixture, steps=20)
    ref = solve(model, sched, noise, preset("sequential"))
    res = solve(model, sched, noise, preset("taa", history=4, ridge=0.0))
    assert bool(res.finished.all()) and int(res.iterations.max()) <= 20
    assert float((res.x0 - ref.x0).abs().max()) < 0.5


def _order_k_direct(a, g, x_ext, width, k):
    n, w, d = g.shape
    out = torch.zeros_like(g)
    for i in range(n):
        for j in range(int(width[i])):
            kk = min(k, int(width[i]) - j)
            p = torch.ones((), dtype=torch.float64)
            acc = torch.zeros(d, dtype=torch.float64)
            for s in range(j, j + kk):
                acc = acc + p * g[i, s]
                p = p * a[i, s]
            out[i, j] = p * x_ext[i, j + kk] + acc
    return out


@pytest.mark.parametrize("k", [1, 2, 5, 9])
def test_order_k_rhs_matches_direct_sum(k):
    g0 = torch.Generator().manual_seed(1)
    n, w, d = 3, 8, 4
    a = 1 + torch.rand(n, w, generator=g0, dtype=torch.float64) * 0.2
    g = torch.randn(n, w, d, generator=g0, dtype=torch.float64)
    x_ext = torch.randn(n, w + 1, d, generator=g0, dtype=torch.float64)
    width = torch.tensor([8, 5, 1])
    g[1, 5:] = 0
    g[2, 1:] = 0
    fast = order_k_rhs(a, g, x_ext, width, k)
    direct = _order_k_direct(a, g, x_ext, width, k)
    mask = torch.arange(w)[None] < width[:, None]
    torch.testing.assert_close(fast[mask], direct[mask], rtol=1e-12, atol=1e-12)


def _euler_direct(a, g, x_ext, width, k):
    """x_{t+k'} + sum_{s=t}^{t+k'-1} ((a_s - 1) x_{s+1} + g_s), term by term."""
    n, w, _ = g.shape
    out = torch.zeros_like(g)
    for i in range(n):
        for j in range(int(width[i])):
            kk = min(k, int(width[i]) - j)
            acc = x_ext[i, j + kk].clone()
            for s in range(j, j + kk):
                acc = acc + (a[i, s] - 1) * x_ext[i, s + 1] + g[i, s]
            out[i, j] = acc
    return out


@pytest.mark.parametrize("k", [1, 2, 5, 9])
def test_euler_rhs_matches_direct_sum(k):
    g0 = torch.Generator().manual_seed(2)
    n, w, d = 3, 8, 4
    a = 1 + torch.rand(n, w, generator=g0, dtype=torch.float64) * 0.2
    g = torch.randn(n, w, d, generator=g0, dtype=torch.float64)
    x_ext = torch.randn(n, w + 1, d, generator=g0, dtype=torch.float64)
    width = torch.tensor([8, 5, 1])
    fast = euler_rhs(a, g, x_ext, width, k)
    direct = _euler_direct(a, g, x_ext, width, k)
    mask = torch.arange(w)[None] < width[:, None]
    # prefix-sum differences against a running sum of k float64 terms of size ~3
    torch.testing.assert_close(fast[mask], direct[mask], rtol=0, atol=rounding_tol(torch.float64, 4 * w, 3.0))
    if k == 1:  # the first-order equations of both splittings are the plain recurrence
        assert torch.equal(fast[mask], order_k_rhs(a, g, x_ext, width, 1)[mask])


def test_every_order_has_the_sequential_solution(mixture):
    """F^(k) and the Euler E^(k) vanish at the sequential trajectory for every k: they share one solution."""
    model, sched, noise = gmm_problem(mixture, steps=12)
    ref = solve(model, sched, noise, preset("sequential")).trajectory
    n, T = ref.shape[0], 12
    steps = torch.arange(T).repeat(n)
    eps = model(ref[:, 1:].reshape(n * T, -1), sched.timesteps[steps], torch.arange(n).repeat_interleave(T))
    g = sched.b[None, :, None] * eps.reshape(n, T, -1) + sched.c[None, :, None] * noise.xi
    tol = rounding_tol(torch.float64, 4 * T, scale=float(ref.abs().max()) * float(sched.a.prod()))
    for k in (1, 5, T):
        for rhs_of in (order_k_rhs, euler_rhs):
            rhs = rhs_of(sched.a[None].expand(n, -1), g, ref, torch.full((n,), T), k)
            torch.testing.assert_close(rhs, ref[:, :-1], rtol=0, atol=tol)


def test_orders_converge_to_the_same_trajectory(mixture):
    model, sched, noise = gmm_problem(mixture, steps=20)
    tight = dict(abs_tol=1e-9, rel_tol=1e-9)
    outs = [solve(model, sched, noise, preset("taa", order=k, **tight)).x0 for k in (1, 5, 20)]
    ref = solve(model, sched, noise, preset("sequential")).x0
    for o in outs:
        torch.testing.assert_close(o, ref, rtol=0, atol=1e-6)


def test_larger_order_and_taa_need_fewer_iterations(mixture):
    model, sched, noise = gmm_problem(mixture, steps=50)
    iters = {
        name: float(solve(model, sched, noise, preset(name, init="copy")).iterations.double().mean())
        for name in ("fp", "fp+", "taa")
    }
    assert iters["taa"] < iters["fp+"] < iters["fp"] <= 50


@pytest.mark.parametrize("solver", PARALLEL)
def test_same_noise_same_result(mixture, solver):
    model, sched, noise = gmm_problem(mixture, steps=15, sampler="ddpm")
    a = solve(model, sched, noise, preset(solver))
    b = solve(model, sched, noise, preset(solver))
    assert torch.equal(a.trajectory, b.trajectory)
    assert torch.equal(a.iterations, b.iterations)


def test_a_sample_does_not_depend_on_its_batch(mixture):
    model, sched, noise = gmm_problem(mixture, steps=15, seeds=(0, 1, 2))
    full = solve(model, sched, noise, preset("taa"))
    one_model, _, one_noise = gmm_problem(mixture, steps=15, seeds=(2,))
    single = solve(one_model, sched, one_noise, preset("taa"))
    torch.testing.assert_close(full.trajectory[2], single.trajectory[0], rtol=0, atol=1e-13)
    assert int(full.iterations[2]) == int(single.iterations[0])


@pytest.mark.parametrize("solver", ["fp+", "taa", "aa", "picard", "sequential"])
def test_resume_from_checkpoint_is_bit_identical(mixture, solver):
    model, sched, noise = gmm_problem(mixture, steps=20, sampler="ddpm")
    full = solve(model, sched, noise, preset(solver, window=8) if solver != "sequential" else preset(solver))
    saved = {}

    def grab(info):
        if info.iteration == 2:
            saved["state"] = copy.deepcopy(info.state.state_dict())

    cfg = preset(solver, window=8) if solver != "sequential" else preset(solver)
    solve(model, sched, noise, cfg, callback=grab)
    from parataa.solvers import SolverState

    resumed = solve(model, sched, noise, cfg, resume=SolverState.from_state_dict(saved["state"]))
    assert torch.equal(resumed.trajectory, full.trajectory)
    assert torch.equal(resumed.iterations, full.iterations)
    assert resumed.log.equals(full.log)


def test_picard_converges_and_matches_sequential(mixture):
    model, sched, noise = gmm_problem(mixture, steps=20, sampler="ddpm")
    ref = solve(model, sched, noise, preset("sequential"))
    res = solve(model, sched, noise, preset("picard", picard_tol=1e-4))
    assert bool(res.finished.all()) and int(res.iterations.max()) <= 20
    assert float((res.x0 - ref.x0).abs().max()) < 1e-2


def test_picard_drift_matches_diffusers_batch_step(mixture):
    from diffusers import DDPMParallelScheduler

    from parataa.schedules import from_diffusers_config

    cfg = dict(mixture.scheduler_config)
    cfg.pop("set_alpha_to_one")
    sched_d = DDPMParallelScheduler(**cfg)
    sched_d.set_timesteps(25)
    sched = from_diffusers_config(mixture.scheduler_config, 25, sampler="ddpm")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(25, 16, generator=g)
    eps = torch.randn(25, 16, generator=g)
    ts = sched_d.timesteps  # descending: row i is step T-1-i
    theirs = sched_d.batch_step_no_noise(eps, ts, x).double()
    t_idx = torch.arange(24, -1, -1)
    ours = sched.a[t_idx, None] * x.double() + sched.b[t_idx, None] * eps.double()
    # diffusers does the step in float32: a few roundings of values of the size of x and eps
    tol = rounding_tol(torch.float32, 8, scale=float(torch.cat([x, eps]).abs().max()) * float(sched.a.max()))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=tol)
    assert torch.equal(sched.timesteps[t_idx].long(), ts.long())


def test_nan_from_model_raises_with_location(mixture):
    model, sched, noise = gmm_problem(mixture, steps=10)
    model.nan_at = (1, int(sched.timesteps[4]))
    for solver in ("sequential", "taa", "picard"):
        with pytest.raises(ModelOutputError) as e:
            solve(model, sched, noise, preset(solver))
        assert e.value.sample == 1 and e.value.seed == 1 and e.value.step == 4
        assert "iteration" in str(e.value) and "step t=4" in str(e.value)


def test_init_copy_and_trajectory(mixture):
    model, sched, noise = gmm_problem(mixture, steps=20)
    ref = solve(model, sched, noise, preset("sequential"))
    warm = solve(model, sched, noise, preset("taa", init="trajectory"), init=ref.trajectory)
    assert int(warm.iterations.max()) == 1  # the solution is its own fixed point: one verifying call
    torch.testing.assert_close(warm.trajectory, ref.trajectory, rtol=0, atol=0)
    # variation: keep the states above step 10 of another class's trajectory, re-solve the rest
    other_model, _, _ = gmm_problem(mixture, steps=20, seeds=(0, 1, 2))
    other_model.labels = torch.tensor([3, 3, 3])
    other = solve(other_model, sched, noise, preset("sequential"))
    var = solve(model, sched, noise, preset("taa", init="trajectory", freeze_from=10), init=other.trajectory)
    assert torch.equal(var.trajectory[:, 10:], other.trajectory[:, 10:])
    assert int(var.iterations.max()) <= 10
    copy_res = solve(model, sched, noise, preset("fp+", init="copy"))
    assert bool(copy_res.finished.all())


def test_log_is_tidy_and_complete(mixture):
    model, sched, noise = gmm_problem(mixture, steps=20)
    res = solve(model, sched, noise, preset("taa", window=8))
    log = res.log
    assert list(log.columns) == [
        "sample",
        "seed",
        "iteration",
        "step",
        "rho",
        "threshold",
        "converged",
        "window_lo",
        "window_hi",
        "fallback",
    ]
    assert len(log) == int(res.nfe.sum())
    assert bool(((log.step >= log.window_lo) & (log.step < log.window_hi)).all())
    last = log.groupby("sample").iteration.max()
    assert (last + 1).tolist() == res.iterations.tolist()
    t = res.timings
    assert len(t) == res.log.iteration.nunique() and bool((t.model_s >= 0).all())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(window=0), "window"),
        (dict(abs_tol=-1.0), "abs_tol"),
        (dict(history=0), "history"),
        (dict(order=0), "order"),
        (dict(method="tta"), "did you mean 'taa'"),
        (dict(init="gauss"), "init"),
        (dict(freeze_from=3), "freeze_from"),
        (dict(abs_tol=0.0, rel_tol=0.0), "both 0"),
        (dict(ridge=float("nan")), "ridge"),
    ],
)
def test_bad_config_is_rejected_with_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SolverConfig(**kwargs)


def test_unknown_option_suggests_close_match():
    with pytest.raises(ValueError, match="did you mean 'history'"):
        SolverConfig.from_dict({"histroy": 2})
    with pytest.raises(ValueError, match="did you mean 'taa'"):
        preset("tta")


def test_mismatched_shapes_are_rejected(mixture):
    model, sched, noise = gmm_problem(mixture, steps=20)
    _, sched10, _ = gmm_problem(mixture, steps=10)
    with pytest.raises(ValueError, match="noise bundle has 20 steps but the schedule has 10"):
        solve(model, sched10, noise, preset("taa"))
    with pytest.raises(ValueError, match="init trajectory must have shape"):
        solve(model, sched, noise, preset("taa", init="trajectory"), init=torch.zeros(3, 5, 16))
    with pytest.raises(ValueError, match="set init='trajectory'"):
        solve(model, sched, noise, preset("taa"), init=torch.zeros(3, 21, 16))

    def bad_model(x, t, s):
        return x[:, :4]

    with pytest.raises(ValueError, match="model returned shape"):
        solve(bad_model, sched, noise, preset("taa"))


@pytest.mark.parametrize("window", [6, 20])
def test_picard_equals_the_paradigms_loop_of_diffusers(mixture, window):
    """Our Picard against a line-by-line replay of StableDiffusionParadigmsPipeline's denoising loop
    (buffer indexing, DDPMParallelScheduler.batch_step_no_noise, inverse-variance tolerance, window moves)."""
    from diffusers import DDPMParallelScheduler

    T, tol = 20, 0.1
    model, sched, noise = gmm_problem(mixture, steps=T, sampler="ddpm", seeds=(0,))
    cfg = {k: v for k, v in mixture.scheduler_config.items() if k != "set_alpha_to_one"}
    sd = DDPMParallelScheduler(**cfg)
    sd.set_timesteps(T)
    ts = sd.timesteps
    x_T = noise.x_T[0]
    buf = torch.stack([x_T] * (T + 1))
    # pipeline: noise_array[j] = sqrt(variance(timesteps[j])) * base noise; ours: c_t xi_t with t = T-1-j
    noise_array = torch.zeros_like(buf)
    for j in range(T):
        noise_array[j] = sd._get_variance(ts[j]).double() ** 0.5 * noise.xi[0, T - 1 - j]
    inv_var = 1.0 / torch.tensor([float(sd._get_variance(t)) for t in ts] + [0.0], dtype=torch.float64)
    inv_var = inv_var / x_T.numel()
    begin, end, steps = 0, window, 0
    while begin < T:
        n = end - begin
        blk = buf[begin:end]
        eps = model(blk, ts[begin:end].double(), torch.zeros(n, dtype=torch.long))
        den = sd.batch_step_no_noise(eps.float(), ts[begin:end], blk.float()).double()
        new = buf[begin][None] + torch.cumsum(den - blk, 0) + torch.cumsum(noise_array[begin:end], 0)
        err = torch.linalg.norm(new - buf[begin + 1 : end + 1], dim=-1).pow(2) * inv_var[begin + 1 : end + 1]
        err = torch.nn.functional.pad(err, (0, 1), value=1e9)
        ind = int(torch.argmax((err > tol**2).int()))
        new_begin = begin + min(1 + ind, window)
        new_end = min(new_begin + window, T)
        buf[begin + 1 : end + 1] = new
        buf[end : new_end + 1] = buf[end][None]
        begin, end, steps = new_begin, new_end, steps + 1
    ours = solve(model, sched, noise, preset("picard", window=window, picard_tol=tol))
    assert int(ours.iterations[0]) == steps
    # the replay does each step's arithmetic in float32 (batch_step_no_noise), this package in float64
    torch.testing.assert_close(ours.x0[0], buf[T], rtol=0, atol=step_loop_tol(sched, float(buf.abs().max())))


def test_every_registered_method_and_rule_is_dispatched_and_described():
    """The registry is the one list: every method has its reference loop, every window method an update rule the
    static engine runs, every stopping rule its options among SolverConfig's fields."""
    from parataa.solver_config import METHOD_RECORDS, SOLVER_RECORDS
    from parataa.solvers import SOLVERS
    from parataa.solvers.base import registered

    fields = set(SolverConfig.field_names())
    assert set(SOLVERS) == set(METHOD_RECORDS)
    for name, m in METHOD_RECORDS.items():
        assert (m.loop is None) == (m.update is not None) and m.options <= fields, name
        if m.loop is not None:
            assert SOLVERS[name] is registered(m.loop), name
        if m.update is not None:
            assert callable(registered(m.update)(SolverConfig(method=name))), name
    for name, s in SOLVER_RECORDS.items():
        assert preset(name).method == s.preset["method"] and s.fixed <= fields, name
    for name, rule in RULES.items():
        assert set(rule.options) <= fields and SolverConfig(stop=name).stop == name, name


def test_an_option_that_changes_nothing_for_a_solver_is_refused():
    from parataa.solver_config import expand_solver_grid, read_options

    for name, block, word in (
        ("fp", {"splitting": "euler"}, "at order 1 both splittings are the same"),
        ("taa", {"order": 1, "splitting": "euler"}, "at order 1 both splittings are the same"),
        ("taa-euler", {"abs_tol": 1e-4}, "stop='sum' reads sum_tol"),
        ("picard", {"history": 3}, "method 'picard' reads"),
        ("fp+", {"ridge": 0.1}, "method 'fp' reads"),
    ):
        with pytest.raises(
            ValueError, match=f"solvers.{re.escape(name)}: .* does nothing for solver '{re.escape(name)}'"
        ):
            expand_solver_grid({"solvers": {name: block}}, 20)
        with pytest.raises(ValueError, match=word):
            expand_solver_grid({"solvers": {name: block}}, 20)
    # what a solver reads is accepted, and study-wide defaults still skip what a solver does not read
    assert expand_solver_grid({"solvers": {"fp+": {"splitting": "euler"}}, "solver_defaults": {"history": 4}}, 20)
    assert "splitting" in read_options(preset("fp+").to_dict()) and "sum_tol" in read_options(
        preset("taa-euler").to_dict()
    )


def test_cli_refuses_a_flag_no_chosen_solver_reads(capsys):
    from parataa.cli import main

    base = ["compare", "--model", "gmm", "--dim", "4", "--steps", "4", "--seeds", "0", "--json", "--quiet"]
    assert main([*base, "--solvers", "fp", "--splitting", "euler"]) == 2
    err = capsys.readouterr().err
    assert "--splitting" in err and "'fp'" in err and "drop --splitting" in err
    assert main([*base, "--solvers", "taa", "--stop", "sum", "--abs-tol", "1e-4"]) == 2
    assert "abs_tol does nothing" in capsys.readouterr().err
    # a flag one chosen solver reads applies to it and passes the others by
    assert main([*base, "--solvers", "fp,fp+", "--splitting", "euler"]) == 0


def test_schema_solver_options_are_the_registry_options():
    """The study schema's solver names, solver options and their choices are the registry's, filled in when it is
    loaded: the YAML file lists no solver and no choice, and a file whose options are not SolverConfig's user options
    is refused. Every user option is a CLI flag."""
    import yaml

    from parataa.cli import build_parser
    from parataa.jobs.config import SCHEMA, fill_registry, load_schema
    from parataa.solver_config import PARALLEL_SOLVERS, USER_OPTIONS, option_choices

    schema = load_schema()
    defs, props = schema["definitions"], schema["definitions"]["solver_block"]["properties"]
    assert set(props) == set(USER_OPTIONS) == set(SolverConfig.field_names()) - {"method", "freeze_from"}
    assert list(schema["properties"]["solvers"]["properties"]) == list(PARALLEL_SOLVERS)
    assert option_choices()["init"] == ("gaussian", "copy") and option_choices()["stop"] == tuple(RULES)
    for option, values in option_choices().items():
        assert defs[option]["enum"] == list(values), option
        assert all(v in props[option]["description"] for v in values), option
    raw = yaml.safe_load(SCHEMA.read_text())
    assert "enum" not in raw["definitions"]["stop"] and raw["properties"]["solvers"]["properties"] == {}
    del raw["definitions"]["solver_block"]["properties"]["sum_tol"]
    with pytest.raises(ValueError, match=r"solver_block\.properties .*missing \['sum_tol'\], unknown \[\]"):
        fill_registry(raw)
    args = build_parser().parse_args(["compare", "--model", "gmm", "--steps", "4", "--seeds", "0"])
    assert all(getattr(args, option) is None for option in USER_OPTIONS)


def test_a_new_stopping_rule_is_one_registered_class(mixture):
    """A rule registered from outside the package is a valid `stop`, a value of the study schema and a --stop choice of
    the CLI, tags its runs and drives both engines alike."""
    from parataa.solver_config import solver_tag
    from parataa.stopping import PerStep, register

    class Halved(PerStep):
        name = "halved"  # accepts a step at half the per-step threshold

        def tag_parts(self, c):
            return ["halved", *super().tag_parts(c)]

        def bad(self, config, rho, valid, lo, thr, spent, num_steps):
            return valid & (rho > thr / 2)

    import yaml

    from parataa.cli import main
    from parataa.jobs.config import ConfigError, validate_config

    study = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/smoke.yaml").read_text())
    study["solvers"] = {"taa": {"stop": ["step", "halved"]}}
    cli = ["compare", "--model", "gmm", "--dim", "4", "--steps", "4", "--seeds", "0", "--json", "--quiet"]
    cli += ["--solvers", "taa", "--stop", "halved"]
    with pytest.raises(ConfigError, match=r"config\.solvers\.taa\.stop\[1\]: 'halved' is not one of"):
        validate_config(study)
    with pytest.raises(SystemExit):
        main(cli)
    register(Halved)
    try:
        # the study schema and the CLI read the registry when they are built: the new rule is a choice of both
        assert validate_config(study)["solvers"]["taa"]["stop"] == ["step", "halved"]
        assert main(cli) == 0
        model, sched, noise = gmm_problem(mixture, steps=12)
        cfg = preset("taa", window=6, stop="halved")
        assert solver_tag("taa", cfg, 12) == "taa_m2_k12_w6_halved_tol1e-3"
        eager, static = solve(model, sched, noise, cfg), solve(model, sched, noise, cfg, engine="static")
        assert torch.equal(eager.trajectory, static.trajectory) and torch.equal(eager.iterations, static.iterations)
        log = eager.log
        assert bool((log.loc[log["converged"], "rho"] <= log.loc[log["converged"], "threshold"] / 2).all())
        assert int(eager.iterations.max()) >= int(solve(model, sched, noise, preset("taa", window=6)).iterations.max())
    finally:
        del RULES["halved"]


def test_a_step_rule_reading_two_outputs_drives_every_solver_and_both_engines(mixture):
    """A step rule that reads the model outputs at x_{t+1} and x_{t+2} (as DPM-Solver++(2M) does) is one class: the
    sequential loop, the window solvers and Picard solve its system, the window solvers' final trajectories meet the
    per-step rule under residuals recomputed from scratch (the output above each window's top included), and the
    static engine gives the reference's iterates bit for bit."""
    import dataclasses

    from parataa.system import STEP_RULES, LinearStep

    class TwoOutputs(LinearStep):
        reads = 2

        def drift(self, t, outs):
            second = 0.3 * (t < self.a_p.shape[0] - 2).to(torch.float64)  # zero weight at t = T-1 and the scratch T
            return self.b_p[t][..., None] * outs[0] + (second * self.b_p[t])[..., None] * outs[1]

    STEP_RULES["two-outputs"] = TwoOutputs
    try:
        model, sched, noise = gmm_problem(mixture, steps=12)
        two = dataclasses.replace(sched, name="two-outputs")
        ref = solve(model, two, noise, preset("sequential"))
        assert not torch.equal(ref.x0, solve(model, sched, noise, preset("sequential")).x0)
        assert torch.equal(ref.trajectory, solve(model, two, noise, preset("sequential"), engine="static").trajectory)
        T, n = two.num_steps, noise.num_samples
        rule, xi = TwoOutputs(two), noise.xi.reshape(n, T, -1)
        for name, window in (("fp+", 3), ("taa", 3), ("taa", None), ("taa-euler", 5), ("picard", 3)):
            cfg = preset(name, window=window)
            res, static = solve(model, two, noise, cfg), solve(model, two, noise, cfg, engine="static")
            assert bool(res.finished.all()) and torch.equal(res.trajectory, static.trajectory), (name, window)
            if cfg.stop != "step" or name == "picard":
                continue
            x = res.trajectory.reshape(n, T + 1, -1)
            t = torch.arange(T)
            samples = torch.arange(n).repeat_interleave(T)
            out = model(x[:, 1:].reshape(n * T, -1), two.timesteps[t].repeat(n), samples).reshape(n, T, -1)
            up = torch.cat([out[:, 1:], torch.zeros_like(out[:, :1])], dim=1)
            rho = rms(rule.step(t.expand(n, T), x[:, 1:], (out, up), xi) - x[:, :T])
            thr = torch.clamp(cfg.rel_tol * tolerance_scale(two, cfg.tol_scale), min=cfg.abs_tol)
            assert bool((rho <= thr + rounding_tol(torch.float64, 4 * T, scale=float(x.abs().max()))).all()), name
    finally:
        del STEP_RULES["two-outputs"]
