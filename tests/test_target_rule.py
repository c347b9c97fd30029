"""The fidelity-target stopping rule (stop="target", docs/METHOD.md section 9): its threshold, its acceptance,
both engines, and a solve on the analytic model (section 7) with and without a half-precision-like noise floor."""

from __future__ import annotations

import math

import pytest
import torch

from parataa.fidelity import psnr_db
from parataa.solvers import preset, solve
from parataa.solvers._iteration import model_roundoff, rounding_noise
from parataa.stopping import ROUNDING_GAIN, RULES, TARGET_FLOOR_FACTOR, TARGET_RESID_FACTOR, target_rms
from parataa.system import make_window, step_rule

from .helpers import gmm_problem, rounding_tol


class NoisyDenoiser:
    """The analytic model with relative noise on its output, a fresh draw at every call: like a half-precision
    network, the same state evaluated twice gives two outputs that differ at the noise level. `roundoff` (the
    relative noise, or None) is what it declares as its unit roundoff (`_iteration.model_roundoff`)."""

    def __init__(self, model, rel: float, seed: int, declare: bool = True) -> None:
        self.model, self.rel, self.gen = model, rel, torch.Generator().manual_seed(seed)
        self.roundoff = rel if declare else None

    def __call__(self, x, timesteps, samples):
        eps = self.model(x, timesteps, samples)
        return eps * (1 + self.rel * torch.randn(eps.shape, generator=self.gen, dtype=eps.dtype))


@pytest.mark.parametrize("db", [20.0, 40.0, 57.5])
def test_target_rms_is_the_distance_at_the_target_psnr(db):
    cfg = preset("taa-euler", stop="target", target_db=db)
    x = torch.full((1, 64), target_rms(cfg.target_db), dtype=torch.float64)
    # psnr_db: a mean, a division and a log10 in float64, each within a few roundings of the dB value
    assert abs(float(psnr_db(x, torch.zeros_like(x))) - db) <= rounding_tol(torch.float64, 64 + 8, scale=db)


def test_target_rule_checks_the_change_of_x0_and_only_where_the_window_reaches_it():
    cfg = preset("taa-euler", stop="target", target_db=40.0)
    tol = target_rms(cfg.target_db)
    rule = RULES["target"]
    win = make_window(torch.tensor([4, 4]), 4, 4)  # two samples, whole windows [0, 4)
    x_cur = torch.zeros(2, 4, 8, dtype=torch.float64)
    x_new = x_cur.clone()
    x_new[0, 0] = 0.99 * tol  # sample 0: x_0 moved by just under the target's RMS
    x_new[1, 0] = 1.01 * tol  # sample 1: just over
    x_new[:, 1:] = 10.0  # the other states' change does not enter the test
    u_star = torch.tensor([3, 3])
    accepted = torch.zeros(2, 4, dtype=torch.bool)
    rsum = torch.zeros(2, dtype=torch.float64)
    u, acc = rule.after_update(cfg, x_cur, x_new, win.valid, win.lo, u_star, accepted, rsum)
    assert u.tolist() == [-1, 3] and acc.tolist() == [[True] * 4, [False] * 4]
    # a window above x_0 (lo = 2 of T = 6) is never accepted here, whatever its bottom state did
    high = make_window(torch.tensor([6, 6]), 4, 6)
    u, acc = rule.after_update(cfg, x_cur, x_cur.clone(), high.valid, high.lo, u_star, accepted, rsum)
    assert u.tolist() == [3, 3] and not bool(acc.any())
    # other rules accept nothing after the update
    for name in ("step", "sum"):
        u, acc = RULES[name].after_update(preset("taa-euler"), x_cur, x_new, win.valid, win.lo, u_star, accepted,
                                          rsum)
        assert u.tolist() == [3, 3] and not bool(acc.any())


def test_target_rule_does_not_accept_a_small_change_of_x0_while_the_summed_residual_is_large():
    cfg = preset("taa-euler", stop="target", target_db=40.0)
    tol = target_rms(cfg.target_db)
    win = make_window(torch.tensor([4, 4]), 4, 4)
    x_cur = torch.zeros(2, 4, 8, dtype=torch.float64)
    x_new = x_cur.clone()
    x_new[:, 0] = 0.5 * tol  # both samples: x_0 moved by half the target's RMS
    k = TARGET_RESID_FACTOR
    rsum = torch.tensor([0.99 * k * tol, 1.01 * k * tol], dtype=torch.float64)  # just within, just over
    u, acc = RULES["target"].after_update(cfg, x_cur, x_new, win.valid, win.lo, torch.tensor([3, 3]),
                                          torch.zeros(2, 4, dtype=torch.bool), rsum)
    assert u.tolist() == [-1, 3] and acc.tolist() == [[True] * 4, [False] * 4]


