"""Keeping the prefix at the precision floor (`SolverConfig.floor_freeze`, docs/METHOD.md section 9): the prefix it
keeps, option off = the code of before, both engines, the bound to the sequential solve, and its refusals."""

from __future__ import annotations

import math

import pytest
import torch

from parataa.solver_config import refuse_unread
from parataa.solvers import SolverConfig, _iteration, preset, solve
from parataa.solvers._iteration import floor_prefix

from .helpers import gmm_problem, rounding_tol
from .test_solvers import residual_bound, residuals


class RoundedDenoiser:
    """The analytic model with its output rounded to bfloat16, declared as such (`roundoff`): a deterministic
    network whose outputs carry bfloat16 rounding, as a bfloat16 network's do."""

    roundoff = torch.finfo(torch.bfloat16).eps / 2

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, x, timesteps, samples):
        eps = self.model(x, timesteps, samples)
        return eps.to(torch.bfloat16).to(eps.dtype)


def test_the_prefix_is_the_longest_run_from_the_top_within_the_floor():
    rho = torch.tensor([[5.0, 1.0, 3.0, 1.9, 2.0],   # top 2 within 2x the noise, then position 2 is not
                        [1.0, 1.0, 1.0, 1.0, 9.0],   # the top is not: nothing is kept
                        [3.0, 1.0, 1.0, 0.0, 0.0],   # width 3: its top 2 are kept (padding is no state)
                        [1.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)  # all at the floor: nothing is kept
    valid = torch.tensor([[True] * 5, [True] * 5, [True, True, True, False, False], [True] * 5])
    keep = floor_prefix(rho, torch.ones(4, 5, dtype=torch.float64), valid, 2.0)
    assert keep.tolist() == [[False, False, False, True, True], [False] * 5, [False, True, True, False, False],
                             [False] * 5]


@pytest.mark.parametrize("engine", ["eager", "static"])
def test_option_off_takes_the_code_of_before(mixture, monkeypatch, engine):
    """floor_freeze = 0 never computes the prefix, so the solve is the one without the option, bit for bit."""
    model, sched, noise = gmm_problem(mixture, steps=16, sampler="ddpm")
    rounded = RoundedDenoiser(model)
    before = solve(rounded, sched, noise, preset("taa-euler"), engine=engine)

    def refuse(*args, **kwargs):
        raise AssertionError("floor_prefix called with floor_freeze = 0")

    monkeypatch.setattr(_iteration, "floor_prefix", refuse)
    off = solve(rounded, sched, noise, preset("taa-euler", floor_freeze=0.0), engine=engine)
    assert torch.equal(off.x0, before.x0) and torch.equal(off.trajectory, before.trajectory)
    assert torch.equal(off.iterations, before.iterations) and torch.equal(off.nfe, before.nfe)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_static_engine_equals_the_reference_loop_bitwise_with_the_option_on(mixture, sampler):
    model, sched, noise = gmm_problem(mixture, steps=20, sampler=sampler)
    rounded = RoundedDenoiser(model)
    for cfg in (preset("taa-euler", floor_freeze=2.0), preset("taa-euler", floor_freeze=2.0, window=8)):
        ref = solve(rounded, sched, noise, cfg)
        sta = solve(rounded, sched, noise, cfg, engine="static")
        assert torch.equal(ref.x0, sta.x0) and torch.equal(ref.trajectory, sta.trajectory)
        assert torch.equal(ref.iterations, sta.iterations) and torch.equal(ref.nfe, sta.nfe)


def test_the_option_keeps_states_and_ends_within_T_iterations_and_the_bound_of_sequential(mixture):
    T = 20
    model, sched, noise = gmm_problem(mixture, steps=T, sampler="ddpm")
    rounded = RoundedDenoiser(model)
    seq = solve(rounded, sched, noise, preset("sequential"))
    calls = []
    real = _iteration.floor_prefix

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(int(out.sum()))
        return out

    _iteration.floor_prefix = spy
    try:
        res = solve(rounded, sched, noise, preset("taa-euler", floor_freeze=2.0, sum_tol=1e-3))
    finally:
        _iteration.floor_prefix = real
    assert max(calls) > 0, "the prefix was never at the floor: the test does not exercise the option"
    assert bool(res.finished.all()) and int(res.iterations.max()) <= T
    # first-order bound from the final residuals (recomputed with the same rounded network) plus what the rounding
    # of the network's output can move the linearisation: one bfloat16 rounding of eps per step, carried by b_t
    rho = residuals(rounded, sched, noise, res.trajectory.double())
    d = noise.x_T.shape[-1]
    eps_scale = float(model(seq.trajectory[:, 1:].reshape(-1, d), sched.timesteps.repeat(noise.num_samples),
                            torch.arange(noise.num_samples).repeat_interleave(T)).abs().max())
    slack = T * rounding_tol(torch.bfloat16, 1, scale=eps_scale) * float(sched.b.abs().max()) * math.sqrt(d)
    bound = residual_bound(model, sched, noise, seq.trajectory.double(), rho) + 2.0 * slack
    err = torch.linalg.vector_norm((res.x0 - seq.x0).reshape(noise.num_samples, -1).double(), dim=-1)
    assert bool((err <= bound).all()), (err, bound)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True, "2"])
def test_invalid_floor_freeze_is_refused_with_its_name_value_and_fix(bad):
    msg = r"floor_freeze must be a finite multiple of the rounding noise >= 0 \(0 = off"
    with pytest.raises(ValueError, match=msg):
        SolverConfig(method="taa", floor_freeze=bad)


def test_floor_freeze_is_refused_where_it_changes_nothing():
    with pytest.raises(ValueError, match="floor_freeze does nothing for solver 'picard'"):
        refuse_unread("picard", preset("picard"), ["floor_freeze"], "remove it")
    for name in ("fp", "aa", "taa", "taa-euler"):
        refuse_unread(name, preset(name, floor_freeze=2.0), ["floor_freeze"], "remove it")
