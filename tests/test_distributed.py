"""Multi-process window evaluation: world-size invariance, chunking, out-of-memory retries, process-group setup.

Runs on CPU with gloo: the spawned runs use 2 and 3 processes; world size 1 is this process without a group.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from parataa.distributed import (
    DistributedDenoiser,
    barrier,
    check_world_size,
    chunk_ranges,
    cleanup,
    init_from_env,
    is_main,
    is_out_of_memory,
)
from parataa.solvers import preset, solve
from tests.distributed_harness import InjectedOOM, free_port, problem, run_check, run_scenarios
from tests.helpers import gmm_problem


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Bitwise comparisons across processes need the same kernels in each: the spawned ranks run one thread
    (distributed_harness), so does this process while a test compares with them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

SCENARIOS = ("taa-net", "fp+-gmm", "taa-net-oom")
CHUNK = 4


class ChunkedReference:
    """The undistributed reference: the inner model called chunk by chunk, the last chunk padded, in one loop."""

    def __init__(self, inner, chunk_size: int) -> None:
        self.inner, self.c = inner, chunk_size

    def __call__(self, x, timesteps, samples):
        outs = []
        for lo in range(0, x.shape[0], self.c):
            idx = torch.arange(lo, lo + self.c).clamp(max=x.shape[0] - 1)
            outs.append(self.inner(x[idx], timesteps[idx], samples[idx])[: min(self.c, x.shape[0] - lo)])
        return torch.cat(outs)


class Recorder:
    """A real Denoiser wrapper that records the rows of every call."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def __call__(self, x, timesteps, samples):
        self.calls.append((x.clone(), samples.clone()))
        return self.inner(x, timesteps, samples)


@pytest.fixture(scope="module")
def spread() -> dict[int, dict]:
    """Rank 0's results of the check's solves at world sizes 1 (this process), 2 and 3 (spawned gloo groups)."""
    out = {1: run_scenarios(CHUNK, world=1)}
    for w in (2, 3):
        out[w] = run_check(w, CHUNK)
    return out


def solve_net(chunk_size: int, inner=None, wrapper=DistributedDenoiser):
    model, sched, noise = problem("net")
    inner = model if inner is None else inner
    dd = wrapper(inner, chunk_size=chunk_size) if wrapper is DistributedDenoiser else wrapper(inner, chunk_size)
    return solve(dd, sched, noise, preset("taa")), dd


def test_chunk_ranges_are_balanced_and_contiguous() -> None:
    for n in range(0, 12):
        for w in (1, 2, 3, 5):
            r = chunk_ranges(n, w)
            assert r[0][0] == 0 and r[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(r, r[1:], strict=False))
            sizes = [h - lo for lo, h in r]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="world size must be >= 1"):
        chunk_ranges(3, 0)


def test_every_network_call_has_chunk_size_rows(mixture) -> None:
    model, sched, noise = gmm_problem(mixture)
    rec = Recorder(model)
    dd = DistributedDenoiser(rec, chunk_size=4)
    x = torch.randn(10, mixture.dim, dtype=torch.float64)
    t = sched.timesteps[torch.arange(10) % sched.num_steps]
    s = torch.arange(10) % 3
    out = dd(x, t, s)
    assert [c[0].shape[0] for c in rec.calls] == [4, 4, 4]
    assert torch.equal(rec.calls[2][0][2:], x[[9, 9]])  # padding repeats the last row
    assert torch.equal(out, ChunkedReference(model, 4)(x, t, s))
    assert dd.network_calls == 3 and dd.calls == 1 and dd.comm_seconds == 0.0
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        DistributedDenoiser(model, chunk_size=0)


def test_equals_undistributed_inner_with_same_chunk_size() -> None:
    res, _ = solve_net(CHUNK)
    ref, _ = solve_net(CHUNK, wrapper=ChunkedReference)
    assert torch.equal(res.trajectory, ref.trajectory)
    assert bool(res.finished.all())
    # the network's results depend on the batch shape, so the equalities in this file are not vacuous
    other, _ = solve_net(2 * CHUNK)
    assert not torch.equal(other.trajectory, res.trajectory)