def test_target_db_is_checked_with_its_name_value_and_fix():
    for bad in (0.0, -3.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="target_db must be a finite number of dB > 0"):
            preset("taa-euler", stop="target", target_db=bad)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_target_rule_stops_at_or_above_the_target_and_later_for_a_higher_one(mixture, sampler):
    model, sched, noise = gmm_problem(mixture, steps=40, sampler=sampler, seeds=(0, 1, 2, 3), cfg=3.0)
    ref = solve(model, sched, noise, preset("sequential"))
    iters = []
    for db in (30.0, 45.0, 60.0):
        res = solve(model, sched, noise, preset("taa-euler", stop="target", target_db=db))
        assert bool(res.finished.all())
        assert bool((psnr_db(res.x0, ref.x0) >= db).all()), (db, psnr_db(res.x0, ref.x0))
        iters.append(res.iterations.double().mean().item())
    assert iters[0] <= iters[1] <= iters[2] and iters[0] < iters[2] < sched.num_steps


@pytest.mark.parametrize("window", [None, 8])
def test_target_rule_static_engine_equals_the_reference_bitwise(mixture, window):
    model, sched, noise = gmm_problem(mixture, steps=24, sampler="ddpm", seeds=(0, 1, 2))
    cfg = preset("taa-euler", stop="target", target_db=45.0, window=window)
    a = solve(model, sched, noise, cfg)
    b = solve(model, sched, noise, cfg, engine="static")
    assert torch.equal(a.trajectory, b.trajectory)
    assert a.iterations.tolist() == b.iterations.tolist() and a.nfe.tolist() == b.nfe.tolist()


def _noisy_target_solves(mixture, declare: bool):
    steps, rel = 100, 2.0**-5
    model, sched, noise = gmm_problem(mixture, steps=steps, sampler="ddim", seeds=(0, 1, 2, 3), cfg=3.0)
    cfg = preset("taa-euler", stop="target", target_db=40.0)
    clean = solve(model, sched, noise, cfg)
    ref = solve(NoisyDenoiser(model, rel, seed=2, declare=declare), sched, noise, preset("sequential"))
    noisy = solve(NoisyDenoiser(model, rel, seed=1, declare=declare), sched, noise, cfg)
    return steps, clean, noisy, psnr_db(noisy.x0, ref.x0)


def test_a_half_precision_like_noise_floor_does_not_keep_the_target_rule_running(mixture):
    """Relative noise 2^-5 on the model output puts the residuals on a floor above the residual test's
    TARGET_RESID_FACTOR tol, while x0's floor (two noisy sequential solves apart) stays above the 40 dB target. The
    model declares that precision (its `roundoff`), the rule's floor estimate raises the residual test's bound to it
    (docs/METHOD.md section 9), and the solve stops within 3 iterations of the noise-free count, at or above the
    target."""
    steps, clean, noisy, psnr = _noisy_target_solves(mixture, declare=True)
    assert bool(noisy.finished.all())
    assert bool((psnr >= 40.0).all()), psnr
    assert bool((noisy.iterations <= clean.iterations + 3).all()), (noisy.iterations, clean.iterations)


def test_an_undeclared_noise_floor_delays_the_target_rule_and_does_not_stop_it_below_the_target(mixture):
    """The same noise with no declared precision: the rule has no floor estimate, waits on the floor (several
    times the noise-free count), ends within T and stops at or above the target."""
    steps, clean, noisy, psnr = _noisy_target_solves(mixture, declare=False)
    assert bool(noisy.finished.all()) and bool((noisy.iterations <= steps).all())
    assert bool((psnr >= 40.0).all()), psnr
    assert bool((noisy.iterations >= 3 * clean.iterations).all()), (noisy.iterations, clean.iterations)


