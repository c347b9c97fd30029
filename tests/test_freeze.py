"""Freezing the converged prefix under the summed rule (`SolverConfig.freeze_frac`, docs/METHOD.md section 9): the
prefix it accepts, the bound it keeps, both engines, the states it saves, and its refusals."""

from __future__ import annotations

import math

import pytest
import torch

from parataa import draw_noise
from parataa.solvers import SolverConfig, preset, solve
from parataa.solvers.static import StaticSolver
from parataa.stopping import RULES
from parataa.system import make_window, rms
from tests.helpers import dit_reduction_length, gmm_problem, rounding_tol
from tests.test_solvers import residual_bound, residuals


def stop_test(cfg, rho, win, spent):
    return RULES["sum"].test(cfg, rho, win.valid, win.lo, torch.zeros_like(rho), spent, win.num_steps)


def test_the_longest_prefix_within_its_share_is_accepted_and_spends_at_most_the_fraction():
    # T = 8, whole window; budget 0.8, freeze_frac 0.5: the prefix from the top down to step t may hold
    # 0.5 * 0.8 * (8 - t) / 8 = 0.05 (8 - t) with what was accepted before
    cfg = preset("taa-euler", sum_tol=0.8, freeze_frac=0.5)
    win = make_window(torch.tensor([8]), 8, 8)
    none = torch.zeros(1, dtype=torch.float64)
    # top down: step 7 .. 0; suffix sums 0.09 (> 0.05), 0.10, 0.11, 0.12, 0.22 (<= 0.25 at t = 3), then over
    rho = torch.tensor([[0.4, 0.3, 0.2, 0.1, 0.01, 0.01, 0.01, 0.09]], dtype=torch.float64)
    u_star, accepted = stop_test(cfg, rho, win, none)
    # the top alone is over its share, the longer prefix t >= 3 within its own: the longest one is taken
    assert u_star.tolist() == [2] and accepted.tolist() == [[False] * 3 + [True] * 5]
    spent_after = float(rho[accepted].sum())
    assert spent_after <= cfg.freeze_frac * cfg.sum_tol
    # what was accepted before counts against the share: 0.04 + 0.22 > 0.25 at t = 3; t = 4 holds 0.16 <= 0.2
    u_star, accepted = stop_test(cfg, rho, win, torch.tensor([0.04], dtype=torch.float64))
    assert u_star.tolist() == [3] and accepted.tolist() == [[False] * 4 + [True] * 4]
    # off: the window that reaches x_0 is accepted only as a whole (the top takes the exact step)
    u_star, accepted = stop_test(preset("taa-euler", sum_tol=0.8), rho, win, none)
    assert u_star.tolist() == [7] and not bool(accepted.any())


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("window", [None, 7])
def test_frozen_solve_matches_sequential_within_the_residual_bound(mixture, sampler, window):
    model, sched, noise = gmm_problem(mixture, steps=20, sampler=sampler)
    ref = solve(model, sched, noise, preset("sequential"))
    cfg = preset("taa-euler", window=window, freeze_frac=0.5)
    res = solve(model, sched, noise, cfg)
    assert bool(res.finished.all()) and int(res.iterations.max()) <= sched.num_steps
    log = res.log
    accepted = log[log["converged"]].groupby("sample")["rho"].sum()
    assert len(accepted) == noise.num_samples and bool((accepted <= cfg.sum_tol).all()), accepted
    rho = residuals(model, sched, noise, res.trajectory)
    err = torch.linalg.vector_norm(res.x0 - ref.x0, dim=-1)
    bound = residual_bound(model, sched, noise, ref.trajectory, rho)
    assert bool((err <= bound).all()), (err, bound)


def test_freezing_evaluates_fewer_states_in_as_many_iterations_and_ends_within_T(mixture):
    model, sched, noise = gmm_problem(mixture, steps=100, sampler="ddim", seeds=(0, 1, 2, 3))
    off = solve(model, sched, noise, preset("taa-euler"))
    on = solve(model, sched, noise, preset("taa-euler", freeze_frac=0.25))
    assert bool(on.finished.all()) and int(on.iterations.max()) <= sched.num_steps
    assert bool((on.nfe < off.nfe).all()), (on.nfe, off.nfe)
    assert bool((on.iterations <= off.iterations + 1).all()), (on.iterations, off.iterations)
    # the frozen prefix is accepted as measured before the whole trajectory is: some rows of a window that reaches
    # x_0 are accepted in an iteration that is not the sample's last
    log = on.log
    last = log.groupby("sample")["iteration"].transform("max")
    early = log[(log["converged"]) & (log["iteration"] < last) & (log["window_lo"] == 0)]
    assert len(early) > 0


def test_freezing_off_never_reads_the_prefix(mixture, monkeypatch):
    """freeze_frac = 0 takes the rule's code path of before the option, untouched: the prefix is never computed."""

    def fail(*args, **kwargs):
        raise AssertionError("frozen_prefix called with freeze_frac = 0")

    monkeypatch.setattr(type(RULES["sum"]), "frozen_prefix", staticmethod(fail))
    model, sched, noise = gmm_problem(mixture, steps=20, sampler="ddpm")
    for window in (None, 7):
        a = solve(model, sched, noise, preset("taa-euler", window=window))
        b = solve(model, sched, noise, preset("taa-euler", window=window, freeze_frac=0.0))
        assert torch.equal(a.trajectory, b.trajectory) and torch.equal(a.nfe, b.nfe)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("window", [None, 2, 7])
