"""The static-shape engine (parataa/solvers/static.py) against the reference loops.

Bitwise: on the CPU the static engine computes every quantity of a valid window position with the same
operations, in the same order, as the reference (padding contributes exact zeros after the valid values, or is
masked out), and the analytic model evaluates each row independently of its batch; so trajectories, counts and
log rows are equal bit for bit for every solver, splitting, stopping rule and window. The options that change
the algebra (linsolve="elimination", ls_dtype=float32) are checked against bounds derived from their rounding.
The GPU test checks that replaying CUDA graphs gives the iterates of the same engine run eagerly.
"""

from __future__ import annotations

import pytest
import torch

from parataa.solvers import ModelOutputError, preset, solve
from parataa.solvers._history import ridge_solve
from parataa.solvers.static import GraphCaptureError, StaticSolver, default_buckets, elimination_solve
from tests.helpers import gmm_problem, rounding_tol

VARIANTS = [
    ("sequential", {}),
    ("fp", {}),
    ("fp+", {}),
    ("aa", {}),
    ("taa", {}),
    ("picard", {}),
    ("fp+", {"splitting": "euler", "init": "copy"}),
    ("fp+", {"splitting": "euler", "init": "copy", "stop": "sum"}),
    ("aa", {"splitting": "euler", "init": "copy", "stop": "sum"}),
    ("taa", {"splitting": "euler"}),
    ("taa", {"stop": "sum"}),
    ("taa-euler", {}),
    ("taa-euler", {"history": 5}),
]


def assert_same_solve(a, b) -> None:
    assert torch.equal(a.trajectory, b.trajectory)
    assert torch.equal(a.iterations, b.iterations) and torch.equal(a.nfe, b.nfe)
    assert torch.equal(a.finished, b.finished)
    la, lb = a.log, b.log
    assert list(la.columns) == list(lb.columns) and (la.dtypes == lb.dtypes).all()
    assert la.equals(lb)
    assert list(a.timings.columns) == list(b.timings.columns) and len(a.timings) == len(b.timings)
    assert a.timings.rows.tolist() == b.timings.rows.tolist()


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("solver, options", VARIANTS)
@pytest.mark.parametrize("window", [None, 1, 2, 7])
def test_static_engine_equals_the_reference_bitwise(mixture, sampler, solver, options, window):
    if solver == "sequential" and window is not None:
        pytest.skip("sequential has no window")
    model, sched, noise = gmm_problem(mixture, steps=20, sampler=sampler)
    cfg = preset(solver, window=window, **options) if solver != "sequential" else preset(solver)
    assert_same_solve(solve(model, sched, noise, cfg), solve(model, sched, noise, cfg, engine="static"))


def test_static_engine_with_max_iters_and_trajectory_init(mixture):
    model, sched, noise = gmm_problem(mixture, steps=20)
    ref = solve(model, sched, noise, preset("sequential"))
    init = ref.trajectory + 0.01 * torch.randn(ref.trajectory.shape, generator=torch.Generator().manual_seed(0),
                                               dtype=torch.float64)
    for cfg in (preset("taa", max_iters=4), preset("taa", init="trajectory", freeze_from=12, window=5),
                preset("picard", max_iters=3, window=6)):
        kw = {"init": init} if cfg.init == "trajectory" else {}
        a, b = solve(model, sched, noise, cfg, **kw), solve(model, sched, noise, cfg, engine="static", **kw)
        assert_same_solve(a, b)
    assert not solve(model, sched, noise, preset("taa", max_iters=4), engine="static").finished.all()


def test_solver_is_reusable_and_sees_the_callback_of_the_reference(mixture):
    model, sched, noise = gmm_problem(mixture, steps=20, seeds=(0, 1, 2))
    cfg = preset("taa-euler", window=9)
    solver = StaticSolver(model, sched, cfg, num_samples=3, sample_shape=noise.sample_shape, device="cpu")
    seen: dict[str, list] = {"eager": [], "static": []}

    def record(key):
        def cb(info):
            w = info.window_hi - info.window_lo
            rho = info.rho[:, : int(w.max())]
            seen[key].append((info.iteration, info.frozen.tolist(), info.window_lo.tolist(), info.window_hi.tolist(),
                              rho.nan_to_num(-1.0).tolist(), info.trajectory[:, 0].clone()))
        return cb

    ref = solve(model, sched, noise, cfg, callback=record("eager"))
    first = solver.solve(noise, callback=record("static"))
    assert_same_solve(ref, first)
    assert len(seen["eager"]) == len(seen["static"])
    for a, b in zip(seen["eager"], seen["static"], strict=True):
        assert a[:5] == b[:5] and torch.equal(a[5], b[5])
    other = gmm_problem(mixture, steps=20, seeds=(5, 6, 7))[2]
    assert_same_solve(solve(model, sched, other, cfg), solver.solve(other))  # buffers reloaded, nothing left over
    assert_same_solve(ref, solver.solve(noise))