def test_world_sizes_give_bitwise_identical_trajectories(spread) -> None:
    for name in SCENARIOS:
        base = spread[1][name]
        assert base["finished"]
        for w in (2, 3):
            assert spread[w][name]["world_size"] == w
            assert torch.equal(spread[w][name]["trajectory"], base["trajectory"]), (name, w)
            assert torch.equal(spread[w][name]["iterations"], base["iterations"])
            assert spread[w][name]["comm_seconds"] > 0
    net, _ = solve_net(CHUNK)
    assert torch.equal(spread[3]["taa-net"]["trajectory"], net.trajectory)


def test_oom_on_one_rank_lowers_the_chunk_size_on_all(spread) -> None:
    for w in (1, 2, 3):
        r = spread[w]["taa-net-oom"]
        assert r["chunk_size"] == CHUNK
        assert r["chunk_size_changes"] == [{"call": 0, "old": 2 * CHUNK, "new": CHUNK}]
        assert torch.equal(r["trajectory"], spread[w]["taa-net"]["trajectory"])


def test_injected_oom_equals_smaller_chunk_from_the_start(caplog) -> None:
    model, _, _ = problem("net")
    start = 4 * CHUNK
    with caplog.at_level(logging.WARNING, logger="parataa.distributed"):
        res, dd = solve_net(start, inner=InjectedOOM(model, max_rows=CHUNK))
    ref, _ = solve_net(CHUNK)
    assert torch.equal(res.trajectory, ref.trajectory)
    assert dd.requested_chunk_size == start and dd.chunk_size == CHUNK
    assert [(c["old"], c["new"]) for c in dd.chunk_size_changes] == [(16, 8), (8, 4)]
    assert any("chunk_size=4" in r.getMessage() for r in caplog.records)
    assert dd.inner.raised == 2  # once per halving, and the smaller size sticks for later calls
    unlowered, _ = solve_net(start)
    assert not torch.equal(unlowered.trajectory, res.trajectory)


def test_oom_at_one_row_and_other_errors_raise(mixture) -> None:
    model, sched, noise = gmm_problem(mixture)
    x = torch.randn(5, mixture.dim, dtype=torch.float64)
    t, s = sched.timesteps[:5], torch.zeros(5, dtype=torch.long)
    dd = DistributedDenoiser(InjectedOOM(model, max_rows=0), chunk_size=2)
    with pytest.raises(torch.OutOfMemoryError, match="one row per network call"):
        dd(x, t, s)
    assert dd.chunk_size == 1

    def broken(x, t, s):
        raise ValueError("bad weights")

    dd = DistributedDenoiser(broken, chunk_size=2)
    with pytest.raises(ValueError, match="bad weights"):
        dd(x, t, s)
    assert dd.chunk_size == 2 and not dd.chunk_size_changes
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


class HalvesNet:
    """An inner model below the guidance combine: rows [cond block; uncond block], row-wise output."""

    cfg_layout = "halves"

    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def __call__(self, x, t, s):
        self.calls.append(s.clone())
        return x * 2 + s[:, None]


def test_cfg_pairs_stay_in_one_call() -> None:
    p = 5
    x = torch.randn(2 * p, 3, dtype=torch.float64)
    s = torch.cat([torch.arange(p), 100 + torch.arange(p)])  # 100 + i: the uncond half of pair i
    t = torch.zeros(2 * p, dtype=torch.long)
    net = HalvesNet()
    out = DistributedDenoiser(net, chunk_size=2)(x, t, s)
    assert torch.equal(out, x * 2 + s[:, None])
    for call in net.calls:
        assert call.shape[0] == 4 and torch.equal(call[2:], call[:2] + 100)
    net = HalvesNet()
    out = DistributedDenoiser(net, chunk_size=2, cfg_pairs_together=False)(x, t, s)
    assert torch.equal(out, x * 2 + s[:, None])
    assert torch.equal(net.calls[2], s[4:6])  # plain chunks split pair 4 from its uncond half
    with pytest.raises(ValueError, match="even number of rows"):
        DistributedDenoiser(HalvesNet(), chunk_size=2)(x[:3], t[:3], s[:3])