def test_static_engine_equals_the_reference_bitwise_with_freezing(mixture, sampler, window):
    from tests.test_static import assert_same_solve

    model, sched, noise = gmm_problem(mixture, steps=20, sampler=sampler)
    cfg = preset("taa-euler", window=window, freeze_frac=0.5)
    assert_same_solve(solve(model, sched, noise, cfg), solve(model, sched, noise, cfg, engine="static"))


def test_static_engine_moves_to_smaller_buckets_as_the_prefix_freezes(mixture):
    model, sched, noise = gmm_problem(mixture, steps=64, sampler="ddim", seeds=(0, 1))
    used: dict[float, list[int]] = {}
    for frac in (0.0, 0.5):
        solver = StaticSolver(model, sched, preset("taa-euler", freeze_frac=frac), num_samples=2,
                              sample_shape=(mixture.dim,), device="cpu")
        seen: list[int] = []
        ready = solver._ready
        solver._ready = lambda B, seen=seen, ready=ready: (seen.append(B), ready(B))[1]
        solver.solve(noise)
        used[frac] = seen
    # unfrozen, the whole window falls one state an iteration and stays in the top bucket; frozen, it falls below
    assert set(used[0.0]) == {64}
    assert min(used[0.5]) < 64 and sum(used[0.5]) < sum(used[0.0]), used


def _jacobian_norms(den, sched, noise, ref: torch.Tensor, sample: int) -> torch.Tensor:
    """||J_{0<-t}|| along the sequential trajectory of one sample of an embedded model (autograd, float64 products)."""
    shape, d = ref.shape[2:], ref[0, 0].numel()
    prod, out = torch.eye(d, dtype=torch.float64), []
    for t in range(sched.num_steps):
        out.append(torch.linalg.matrix_norm(prod, ord=2))

        def step(x, t=t):
            e = den(x.reshape(1, *shape).float(), sched.timesteps[t : t + 1], torch.tensor([sample])).double()
            return (sched.a[t] * x + sched.b[t] * e.reshape(-1) + sched.c[t] * noise.xi[sample, t].reshape(-1))

        jac = torch.autograd.functional.jacobian(step, ref[sample, t + 1].reshape(-1).double(), vectorize=True)
        prod = prod @ jac
    return torch.stack(out)


def test_frozen_solve_on_tiny_dit_stays_within_the_residual_bound_and_saves_states():
    from parataa.models.registry import build_denoiser

    den, spec = build_denoiser("tiny-dit", [3, 7], cfg_scale=5.0)
    T = 25
    sched, noise = spec(T, sampler="ddim"), draw_noise([0, 1], T, spec["sample_shape"])
    ref = solve(den, sched, noise, preset("sequential"))
    off = solve(den, sched, noise, preset("taa-euler", sum_tol=1e-3))
    res = solve(den, sched, noise, preset("taa-euler", sum_tol=1e-3, freeze_frac=0.5))
    assert bool(res.finished.all()) and int(res.iterations.max()) <= T
    assert bool((res.nfe < off.nfe).all()), (res.nfe, off.nfe)
    n, d = noise.num_samples, ref.trajectory[0, 0].numel()
    # final residuals recomputed from scratch in one batch, as the test on the analytic model does
    traj = res.trajectory.double()
    x_up = traj[:, 1:].reshape(n * T, *spec["sample_shape"])
    eps = den(x_up.float(), sched.timesteps.repeat(n), torch.arange(n).repeat_interleave(T)).double()
    step = (sched.a[None, :, None] * traj[:, 1:].reshape(n, T, d) + sched.b[None, :, None] * eps.reshape(n, T, d)
            + sched.c[None, :, None] * noise.xi.reshape(n, T, d).double())
    rho = rms(step - traj[:, :-1].reshape(n, T, d))
    norms = torch.stack([_jacobian_norms(den, sched, noise, ref.trajectory.double(), s) for s in range(n)])
    # twice the first-order bound (second-order terms), plus the float32 network's rounding of the two loops' model
    # calls (other batches), carried by up to T steps each amplified at most max ||J_{0<-t}||
    net = rounding_tol(torch.float32, dit_reduction_length(den.transformer), scale=1.0)
    slack = T * net * float(sched.b.abs().max()) * float(norms.max()) * math.sqrt(d)
    bound = 2.0 * math.sqrt(d) * (norms * rho).sum(dim=1) + slack
    err = torch.linalg.vector_norm((res.x0 - ref.x0).reshape(n, -1).double(), dim=-1)
    assert bool((err <= bound).all()), (err, bound)


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, math.inf, True, "0.1"])
def test_invalid_freeze_frac_is_refused_with_its_name_value_and_fix(bad):
    with pytest.raises(ValueError, match=r"freeze_frac must be a fraction of sum_tol in \[0, 1\] \(0 = off"):
        SolverConfig(method="taa", stop="sum", freeze_frac=bad)


def test_freeze_frac_is_refused_where_it_changes_nothing():
    from parataa.solver_config import refuse_unread

    with pytest.raises(ValueError, match="freeze_frac does nothing for solver 'taa': its stopping rule stop='step'"):
        refuse_unread("taa", preset("taa", freeze_frac=0.1), ["freeze_frac"], "remove it")
    with pytest.raises(ValueError, match="freeze_frac does nothing for solver 'picard'"):
        refuse_unread("picard", preset("picard"), ["freeze_frac"], "remove it")
    refuse_unread("taa-euler", preset("taa-euler", freeze_frac=0.1), ["freeze_frac"], "remove it")