def test_nonfinite_model_output_raises_where_the_reference_does(mixture):
    model, sched, noise = gmm_problem(mixture, steps=12)

    def broken(x, t, s):
        out = model(x, t, s)
        return torch.where((t < 500)[:, None] & (s == 1)[:, None], float("nan"), out)

    for cfg in (preset("taa-euler"), preset("picard"), preset("sequential")):
        errs = []
        for engine in ("eager", "static"):
            with pytest.raises(ModelOutputError) as e:
                solve(broken, sched, noise, cfg, engine=engine)
            errs.append((e.value.sample, e.value.seed, e.value.step, e.value.iteration))
        assert errs[0] == errs[1]


def test_bad_engine_options_are_rejected_with_the_fix(mixture):
    model, sched, noise = gmm_problem(mixture, steps=10)
    with pytest.raises(ValueError, match="engine must be one of"):
        solve(model, sched, noise, preset("taa"), engine="fast")
    with pytest.raises(ValueError, match="needs a CUDA device.*engine='static'"):
        solve(model, sched, noise, preset("taa"), engine="graphed")
    with pytest.raises(ValueError, match="resume is not supported.*engine='eager'"):
        solve(model, sched, noise, preset("taa"), engine="static", resume=object())
    with pytest.raises(ValueError, match=r"buckets must lie in \[1, W=4\]"):
        solve(model, sched, noise, preset("taa", window=4), engine="static", buckets=[2, 8])
    with pytest.raises(ValueError, match="ls_dtype"):
        solve(model, sched, noise, preset("taa"), engine="static", ls_dtype=torch.float16)
    with pytest.raises(ValueError, match="linsolve"):
        solve(model, sched, noise, preset("taa"), engine="static", linsolve="qr")
    solver = StaticSolver(model, sched, preset("taa"), num_samples=3, sample_shape=noise.sample_shape, device="cpu")
    with pytest.raises(ValueError, match="built for 3 samples"):
        solver.solve(noise.select([0]))


def test_default_buckets_and_replay(mixture):
    assert default_buckets(100) == (1, 2, 4, 8, 16, 32, 64, 100) and default_buckets(1) == (1,)
    model, sched, noise = gmm_problem(mixture, steps=20, seeds=(0,))
    solver = StaticSolver(model, sched, preset("taa-euler"), num_samples=1, sample_shape=noise.sample_shape,
                          device="cpu", buckets=[5, 10])
    assert solver.buckets == (5, 10, 20)
    assert solver.prepare(noise) == 0.0  # the static engine captures nothing
    rows = solver.replay(noise, [20, 20, 13, 4])
    assert [r["bucket"] for r in rows] == [20, 20, 20, 5] and all(r["wall_s"] >= r["model_s"] > 0 for r in rows)
    with pytest.raises(ValueError, match="replay widths"):
        solver.replay(noise, [21])


def test_elimination_solve_matches_lapack_within_its_conditioning():
    """Gaussian elimination and LU with partial pivoting both solve the system backward stably: each gamma lies
    within cond(A) * (k u)-relative rounding of the exact one (Higham, ch. 9), so within twice that of each other."""
    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 4):
        a = torch.randn(64, k, 40, generator=g, dtype=torch.float64)
        gram, rhs = a @ a.transpose(-1, -2), torch.randn(64, k, generator=g, dtype=torch.float64)
        for ridge in (1e-3, 0.0):
            want, ok_w = ridge_solve(gram, rhs, ridge)
            got, ok_g = elimination_solve(gram, rhs, ridge)
            assert torch.equal(ok_w, ok_g) and bool(ok_g.all())
            system = gram + ridge * torch.eye(k, dtype=torch.float64)
            cond = torch.linalg.cond(system)
            bound = cond * rounding_tol(torch.float64, 4 * k * k) * want.abs().amax(dim=-1)
            assert bool(((got - want).abs().amax(dim=-1) <= bound).all())
    # a singular system (ridge 0, two equal columns) and a non-finite one are reported, never patched
    gram = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[float("nan"), 0.0], [0.0, 1.0]]], dtype=torch.float64)
    gamma, ok = elimination_solve(gram, torch.tensor([[1.0, 2.0], [1.0, 1.0]], dtype=torch.float64), 0.0)
    assert ok.tolist() == [False, False] and torch.equal(gamma, torch.zeros_like(gamma))
    # empty columns solve to zero with ridge 0, as in ridge_solve
    gamma, ok = elimination_solve(torch.zeros(1, 2, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64),
                                  0.0)
    assert ok.tolist() == [True] and torch.equal(gamma, torch.zeros(1, 2, dtype=torch.float64))


