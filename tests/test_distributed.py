"""Multi-process window evaluation: world-size invariance, chunking, out-of-memory retries, process-group setup.

Runs on CPU with gloo: the spawned runs use 2 and 3 processes; world size 1 is this process without a group.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from parataa.distributed import (
    DistributedDenoiser,
    barrier,
    check_gpu_sharing,
    check_world_size,
    chunk_ranges,
    cleanup,
    init_from_env,
    is_main,
    is_out_of_memory,
    place_rank,
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


# ----------------------------------------------------------------------------------- rank placement, backend


@pytest.mark.parametrize(
    "local_rank, gpus, ranks_per_gpu, want",
    [
        (0, 0, 1, (None, "gloo")),  # no GPU: the CPU
        (3, 0, 2, (None, "gloo")),
        (0, 8, 1, (0, "nccl")),  # one process per GPU, NCCL
        (7, 8, 1, (7, "nccl")),
        (5, 1, 1, (0, "nccl")),  # the scheduler shows each task its own GPU (checked after init for sharing)
        (0, 1, 2, (0, "gloo")),  # two ranks on one GPU: r mod G, gloo
        (1, 1, 2, (0, "gloo")),
        (5, 2, 4, (1, "gloo")),
        (4, 2, 4, (0, "gloo")),
        (1, 4, 2, (1, "gloo")),  # sharing allowed, not needed: still gloo, as asked
    ],
)
def test_rank_placement_and_backend(local_rank, gpus, ranks_per_gpu, want) -> None:
    assert place_rank(local_rank, gpus, ranks_per_gpu) == want


def test_more_ranks_than_gpus_without_sharing_is_refused_naming_the_option() -> None:
    with pytest.raises(RuntimeError) as info:
        place_rank(2, 2, 1)
    msg = str(info.value)
    assert "LOCAL_RANK=2" in msg and "sees 2 GPUs" in msg and "ranks_per_gpu to 2" in msg
    for bad, field in (((-1, 1, 1), "local_rank"), ((0, -2, 1), "gpus"), ((0, 1, 0), "ranks_per_gpu")):
        with pytest.raises(ValueError, match=rf"{field} must be an integer >= \d+, got -?\d"):
            place_rank(*bad)


def test_gpu_sharing_is_checked_against_the_option() -> None:
    a, b = ("node1", "GPU-a"), ("node1", "GPU-b")
    check_gpu_sharing([a, b], 1)  # one per GPU
    check_gpu_sharing([a, a, b, b], 2)
    check_gpu_sharing([None, None], 1)  # CPU ranks share nothing
    check_gpu_sharing([("node1", "GPU-a"), ("node2", "GPU-a")], 1)  # the same uuid string on two hosts
    with pytest.raises(RuntimeError) as info:
        check_gpu_sharing([a, a], 1)
    msg = str(info.value)
    assert "ranks [0, 1] share one GPU (GPU-a on node1)" in msg and "set ranks_per_gpu to 2" in msg
    with pytest.raises(RuntimeError, match=r"ranks \[0, 2, 3\] share .* than ranks_per_gpu=2: set ranks_per_gpu to 3"):
        check_gpu_sharing([a, b, a, a], 2)


def test_init_with_ranks_per_gpu(clean_env) -> None:
    os.environ.update(
        {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    )
    with pytest.raises(ValueError, match=r"ranks_per_gpu must be an integer >= 1, got 0"):
        init_from_env(device="cpu", ranks_per_gpu=0)
    env = init_from_env(timeout_s=30, device="cpu", ranks_per_gpu=2)
    assert (env.backend, env.ranks_per_gpu, env.device.type) == ("gloo", 2, "cpu")
    cleanup()


def _args(**kw) -> argparse.Namespace:
    base = {"gpus": None, "processes": None, "ranks_per_gpu": None, "chunk_size": None, "device": "cpu"}
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize(
    "gpus_here, kw, msg",
    [
        (1, {"processes": 2, "device": "cuda"}, "--processes 2 --device cuda: this machine has 1 CUDA GPU(s), so 2 "
         "processes would share one, and --ranks-per-gpu is 1 (one process per GPU over NCCL, which refuses two on one "
         "GPU); add --ranks-per-gpu 2 to share GPUs over gloo, or ask for at most 1 processes"),
        (2, {"processes": 5, "device": "cuda", "ranks_per_gpu": 2}, "so 3 processes would share one, and "
         "--ranks-per-gpu is 2; add --ranks-per-gpu 3"),
        (0, {"processes": 2, "device": "cuda"}, "--processes 2 --device cuda: no CUDA GPU is visible here"),
        (1, {"gpus": 2}, "--gpus 2: this machine has 1 CUDA GPU(s); ask for at most 1, or share them: --processes 2 "
         "--device cuda --ranks-per-gpu 2"),
        (1, {"gpus": 2, "ranks_per_gpu": 2}, "to share GPUs use --processes 2 --device cuda --ranks-per-gpu 2"),
        (1, {"processes": 2, "ranks_per_gpu": 2}, "--ranks-per-gpu 2 places processes on GPUs: add --device cuda"),
        (1, {"ranks_per_gpu": 2}, "--ranks-per-gpu 2 places processes on GPUs: add --processes N --device cuda"),
        (1, {"processes": 2, "ranks_per_gpu": 0}, "--ranks-per-gpu must be an integer >= 1, got 0"),
        (1, {"processes": 2, "device": "cuda:0"}, "got --device cuda:0"),
    ],
)  # fmt: skip
def test_cli_process_flags_are_refused_naming_the_fix(monkeypatch, gpus_here, kw, msg) -> None:
    """The GPU count is the one input a CPU machine cannot show: it is set here, the rest is the real check."""
    from parataa.cli import _processes

    monkeypatch.setattr(_processes, "_gpu_count", lambda: gpus_here)
    with pytest.raises(ValueError) as info:
        _processes.check(_args(**kw))
    assert msg in str(info.value)


def test_cli_processes_may_share_gpus_when_asked(monkeypatch) -> None:
    from parataa.cli import _processes

    monkeypatch.setattr(_processes, "_gpu_count", lambda: 1)
    args = _args(processes=2, device="cuda", ranks_per_gpu=2)
    assert _processes.check(args) == 2 and args.chunk_size == _processes.DEFAULT_CHUNK_SIZE
    monkeypatch.setattr(_processes, "_gpu_count", lambda: 2)
    assert _processes.check(_args(processes=2, device="cuda")) == 2  # one per GPU: no option needed
    assert _processes.check(_args(processes=3, device="cpu")) == 3


# ------------------------------------------------------------------------- the CLI's workers die with it


def _descendants(pid: int) -> list[int]:
    from parataa.jobs.preflight import children

    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the workers die with the command on Linux")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_signalling_the_command_leaves_no_worker_running(tmp_path, sig) -> None:
    """`compare --processes 2` is the command, torch.distributed.run its child, two workers its grandchildren: a
    signal to the command's pid alone (as `kill PID` sends it) ends all of them. The command would run for minutes
    (64 seeds x 1,000 steps, one row per network call, a parallel solver after the sequential one); the family
    must be gone within 20 s of the signal."""
    from parataa.jobs.preflight import alive

    cmd = [sys.executable, "-m", "parataa", "compare", "--model", "gmm", "--dim", "16", "--steps", "1000",
           "--seeds", "0-63", "--conditions", "0", "--solvers", "sequential,fp+", "--processes", "2",
           "--chunk-size", "1", "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    family: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            family = _descendants(proc.pid)
            if len(family) >= 3:  # torch.distributed.run and its two workers
                break
            time.sleep(0.2)
        assert proc.poll() is None and len(family) >= 3, f"workers did not start: {family}"
        time.sleep(1.0)  # let the workers get past their start (any moment must do; this one is mid-import)
        family = _descendants(proc.pid)
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            states = {p: Path(f"/proc/{p}/stat").read_text().split(") ")[-1][:1]
                      for p in [proc.pid, *family] if alive(p)}
            proc.kill()
            err = proc.stderr.read().decode(errors="replace")[-3000:] if proc.stderr else ""
            raise AssertionError(f"{sig.name}: the command did not exit within 60 s (states {states})\n{err}") from None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(alive(p) for p in family):
            time.sleep(0.2)
        assert not [p for p in family if alive(p)], f"{sig.name}: processes left running"
    finally:
        for p in {proc.pid, *family, *_descendants(proc.pid)}:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        proc.wait(timeout=60)


# ---------------------------------------------------------------------- the study config's ranks_per_gpu

ROOT = Path(__file__).resolve().parents[1]


def _study(tmp_path: Path, **over) -> dict:
    import yaml

    from parataa.jobs.config import validate_config

    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    cfg.update(
        results_dir=str(tmp_path / "results"), samplers=["ddim"], steps=[8], solvers={"taa": {}},
        models=[{"name": "tiny-dit", "conditions": [3, 7]}], progress=False, save_iterates=2, checkpoint_every_s=0,
    )  # fmt: skip
    return validate_config({**cfg, **over})


def test_study_ranks_per_gpu_reaches_the_sampling_jobs_only(tmp_path) -> None:
    from parataa.jobs import plan
    from parataa.jobs.config import ConfigError
    from parataa.jobs.spec import JobSpec

    assert _study(tmp_path)["ranks_per_gpu"] == 1  # the default: one process per GPU
    cfg = _study(tmp_path, world_size=2, ranks_per_gpu=2, device="cuda")
    group = plan.group_spec(cfg, "tiny-dit", "ddim", 8, 0, 0)
    assert (group.world_size, group.ranks_per_gpu) == (2, 2)
    assert JobSpec.from_dict(group.to_dict()) == group
    base = plan.baseline_spec(cfg, "tiny-dit", "ddim", 8, 0)
    assert (base.world_size, base.ranks_per_gpu) == (1, 1)  # the baseline is one process
    with pytest.raises(ConfigError) as info:
        _study(tmp_path, ranks_per_gpu=0)
    assert "ranks_per_gpu" in str(info.value) and "minimum of 1" in str(info.value)


@pytest.mark.parametrize("ranks_per_gpu, gpus", [(1, 2), (2, 1)])
def test_a_job_asks_for_the_gpus_its_ranks_share(tmp_path, ranks_per_gpu, gpus) -> None:
    """The dress rehearsal's sampling jobs (world size 2) ask the executor for 2 GPUs, or 1 that both ranks share."""
    import re

    snakemake = Path(sys.executable).with_name("snakemake")
    p = subprocess.run(
        [str(snakemake), "--profile", "local", "--configfile", "config/paper_rehearsal.yaml", "-n", "--nolock",
         "--config", f"results_dir={tmp_path}", f"reports_dir={tmp_path}/reports", f"figures_dir={tmp_path}/figures",
         f"ranks_per_gpu={ranks_per_gpu}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    found = set()
    for rule, body in re.findall(r"^(?:local)?rule (baseline|sample):\n((?: {4}.*\n)+)", out, re.M):
        m = re.search(r"tasks_per_node=(\d+), gpus_per_node=(\d+)", body)
        found.add((rule, int(m.group(1)), int(m.group(2))))
    assert found == {("baseline", 1, 1), ("sample", 2, gpus)}


# ------------------------------------------------------------------------- on a GPU: ranks sharing one


def _tiny_dit_group(tmp_path: Path, world: int, ranks_per_gpu: int):
    """The tiny-dit cell's baseline (one process) and sampling job (`world` processes sharing GPU 0) on CUDA."""
    from parataa import storage
    from parataa.jobs import plan
    from parataa.jobs.__main__ import main as jobs_main
    from parataa.jobs.shard import ShardJob
    from tests.distributed_harness import run_job

    cfg = _study(tmp_path / f"ws{world}", device="cuda", world_size=world, ranks_per_gpu=ranks_per_gpu)
    base = plan.baseline_spec(cfg, "tiny-dit", "ddim", 8, 0)
    seeds = ",".join(map(str, base.seeds))
    assert jobs_main(["noise", base.noise, "--seeds", seeds, "--steps", "8", "--model", "tiny-dit"]) == 0
    ShardJob()(base)
    group = plan.group_spec(cfg, "tiny-dit", "ddim", 8, 0, 0)
    if world == 1:
        summary = ShardJob()(group)
    else:
        path = tmp_path / f"summary-ws{world}.json"
        run_job(group.to_dict(), world, summary=path)
        summary = json.loads(path.read_text())
    return storage.load_run(group.runs[0].dir), summary


@pytest.mark.gpu
def test_two_ranks_sharing_one_gpu_store_what_one_rank_stores(tmp_path, monkeypatch) -> None:
    """A world-size-2 job with both ranks on one GPU (ranks_per_gpu 2, gloo carrying CUDA tensors) stores the
    same bits as world size 1 on that GPU, and records both ranks' peak GPU memory."""
    import numpy as np

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0])
    (one, s1), (two, s2) = _tiny_dit_group(tmp_path, 1, 1), _tiny_dit_group(tmp_path, 2, 2)
    assert (one.manifest["world_size"], two.manifest["world_size"]) == (1, 2)
    assert (one.manifest["ranks_per_gpu"], two.manifest["ranks_per_gpu"]) == (1, 2)
    np.testing.assert_array_equal(one.trajectory, two.trajectory)
    np.testing.assert_array_equal(one.x0, two.x0)
    np.testing.assert_array_equal(one.iterates, two.iterates)
    assert list(one.samples["iterations"]) == list(two.samples["iterations"])
    assert len(s1["peak_gpu_memory_gib"]) == 1 and len(s2["peak_gpu_memory_gib"]) == 2  # gathered from both ranks
    assert all(p >= q > 0 for p, q in zip(s2["peak_gpu_memory_gib"], s2["solve_peak_gpu_memory_gib"], strict=True))


@pytest.mark.gpu
def test_two_ranks_on_one_gpu_without_the_option_are_refused_naming_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0])
    with pytest.raises(Exception) as info:
        _tiny_dit_group(tmp_path, 2, 1)
    assert "share one GPU" in str(info.value) and "set ranks_per_gpu to 2" in str(info.value)