def _failing_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world)}
    )
    init_from_env("gloo", timeout_s=60, device="cpu")

    def model(x, t, s):
        if rank == 1:
            raise ValueError("broken on rank 1")
        return x

    try:
        DistributedDenoiser(model, chunk_size=1)(torch.zeros(4, 2), torch.zeros(4), torch.zeros(4, dtype=torch.long))
        msg = "no error"
    except Exception as err:
        msg = f"{type(err).__name__}: {err}"
    Path(out_dir, f"rank{rank}.txt").write_text(msg)
    cleanup()


def test_error_on_one_rank_raises_on_all_instead_of_hanging(tmp_path) -> None:
    torch.multiprocessing.start_processes(
        _failing_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn"
    )
    assert (tmp_path / "rank1.txt").read_text() == "ValueError: broken on rank 1"
    assert "failed on rank(s) [1] of 2" in (tmp_path / "rank0.txt").read_text()


def test_check_world_size_message() -> None:
    check_world_size(2, 2)
    with pytest.raises(ValueError) as info:
        check_world_size(4, 2)
    msg = str(info.value)
    assert "world size 4" in msg and "world size 2" in msg and "torchrun --nproc-per-node 4" in msg
    check_world_size(1)  # no process group: one process


@pytest.fixture
def clean_env():
    saved = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "NCCL_NVLS_ENABLE"):
        os.environ.pop(key, None)
    for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_"))]:
        os.environ.pop(key)
    yield
    cleanup()
    os.environ.clear()
    os.environ.update(saved)


def _slurm_env(submitit: bool) -> None:
    os.environ.update(
        {
            "SLURM_JOB_ID": "4242",
            "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0",
            "SLURM_NTASKS": "1",
            "SLURM_JOB_NUM_NODES": "1",
            "SLURM_NODEID": "0",
            "SLURM_JOB_NODELIST": "localhost",
            "MASTER_PORT": str(free_port()),
        }
    )
    if submitit:
        os.environ["SUBMITIT_EXECUTOR"] = "slurm"


def test_init_single_process_without_launcher(clean_env) -> None:
    env = init_from_env(device="cpu")
    assert (env.launcher, env.world_size, env.backend) == ("single", 1, None)
    assert not dist.is_initialized() and is_main()
    assert os.environ["NCCL_NVLS_ENABLE"] == "0"


def test_init_from_torchrun_env(clean_env) -> None:
    os.environ.update(
        {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    )
    os.environ["NCCL_NVLS_ENABLE"] = "1"  # an explicit setting is kept
    env = init_from_env(timeout_s=30, device="cpu")
    assert (env.launcher, env.rank, env.world_size, env.backend) == ("torchrun", 0, 1, "gloo")
    assert dist.is_initialized() and is_main() and env.is_main
    assert os.environ["NCCL_NVLS_ENABLE"] == "1"
    barrier()
    check_world_size(1)
    with pytest.raises(ValueError, match="world size 2"):
        check_world_size(2)
    cleanup()
    assert not dist.is_initialized()


@pytest.mark.parametrize("submitit", [True, False], ids=["submitit", "srun"])
def test_init_from_slurm_env(clean_env, submitit: bool) -> None:
    _slurm_env(submitit)
    env = init_from_env(timeout_s=30, device="cpu")
    assert env.launcher == ("submitit" if submitit else "slurm")
    assert (env.rank, env.world_size, env.backend) == (0, 1, "gloo")
    assert os.environ["RANK"] == "0" and os.environ["WORLD_SIZE"] == "1" and os.environ["MASTER_ADDR"] == "localhost"
    assert dist.is_initialized()


def test_init_rejects_bad_arguments(clean_env) -> None:
    with pytest.raises(ValueError, match="device must be"):
        init_from_env(device="cuda:7")
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"})
    with pytest.raises(ValueError, match="backend must be"):
        init_from_env(backend="mpi", device="cpu")
    with pytest.raises(ValueError, match="needs CUDA GPUs"):
        init_from_env(backend="nccl", device="cpu")