@pytest.mark.parametrize("options", [{"linsolve": "elimination"}, {"ls_dtype": torch.float32}])
@pytest.mark.parametrize("solver", ["aa", "taa", "taa-euler"])
def test_algebra_options_stay_within_the_stopping_tolerance(mixture, solver, options):
    """Another rounding of the small least squares moves each accelerated update by rounding-sized amounts; the
    solve then ends with the same counts on this problem, and its trajectory lies within the stopping tolerance
    of the reference's (both meet the same rule: abs_tol 1e-3 per step, or sum_tol for the summed rule)."""
    model, sched, noise = gmm_problem(mixture, steps=20)
    cfg = preset(solver)
    ref, got = solve(model, sched, noise, cfg), solve(model, sched, noise, cfg, engine="static", **options)
    assert torch.equal(ref.iterations, got.iterations)
    tol = cfg.sum_tol if cfg.stop == "sum" else cfg.abs_tol
    assert float((ref.trajectory - got.trajectory).abs().max()) <= tol


@pytest.mark.gpu
@pytest.mark.slow
def test_graphed_engine_replays_the_static_iterates_on_tiny_dit():
    """Graph replay launches the kernels the eager static engine launches, on the same buffers: same iterates,
    counts and log rows, bit for bit (same algebra: linsolve='elimination' in both)."""
    from parataa import draw_noise
    from parataa.models.registry import build_denoiser

    model, spec = build_denoiser("tiny-dit", [3, 7], cfg_scale=5.0, device="cuda", dtype=torch.float32)
    sched = spec(50, sampler="ddim")
    noise = draw_noise([0, 1], 50, spec.sample_shape).to("cuda")
    for name, opts in [("taa-euler", {}), ("taa", {"window": 20}), ("picard", {}), ("sequential", {}),
                       ("aa", {"splitting": "euler", "init": "copy", "stop": "sum"})]:
        cfg = preset(name, **opts)
        eager = solve(model, sched, noise, cfg, engine="static", linsolve="elimination")
        for engine in ("graphed", "graphed-solver"):
            assert_same_solve(eager, solve(model, sched, noise, cfg, engine=engine, linsolve="elimination"))


SYNCING_MODEL_SCRIPT = """
import torch
from parataa import draw_noise
from parataa.models.registry import build_denoiser
from parataa.solvers import preset, solve
from parataa.solvers.static import GraphCaptureError
model, spec = build_denoiser("tiny-dit", [3], cfg_scale=5.0, device="cuda", dtype=torch.float32)
sched, noise = spec(10, sampler="ddim"), draw_noise([0], 10, spec.sample_shape).to("cuda")
try:
    solve(lambda x, t, s: model(x, t, s) * float(t.max() > 0), sched, noise, preset("taa"), engine="graphed")
except GraphCaptureError as err:
    print("REFUSED", "not graph-safe" in str(err) and "graphed-solver" in str(err))
"""


@pytest.mark.gpu
def test_graphed_engine_refuses_models_that_are_not_graph_safe():
    import os
    import subprocess
    import sys

    from parataa import draw_noise
    from parataa.cuda_graphs import GraphedDenoiser
    from parataa.models.registry import build_denoiser

    model, spec = build_denoiser("tiny-dit", [3], cfg_scale=5.0, device="cuda", dtype=torch.float32)
    sched = spec(10, sampler="ddim")
    noise = draw_noise([0], 10, spec.sample_shape).to("cuda")
    with pytest.raises(GraphCaptureError, match="graph_safe = False.*graphed-solver"):  # declared: no capture tried
        solve(GraphedDenoiser(model), sched, noise, preset("taa"), engine="graphed")

    def syncing(x, t, s):  # reads a value on the host inside its call
        return model(x, t, s) * float(t.max() > 0)

    # the engine for such models: the solver captured, the model called eagerly
    assert bool(solve(syncing, sched, noise, preset("taa"), engine="graphed-solver").finished.all())
    # found at capture, in a process of its own (a failed capture can leave the CUDA context unusable)
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", SYNCING_MODEL_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=600)
    assert "REFUSED True" in run.stdout, run.stdout + run.stderr[-3000:]


def test_warm_up_before_a_late_capture_stays_inside_the_log():
    """The warm-up iterations run before capturing a bucket first needed in the last iterations count past the
    solve's last iteration: their log writes must stay inside the buffers (they are restored afterwards)."""
    from parataa.models import GaussianMixture

    mix = GaussianMixture(dim=16, num_classes=4, spread=0.15, seed=0)
    model, sched, noise = gmm_problem(mix, steps=10, seeds=(0,))
    solver = StaticSolver(model, sched, preset("taa"), num_samples=1, sample_shape=noise.sample_shape, device="cpu")
    solver.it_dev.fill_(solver.cap + 3)  # as after warm-up runs at the last iteration
    solver._buffers(solver.W)
    solver._post(solver.W)  # would index past the log buffers without the clamp
    assert_same_solve(solve(model, sched, noise, preset("taa")), solver.solve(noise))