def test_target_rule_accepts_a_summed_residual_on_the_precision_floor_when_x0s_change_is_steady():
    cfg = preset("taa-euler", stop="target", target_db=40.0)
    tol = target_rms(cfg.target_db)
    k, f = TARGET_RESID_FACTOR, TARGET_FLOOR_FACTOR
    n = 6
    win = make_window(torch.full((n,), 4), 4, 4)
    x_cur = torch.zeros(n, 4, 8, dtype=torch.float64)
    x_new = x_cur.clone()
    change = torch.tensor([0.5, 0.9, 0.4, 0.5, 0.5, 0.5], dtype=torch.float64) * tol
    x_new[:, 0] = change[:, None]  # RMS change of x_0 = change
    # the previous change: within tol (steady); 1.2 tol, contracting by 0.75 (distance left 2.7 tol: not steady);
    # 1.5 tol, contracting by 0.27 (distance left 0.15 tol: steady); none stored; within tol; within tol
    prev = torch.tensor([0.8, 1.2, 1.5, math.inf, 0.8, 0.8], dtype=torch.float64) * tol
    floor = torch.full((n,), 10 * k * tol / f, dtype=torch.float64)  # the floor's bound: 10 K tol
    rsum = torch.full((n,), 9.9 * k * tol, dtype=torch.float64)  # above K tol, within the floor's bound
    rsum[4] = 10.1 * k * tol  # above the floor's bound
    rsum[5] = 0.99 * k * tol  # within K tol: accepted on the full-precision test whatever the floor
    floor[5] = 0.0
    args = (cfg, x_cur, x_new, win.valid, win.lo, torch.full((n,), 3), torch.zeros(n, 4, dtype=torch.bool), rsum)
    u, acc = RULES["target"].after_update(*args, floor, prev)
    assert u.tolist() == [-1, 3, -1, 3, 3, -1]
    assert acc.tolist() == [[u_ < 0] * 4 for u_ in u.tolist()]
    # without a floor estimate or without a previous change (no history), the bound is K tol
    assert RULES["target"].after_update(*args, None, prev)[0].tolist() == [3, 3, 3, 3, 3, -1]
    assert RULES["target"].after_update(*args, floor, None)[0].tolist() == [3, 3, 3, 3, 3, -1]


def test_model_roundoff_reads_a_declared_roundoff_or_the_network_dtype():
    class Net:
        def __init__(self, dtype=None, roundoff=None) -> None:
            if dtype is not None:
                self.dtype = dtype
            if roundoff is not None:
                self.roundoff = roundoff

    assert model_roundoff(Net(torch.bfloat16)) == 2.0**-8
    assert model_roundoff(Net(torch.float16)) == 2.0**-11
    assert model_roundoff(Net(torch.float32)) == 2.0**-24
    assert model_roundoff(Net(torch.bfloat16, roundoff=0.25)) == 0.25
    assert model_roundoff(Net()) == 0.0 and model_roundoff(Net(torch.int8)) == 0.0


def test_rounding_noise_is_the_gain_times_roundoff_times_the_drift_rms(mixture):
    _, sched, _ = gmm_problem(mixture, steps=10, sampler="ddpm")
    step = step_rule(sched)
    t = torch.tensor([[0, 4, 9, 9]])
    valid = torch.tensor([[True, True, True, False]])
    eps = torch.randn(1, 4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    noise = rounding_noise(step, t, (eps,), valid, 2.0**-8)
    drift = step.drift(t, (eps,))
    want = ROUNDING_GAIN * 2.0**-8 * drift.pow(2).mean(dim=-1).sqrt()
    # the same few float64 operations in the same order: equal to within a few roundings of the value
    assert torch.allclose(noise[valid], want[valid], rtol=rounding_tol(torch.float64, 16), atol=0.0)
    assert float(noise[0, 3]) == 0.0  # padding
    assert rounding_noise(step, t, (eps,), valid, 0.0) is None


def test_target_db_flag_selects_the_rule_where_it_means_something():
    import argparse

    from parataa.cli._solver_options import add_solver_arguments, solver_config

    p = argparse.ArgumentParser()
    add_solver_arguments(p)
    args = p.parse_args(["--target-db", "45"])
    for name in ("taa-euler", "taa", "fp+"):  # taa-euler's preset fixes its rule; the flag still chooses this one
        cfg = solver_config(name, args)
        assert (cfg.stop, cfg.target_db) == ("target", 45.0), name
    with pytest.raises(ValueError, match="target_db does nothing for solver 'picard'"):
        solver_config("picard", args)  # Picard has its own rule
    both = p.parse_args(["--target-db", "45"])
    both.solvers = "taa-euler,picard"
    assert solver_config("picard", both).stop == "step" and solver_config("taa-euler", both).stop == "target"
    assert solver_config("taa-euler", p.parse_args([])).stop == "sum"
    with pytest.raises(ValueError, match="--target-db 45 sets the target rule; drop --stop sum"):
        solver_config("taa", p.parse_args(["--target-db", "45", "--stop", "sum"]))
