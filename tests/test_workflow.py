"""The study workflow: config validation, the study matrix, Snakemake lint and dry runs, the smoke study end
to end, checkpoint/resume of a job killed mid-solve, the world-size check, and (marked `slurm`) the same on a
real SLURM cluster: submit through the profile, cancel, preempt + requeue + resume, driver re-attachment."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from parataa import storage
from parataa.jobs import plan
from parataa.jobs.config import ConfigError, validate_config
from parataa.jobs.spec import JobSpec

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("smoke", "study", "paper", "authors_sd_example", "gmm_reference")
# Dry runs: every config with the local profile, the studies meant for a cluster also with the slurm profile
# (the smoke study goes through it for real in the `slurm` tests). Each dry run costs 4-11 s (importing torch).
DRY_RUNS = [(c, "local") for c in CONFIGS] + [(c, "slurm") for c in ("paper", "authors_sd_example")]
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))


def smoke() -> dict:
    return yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def snakemake(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=_env())


# ----------------------------------------------------------------------------------------- config


def test_defaults_are_filled():
    cfg = validate_config(smoke())
    assert cfg["results_dir"] == "results"
    assert cfg["world_size"] == 1 and cfg["device"] == "cpu" and cfg["progress"] is True
    assert cfg["models"][0]["path"] is None and cfg["models"][0]["chunk_size"] is None


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_are_valid(name):
    validate_config(yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text()))


def _set(path: str, value):
    def edit(cfg):
        node = cfg
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        for k in keys[:-1]:
            node = node[k]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
        return cfg

    return edit


_DELETE = object()

BAD = [
    # (edit, substrings the error must contain)
    (_set("seed", [0]), ["config.seed", "did you mean 'seeds'"]),
    (_set("models.0.cfg_scle", 4.0), ["config.models[0].cfg_scle", "did you mean 'cfg_scale'"]),
    (_set("solvers.taa", {"histroy": 2}), ["config.solvers.taa.histroy", "did you mean 'history'"]),
    (_set("solvers.tAA", {}), ["config.solvers.tAA", "did you mean 'taa'"]),
    (_set("samplers", ["ddin"]), ["config.samplers[0]", "'ddin'", "did you mean 'ddim'"]),
    (_set("steps", [0]), ["config.steps[0]", "0 is less than the minimum of 1"]),
    (_set("steps", [25, 25]), ["config.steps", "non-unique"]),
    (_set("seeds", [1, 1]), ["config.seeds", "non-unique"]),
    (_set("seeds", [-1]), ["config.seeds[0]", "-1"]),
    (_set("seeds_per_shard", 0), ["config.seeds_per_shard", "minimum of 1"]),
    (_set("device", "gpu"), ["config.device", "'gpu'"]),
    (_set("world_size", 0), ["config.world_size", "minimum of 1"]),
    (_set("models.0.name", "dit"), ["config.models[0].name", "'dit'", "did you mean"]),
    (_set("models.0.cfg_scale", -1), ["config.models[0].cfg_scale", "-1"]),
    (_set("models.0.conditions", ["cat"]), ["config.models[0].conditions", "gmm takes class labels"]),
    (_set("models.0.options", {"dimm": 3}), ["config.models[0].options.dimm", "did you mean 'dim'"]),
    (_set("solvers.taa", {"history": [2, 0]}), ["config.solvers.taa.history[1]", "minimum of 1"]),
    (_set("solvers.taa", {"window": 0}), ["config.solvers.taa.window", "0"]),
    (_set("solvers.aa", {"tol_scale": "sigmaa"}), ["config.solvers.aa.tol_scale", "sigmaa"]),
    (_set("solver_defaults", {"order": 3}), ["config.solver_defaults.order", "unknown key"]),
    (_set("solver_defaults", {"abs_tol": 0, "rel_tol": 0}), ["abs_tol and rel_tol are both 0"]),
    (_set("solvers", {}), ["config.steps: 25 has no parallel solver in any cell", "add a solver to `solvers`"]),
    (_set("study", "has space"), ["config.study", "does not match"]),
    (_set("models", []), ["config.models", "non-empty"]),
    (_set("study", _DELETE), ["'study' is a required property"]),
    (_set("fidelity_decode", "yes"), ["config.fidelity_decode", "'yes' is not of type 'boolean'"]),
]


@pytest.mark.parametrize("edit, expect", BAD, ids=[e[1][0] for e in BAD])
def test_bad_config_is_rejected_naming_the_field(edit, expect):
    with pytest.raises(ConfigError) as info:
        validate_config(edit(copy.deepcopy(smoke())))
    msg = str(info.value)
    for s in expect:
        assert s in msg, f"{s!r} not in {msg!r}"


def test_all_problems_are_reported_at_once():
    cfg = smoke()
    cfg["stesp"] = [3]
    cfg["samplers"] = ["ddpn"]
    msg = str(pytest.raises(ConfigError, validate_config, cfg).value)
    assert "config.stesp" in msg and "config.samplers[0]" in msg


# ------------------------------------------------------------------------------------ study matrix


def test_matrix_of_the_smoke_study():
    cfg = validate_config(smoke())
    runs = plan.solver_runs(cfg, 25)
    tags = [r["tag"] for r in runs]
    assert tags == [
        "fp_w25_tol1e-3",
        "fpplus_k25_w25_tol1e-3",
        "aa_m2_k25_w25_tol1e-3",
        "taa_m2_k25_w25_tol1e-3",
        "taa_m3_k25_w25_tol1e-3",
        "picard_w25_ptol1e-1",
    ]
    assert runs[-1]["config"]["init"] == "copy"  # study-wide gaussian init does not override Picard's
    assert runs[0]["config"]["order"] == 1
    n = plan.count(cfg)
    assert n == {"cells": 14, "runs": 14, "jobs": 4, "shards": 1, "samples": 28}


def test_equivalent_grid_points_are_one_cell():
    cfg = validate_config({**smoke(), "solvers": {"taa": {"window": [None, 25, 50], "order": [None, 30]}}})
    assert [r["tag"] for r in plan.solver_runs(cfg, 25)] == ["taa_m2_k25_w25_tol1e-3"]


def test_conditions_do_not_depend_on_sharding():
    cfg = validate_config({**smoke(), "seeds": [4, 9, 2, 7, 5], "models": [{"name": "gmm", "conditions": [0, 1, 2]}]})
    whole = plan.conditions_for(cfg["models"][0], cfg, cfg["seeds"])
    for k in (1, 2, 5):
        c = {**cfg, "seeds_per_shard": k}
        parts = [plan.conditions_for(cfg["models"][0], c, s) for s in plan.shards(c)]
        assert sum(parts, []) == whole


def test_job_paths_are_made_absolute(tmp_path):
    cfg = validate_config(smoke())
    spec = plan.group_spec(cfg, "gmm", "ddpm", 25, 0, 0).absolute(cwd=tmp_path)
    paths = [spec.noise, spec.baseline, spec.state_dir, spec.results_dir] + [r.dir for r in spec.runs]
    assert all(Path(p).is_absolute() and Path(p).is_relative_to(tmp_path.resolve()) for p in paths)
    assert spec.runs[0].dir.endswith("results/smoke/runs/gmm/ddpm-25/fp_w25_tol1e-3/shard-0")


def test_job_spec_is_typed_and_round_trips_through_a_dict():
    cfg = validate_config(smoke())
    spec = plan.group_spec(cfg, "gmm", "ddpm", 25, 0, 0)
    assert isinstance(spec, JobSpec) and spec.model.name == "gmm" and spec.seeds == (0, 1)
    assert [r.tag for r in spec.runs][:2] == ["fp_w25_tol1e-3", "fpplus_k25_w25_tol1e-3"]
    d = json.loads(json.dumps(spec.to_dict()))  # what Snakemake keeps as the rule's parameter
    assert JobSpec.from_dict(d) == spec
    base = plan.baseline_spec(cfg, "gmm", "ddpm", 25, 0)
    assert base.baseline is None and [r.solver for r in base.runs] == ["sequential"]
    assert spec.baseline == str(Path(spec.runs[0].dir).parents[1] / "sequential" / "shard-0")
    with pytest.raises(ValueError, match=r"unknown keys \['wrold_size'\], missing keys \['world_size'\]"):
        JobSpec.from_dict({**{k: v for k, v in d.items() if k != "world_size"}, "wrold_size": 2})
    with pytest.raises(ValueError, match="unknown solver option 'histroy'"):
        JobSpec.from_dict({**d, "runs": [{**d["runs"][0], "config": {"histroy": 2}}]})
    # the manifest config of a run is keyed by everything that changes its numbers
    assert spec.run_key(spec.runs[0]) != spec.replace(seeds=(0, 2)).run_key(spec.runs[0])
    assert spec.run_config(spec.runs[0])["solver_config"] == spec.runs[0].config.to_dict()


def test_the_registry_builds_gmm_with_the_study_options():
    from parataa.models.registry import build_denoiser, sample_shape

    opts = {"dim": 12, "classes": 3, "spread": 0.2, "seed": 4}
    den, info = build_denoiser("gmm", [0, 2], options=opts)
    assert sample_shape("gmm", opts) == info.sample_shape == (12,) and den.mixture.num_classes == 3
    assert sample_shape("gmm") == (64,) and sample_shape("dit-xl-2-256", {"sample_shape": [4, 64, 64]}) == (4, 64, 64)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['dimm'\].*did you mean 'dim'"):
        sample_shape("gmm", {"dimm": 3})
    with pytest.raises(ValueError, match=r"class labels in \[0, 3\), got 3"):
        build_denoiser("gmm", [3], options=opts)  # a label the mixture does not have is refused, not wrapped


def test_paper_config_has_the_paper_settings():
    cfg = validate_config(yaml.safe_load((ROOT / "config" / "paper.yaml").read_text()))
    assert {m["name"] for m in cfg["models"]} == {"dit-xl-2-256", "sd-v1-5"}
    assert cfg["samplers"] == ["ddim", "ddpm"] and cfg["steps"] == [25, 50, 100]
    assert set(cfg["solvers"]) == {"fp", "fp+", "aa", "taa", "picard"}
    assert all(m["cfg_scale"] == 5.0 for m in cfg["models"])
    assert cfg["solver_defaults"]["abs_tol"] == cfg["solver_defaults"]["rel_tol"] == 1e-3
    assert cfg["solver_defaults"]["init"] == "gaussian"
    taa = [r for r in plan.solver_runs(cfg, 100) if r["solver"] == "taa"]
    assert len({(r["config"]["history"], r["config"]["order"], r["config"]["window"]) for r in taa}) == 27


# ----------------------------------------------------------------------------------- snakemake CLI


def test_snakemake_lint_is_clean():
    p = snakemake("--lint", "--configfile", "config/smoke.yaml", timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Congratulations" in p.stdout + p.stderr


def _job_counts(text: str) -> dict[str, int]:
    table = text[text.index("Job stats:") :]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.mark.parametrize("name, profile", DRY_RUNS, ids=[f"{c}-{p}" for c, p in DRY_RUNS])
def test_dry_run(tmp_path, name, profile):
    p = snakemake(
        "--profile", profile, "--configfile", f"config/{name}.yaml", "-n", "--nolock",
        "--config", f"results_dir={tmp_path}", f"reports_dir={tmp_path}/reports", f"figures_dir={tmp_path}/figures",
        timeout=300,
    )  # fmt: skip
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    cfg = validate_config({**yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())})
    n = plan.count(cfg)
    # the study is the --configfile alone: nothing of config/study.yaml (the Snakefile's default) merged in
    assert f"study {cfg['study']}: " in out and f": {n['cells']} cells, " in out, out
    counts = _job_counts(out)
    combos = [(m["name"], s, t) for m in cfg["models"] for s in cfg["samplers"] for t in cfg["steps"]]
    planned = [c for c in combos if plan.solver_runs(cfg, c[2], c[0], c[1])]  # cells with a parallel solver
    assert counts["baseline"] == len(planned) * n["shards"]
    assert counts["baseline"] + counts["sample"] == n["jobs"]
    # a bundle per (model, steps, shard) that a baseline reads: a model's step counts without a cell draw none
    assert counts["noise"] == len({(m, t) for m, _, t in planned}) * n["shards"]
    for rule in ("aggregate", "study_config", "tables", "figures", "audit"):
        assert counts[rule] == 1, rule
    assert f"{tmp_path}/reports/{cfg['study']}/audit.html" in out
    assert f"executor={profile}" in out  # WHERE comes from the profile
    # each job asks for what it uses: a baseline one process (one GPU on a CUDA study), a group world_size
    gpu = 1 if cfg["device"].startswith("cuda") else 0
    assert _rule_resources(out) == {
        "baseline": {(1, gpu)},
        "sample": {(cfg["world_size"], gpu * cfg["world_size"])},
    }


def _rule_resources(text: str) -> dict[str, set[tuple[int, int]]]:
    """(tasks_per_node, gpus_per_node) of every baseline and sample job a dry run lists."""
    out: dict[str, set[tuple[int, int]]] = {}
    for rule, body in re.findall(r"^(?:local)?rule (baseline|sample):\n((?: {4}.*\n)+)", text, re.M):
        m = re.search(r"tasks_per_node=(\d+), gpus_per_node=(\d+)", body)
        out.setdefault(rule, set()).add((int(m.group(1)), int(m.group(2))))
    return out


def test_configs_the_audit_points_to_exist_and_have_its_settings():
    """Every `command` of analysis/paper_claims.yaml names a shipped config, and the two configs made for the
    claims select the runs those claims look for."""
    from analysis.loaders import expected_cells

    claims = yaml.safe_load((ROOT / "analysis" / "paper_claims.yaml").read_text())["claims"]
    for c in claims:
        files = re.findall(r"--configfile (\S+)", c.get("command", ""))
        assert files, c["id"]
        for f in files:
            assert (ROOT / f).is_file(), f"claim {c['id']}: {f} does not exist"
            validate_config(yaml.safe_load((ROOT / f).read_text()))
    by_id = {c["id"]: c for c in claims}
    sd = validate_config(yaml.safe_load((ROOT / "config" / "authors_sd_example.yaml").read_text()))
    sel = by_id["authors-sd-example-iterations"]["measure"]["select"]
    assert sd["models"][0]["name"] == "sd-v1-5" and sd["models"][0]["cfg_scale"] == sel["cfg_scale"]
    assert sd["samplers"] == [sel["sampler"]] and sd["steps"] == [sel["steps"]]
    assert sd["seeds"] == sorted(by_id["authors-sd-example-iterations"]["measure"]["expected"])
    assert set(plan.conditions_for(sd["models"][0], sd, sd["seeds"])) == {sel["condition"]}
    (taa,) = plan.solver_runs(sd, 50)
    assert (taa["solver"], taa["config"]["history"], taa["config"]["order"]) == ("taa", sel["history"], sel["order"])
    assert taa["config"]["init"] == "copy" and taa["config"]["abs_tol"] == taa["config"]["rel_tol"] == 1e-3
    assert taa["config"]["window"] is None  # the authors' W = 100 covers all 50 steps
    gmm = validate_config(yaml.safe_load((ROOT / "config" / "gmm_reference.yaml").read_text()))
    assert gmm["models"][0]["options"] == {"dim": 64, "classes": 10, "spread": 0.15, "seed": 0}
    assert gmm["samplers"] == ["ddim"] and gmm["steps"] == [100] and gmm["models"][0]["cfg_scale"] == 5.0
    tags = [r["tag"] for r in plan.solver_runs(gmm, 100)]
    assert tags == [
        "fp_w100_tol1e-3",
        "fp_w100_tol1e-3_initcopy",
        "fpplus_k100_w100_tol1e-3",
        "fpplus_k100_w100_tol1e-3_initcopy",
        "taa_m2_k100_w100_tol1e-3",
        "taa_m2_k100_w100_tol1e-3_initcopy",
        "taa_m3_k100_w100_tol1e-3",
        "taa_m3_k100_w100_tol1e-3_initcopy",
    ]
    assert set(expected_cells(gmm)["solver_tag"]) == {"sequential", *tags}


# ------------------------------------------------------------------------------------ jobs in-process


def _small_spec(tmp_path: Path, solvers: dict | None = None, steps: int = 25, dim: int = 16) -> tuple[dict, JobSpec]:
    cfg = validate_config(
        {
            **smoke(),
            "results_dir": str(tmp_path / "results"),
            "samplers": ["ddpm"],
            "steps": [steps],
            "solvers": solvers or {"taa": {"history": 3}},
            "models": [{"name": "gmm", "conditions": [1, 2], "options": {"dim": dim}}],
            "progress": False,
            "save_iterates": 1,
            "checkpoint_every_s": 0,
        }
    )
    return cfg, plan.group_spec(cfg, "gmm", "ddpm", steps, 0, 0)


def _prepare(cfg: dict) -> None:
    from parataa.jobs.__main__ import main as jobs_main
    from parataa.jobs.shard import ShardJob

    spec = plan.baseline_spec(cfg, "gmm", "ddpm", cfg["steps"][0], 0)
    opts = json.dumps(cfg["models"][0]["options"])
    seeds = ",".join(map(str, spec.seeds))
    assert jobs_main(["noise", spec.noise, "--seeds", seeds, "--steps", str(spec.steps), "--model", "gmm",
                      "--options", opts]) == 0  # fmt: skip
    ShardJob()(spec)


class _Killed(Exception):
    pass


def test_job_killed_mid_solve_resumes_bitwise(tmp_path, monkeypatch):
    """Preemption: checkpoint() during iteration 6 saves the full solver state, the process dies; the requeued
    job resumes from it and stores exactly what an uninterrupted job stores."""
    import submitit

    from parataa.jobs import shard as shard_mod
    from parataa.jobs.checkpoint import load_state

    cfg_a, spec_a = _small_spec(tmp_path / "a")
    cfg_b, spec_b = _small_spec(tmp_path / "b")
    for c in (cfg_a, cfg_b):
        _prepare(c)
    shard_mod.ShardJob()(spec_a)  # uninterrupted reference

    calls = {"n": 0}
    job = shard_mod.ShardJob()
    holder = {}

    class KilledInCall(shard_mod.DistributedDenoiser):
        """The job's model; the process dies in its kill_at-th call (one call per solver iteration)."""

        def __call__(self, x, t, s):
            calls["n"] += 1
            if holder.get("kill_at") == calls["n"]:
                holder["delayed"] = job.checkpoint(spec_b)  # what submitit's signal handler calls
                raise _Killed
            return super().__call__(x, t, s)

    monkeypatch.setattr(shard_mod, "DistributedDenoiser", KilledInCall)
    holder["kill_at"] = 7
    with pytest.raises(_Killed):
        job(spec_b)
    delayed = holder["delayed"]
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert isinstance(delayed.function, shard_mod.ShardJob) and delayed.args == (spec_b,)
    run = spec_b.runs[0]
    state_file = spec_b.state_path(run)
    assert state_file.is_file() and not storage.is_complete(run.dir)
    saved = load_state(state_file, spec_b.run_key(run), "cpu")
    assert saved["state"]["iteration"] == 6  # the last completed iteration, not the half-done 7th

    holder["kill_at"] = None
    calls["n"] = 0
    delayed.function(*delayed.args)  # the requeued job
    resumed_calls = calls["n"]
    assert not state_file.exists()  # cleaned up after the run was stored

    ra, rb = storage.load_run(spec_a.runs[0].dir), storage.load_run(run.dir)
    np.testing.assert_array_equal(ra.trajectory, rb.trajectory)
    np.testing.assert_array_equal(ra.x0, rb.x0)
    np.testing.assert_array_equal(ra.iterates, rb.iterates)
    timing_cols = ["wall_s", "model_s", "solver_s", "comm_s"]
    pd_eq = pd.testing.assert_frame_equal
    pd_eq(ra.samples.drop(columns=timing_cols), rb.samples.drop(columns=timing_cols))
    pd_eq(ra.convergence, rb.convergence)
    pd_eq(ra.fidelity, rb.fidelity)  # the recorder's rows travel in the checkpoint
    assert len(ra.timings) == len(rb.timings)
    total_iters = int(ra.samples["iterations"].max())
    assert resumed_calls == total_iters - 6  # it really resumed instead of starting over


def test_finished_runs_are_not_redone_and_corrupt_ones_are(tmp_path, monkeypatch):
    from parataa.jobs.shard import ShardJob

    cfg, spec = _small_spec(tmp_path, solvers={"fp": {}, "taa": {}})
    _prepare(cfg)
    ShardJob()(spec)
    a, b = (Path(r.dir) for r in spec.runs)
    ma = json.loads((a / "manifest.json").read_text())
    before = storage.load_run(b)
    f = b / "timings.parquet"
    f.write_bytes(f.read_bytes()[:-5])
    ShardJob()(spec)
    assert json.loads((a / "manifest.json").read_text()) == ma  # valid and same config: not redone
    after = storage.load_run(b)  # truncated: redone, verifies again, same numbers
    np.testing.assert_array_equal(before.trajectory, after.trajectory)
    assert after.manifest["created"] >= before.manifest["created"]


def test_job_records_find_deleted_touched_and_corrupt_runs(tmp_path):
    from parataa.jobs import verify
    from parataa.jobs.shard import ShardJob

    cfg, spec = _small_spec(tmp_path, solvers={"fp": {}, "taa": {}})
    _prepare(cfg)
    ShardJob()(spec)
    a, b = (Path(r.dir) for r in spec.runs)
    rec = tmp_path / "group-0.json"
    storage.atomic_write_json(rec, verify.job_record([a, b], name="g"))
    assert verify.check_record(rec) == []
    os.utime(a / "samples.parquet", ns=(0, 0))  # touched (copied without -p): re-hashed, still intact
    assert verify.check_record(rec) == []
    raw = bytearray((b / "convergence.parquet").read_bytes())
    raw[-20] ^= 1
    (b / "convergence.parquet").write_bytes(bytes(raw))
    (problem,) = verify.check_record(rec)
    assert problem.startswith(f"{b}: sha256 mismatch for convergence.parquet") and "corrupt" in problem
    assert rec.exists()  # checking deletes nothing
    base_rec = tmp_path / "baseline.json"
    storage.atomic_write_json(base_rec, verify.job_record([spec.baseline]))
    assert verify.check_record(base_rec) == []
    shutil.rmtree(spec.baseline)
    assert "no manifest.json (the run is missing" in verify.check_record(base_rec)[0]
    rec_a = tmp_path / "a.json"
    storage.atomic_write_json(rec_a, verify.job_record([a]))
    from parataa.manifest import seal

    manifest = json.loads((a / "manifest.json").read_text())  # another valid manifest, sealed with its own hash
    (a / "manifest.json").write_text(json.dumps(seal({**manifest, "created": "2000-01-01T00:00:00Z"})))
    (problem,) = verify.check_record(rec_a)  # every file still verifies, but this is not the manifest the job wrote
    assert "differs from the one the job wrote" in problem


def test_errors_against_the_sequential_baseline(tmp_path):
    from parataa.jobs.shard import ShardJob

    cfg, spec = _small_spec(tmp_path, solvers={"fp": {}, "taa": {}})
    _prepare(cfg)
    ShardJob()(spec)
    base = storage.load_run(spec.baseline)
    assert base.samples["err_max"].isna().all()
    for r in spec.runs:
        run = storage.load_run(r.dir)
        diff = np.abs(run.x0 - base.x0).reshape(len(run.seeds), -1).max(axis=1)
        np.testing.assert_allclose(run.samples["err_max"], diff)
        assert run.manifest["baseline"]["path"].endswith("sequential/shard-0/manifest.json")
        assert (run.samples["err_max"] < 0.05).all()
        assert run.manifest["weights"]["source"] == {"kind": "analytic"} and not run.manifest["weights"]["synthetic"]


def test_parallel_runs_store_every_iterations_fidelity(tmp_path):
    """fidelity.parquet: each iteration's x0 against the baseline's, in the columns docs/STORAGE.md fixes."""
    import torch

    from parataa.jobs.shard import ShardJob
    from tests.helpers import rounding_tol

    cfg, spec = _small_spec(tmp_path, solvers={"fp+": {}, "taa": {}})
    _prepare(cfg)
    ShardJob()(spec)
    base = storage.load_run(spec.baseline)
    assert base.fidelity is None and "fidelity.parquet" not in base.manifest["files"]
    for r in spec.runs:
        run = storage.load_run(r.dir)
        f = run.fidelity
        assert list(f.columns) == ["study", "model", "sampler", "steps", "solver", "solver_tag", "sample", "seed",
            "condition", "iteration", "psnr_db", "err_max", "err_rms", "image_psnr_db"]  # fmt: skip
        assert "fidelity.parquet" in run.manifest["files"]
        n_iter = int(run.samples["iterations"].max())
        assert len(f) == n_iter * len(run.seeds)
        for k, g in f.groupby("sample"):
            assert list(g["iteration"]) == list(range(1, n_iter + 1))
            assert g["seed"].iloc[0] == run.seeds[k] and g["condition"].iloc[0] == run.samples["condition"][k]
        # the last row of a sample is its stored x0: the samples table's distances (the mean of the d squares
        # summed in another order by torch and numpy: float64 rounding of a d-term sum)
        last = f.groupby("sample").tail(1).reset_index(drop=True)
        np.testing.assert_array_equal(last["err_max"], run.samples["err_max"])
        rel = rounding_tol(torch.float64, base.x0.shape[1])
        np.testing.assert_allclose(last["err_rms"], run.samples["err_rms"], rtol=rel, atol=0)
        mse = ((run.x0 - base.x0) ** 2).reshape(len(run.seeds), -1).mean(axis=1)
        db_tol = 10 / np.log(10) * rel  # a relative error rel of the MSE moves 10 log10 by this many dB
        np.testing.assert_allclose(last["psnr_db"], 10 * np.log10(4 / mse), rtol=0, atol=db_tol)  # data range 2
        assert f["image_psnr_db"].isna().all()  # the mixture has no image
        assert (f.groupby("sample")["err_max"].first() > last["err_max"].to_numpy()).all()


def test_manifest_holds_the_schedule_the_analysis_recounts_with(tmp_path):
    from analysis.loaders import load_study
    from analysis.tables import paper_rule, recount_steps, with_step_scales
    from parataa.jobs.shard import ShardJob
    from parataa.models.gmm import GaussianMixture
    from parataa.schedules import from_diffusers_config

    cfg, spec = _small_spec(tmp_path, solvers={"taa": {}}, steps=12)
    _prepare(cfg)
    ShardJob()(spec)
    sched = from_diffusers_config(GaussianMixture(16, 10, 0.15, 0).scheduler_config, 12, sampler="ddpm")
    study = load_study(Path(cfg["results_dir"]) / cfg["study"])
    assert len(study.runs) == 2
    for run in study.runs:
        s = run.manifest["schedule"]
        assert s["name"] == sched.name and s["num_steps"] == 12 and s["timesteps"] == sched.timesteps.tolist()
        for k in ("alpha_in", "alpha_out", "sigma"):
            assert s[k] == getattr(sched, k).tolist(), k
    # the analysis derives sigma_t from alpha_in/alpha_out: the same numbers as the solver's schedule
    for _, scales in study.step_scales.groupby("run"):  # one table per run, from its own manifest
        np.testing.assert_allclose(scales["sigma"], sched.sigma.numpy(), rtol=1e-12, atol=1e-15)
    conv = with_step_scales(study.convergence, study.step_scales)
    rc = recount_steps(conv, paper_rule(1e-3, "sigma"))
    assert rc["recounted"].all() and rc["iterations"].notna().any()


def test_job_runs_deterministic_and_restores_the_callers_settings(tmp_path):
    import torch

    from parataa.jobs.shard import ShardJob

    cfg, spec = _small_spec(tmp_path)
    _prepare(cfg)
    seen = {}
    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())

    class Spy(ShardJob):
        def _call(self, spec):
            seen["det"] = torch.are_deterministic_algorithms_enabled()
            seen["tf32"] = torch.backends.cuda.matmul.allow_tf32
            return super()._call(spec)

    Spy()(spec)
    assert seen == {"det": True, "tf32": False}
    assert (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == before
    assert storage.read_manifest(spec.runs[0].dir)["config"]["deterministic"] is True


@pytest.mark.gpu
def test_a_job_on_the_gpu_stores_its_runs_and_reports_its_peak_memory(tmp_path):
    """A sampling job on CUDA (world size 1), as the workflow runs it after a CPU baseline: its runs are stored and
    its summary carries the rank's peak GPU memory, which the job record keeps (scripts/gpu_rehearsal.sh reads it)."""
    import dataclasses

    from parataa.jobs.shard import ShardJob

    cfg, spec = _small_spec(tmp_path)
    _prepare(cfg)
    summary = ShardJob()(dataclasses.replace(spec, device="cuda"))
    peak, solve = summary["peak_gpu_memory_gib"], summary["solve_peak_gpu_memory_gib"]
    assert len(peak) == len(solve) == 1 and peak[0] >= solve[0] > 0
    assert all(storage.is_complete(r.dir) for r in spec.runs)


def test_world_size_is_checked_before_the_model_is_built(tmp_path, monkeypatch):
    from parataa.jobs import shard as shard_mod

    cfg, spec = _small_spec(tmp_path)
    spec = spec.replace(world_size=2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(shard_mod, "build_denoiser", lambda *a, **k: pytest.fail("model built before the check"))
    monkeypatch.setattr(shard_mod, "load_noise", lambda *a, **k: pytest.fail("noise loaded before the check"))
    with pytest.raises(shard_mod.WorldSizeError, match=r"world_size: .* 2 process\(es\) but this job has 1"):
        shard_mod.ShardJob()(spec)


class _RowCounter:
    """A real Denoiser wrapper that records how many rows each network call has."""

    def __init__(self, inner) -> None:
        self.inner, self.rows = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x, timesteps, samples):
        self.rows.append(int(x.shape[0]))
        return self.inner(x, timesteps, samples)


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_world_size_one_evaluates_the_same_fixed_chunks_as_n(tmp_path, monkeypatch, chunk_size):
    """Every network call of a job has exactly chunk_size rows (8 when the config says null), at world size 1 as
    at N: the rounding of every call, and so the result, cannot depend on the number of processes."""
    from parataa.jobs import shard as shard_mod
    from parataa.jobs.spec import DEFAULT_CHUNK_SIZE

    cfg, spec = _small_spec(tmp_path, solvers={"taa": {}})
    cfg["models"][0]["chunk_size"] = chunk_size
    spec = plan.group_spec(cfg, "gmm", "ddpm", 25, 0, 0)
    _prepare(cfg)
    counters = []
    real = shard_mod.build_denoiser

    def counting(*a, **k):
        den, info = real(*a, **k)
        counters.append(_RowCounter(den))
        return counters[-1], info

    monkeypatch.setattr(shard_mod, "build_denoiser", counting)
    shard_mod.ShardJob()(spec)
    want = chunk_size or DEFAULT_CHUNK_SIZE
    (counter,) = counters
    assert len(counter.rows) > 25 and set(counter.rows) == {want}
    assert storage.read_manifest(spec.runs[0].dir)["config"]["chunk_size"] == want


@pytest.mark.slow
def test_a_float32_network_gives_the_same_bits_with_one_and_two_processes(tmp_path):
    """tiny-dit (float32 kernels, not batch-invariant) through the job at world size 1 and as two gloo processes."""
    import torch

    from parataa.jobs.shard import ShardJob
    from tests.distributed_harness import run_job
    from tests.helpers import rounding_tol

    stored = []
    for w in (1, 2):
        cfg = validate_config({**smoke(), "results_dir": str(tmp_path / f"ws{w}"), "samplers": ["ddim"], "steps": [8],
                               "solvers": {"taa": {}}, "models": [{"name": "tiny-dit", "conditions": [3, 7]}],
                               "progress": False, "save_iterates": 2, "checkpoint_every_s": 0,
                               "fidelity_decode": True})  # fmt: skip
        base = plan.baseline_spec(cfg, "tiny-dit", "ddim", 8, 0)
        from parataa.jobs.__main__ import main as jobs_main

        seeds = ",".join(map(str, base.seeds))
        assert jobs_main(["noise", base.noise, "--seeds", seeds, "--steps", "8", "--model", "tiny-dit"]) == 0
        ShardJob()(base)
        group = plan.group_spec({**cfg, "world_size": w}, "tiny-dit", "ddim", 8, 0, 0)
        if w == 1:
            ShardJob()(group)
        else:
            run_job(group.to_dict(), w)
        stored.append(storage.load_run(group.runs[0].dir))
    one, two = stored
    assert (one.manifest["world_size"], two.manifest["world_size"]) == (1, 2)
    assert one.manifest["ranks_per_gpu"] == two.manifest["ranks_per_gpu"] == 1  # recorded with every run
    np.testing.assert_array_equal(one.trajectory, two.trajectory)
    np.testing.assert_array_equal(one.x0, two.x0)
    np.testing.assert_array_equal(one.iterates, two.iterates)
    assert list(one.samples["iterations"]) == list(two.samples["iterations"])
    pd.testing.assert_frame_equal(one.fidelity, two.fidelity)
    img = one.fidelity["image_psnr_db"]  # fidelity_decode: tiny-dit's images, every iteration
    assert img.notna().all() and np.isfinite(img).any()  # +inf once the decoded images are equal
    last = one.fidelity.groupby("sample").tail(1)
    db_tol = 10 / np.log(10) * rounding_tol(torch.float64, 16 * 16)  # the same MSE summed by torch and numpy
    np.testing.assert_allclose(last["image_psnr_db"], one.samples["psnr"], rtol=0, atol=db_tol)


def test_executor_parameters_come_from_resources():
    from parataa.jobs.launch import executor_params

    r = {"executor": "slurm", "partition": "gpu", "account": "proj", "qos": "high", "gpus_per_node": 8,
         "tasks_per_node": 0, "cpus_per_task": 0, "runtime": 240, "mem_mb": 64000, "signal_delay_s": 180,
         "slurm_extra": "constraint=h100,exclusive=user"}  # fmt: skip
    p = executor_params("slurm", r, world_size=8, threads=4, name="job")
    assert p["slurm_partition"] == "gpu" and p["slurm_account"] == "proj" and p["slurm_qos"] == "high"
    assert p["gpus_per_node"] == 8 and p["tasks_per_node"] == 8 and p["cpus_per_task"] == 4
    assert p["timeout_min"] == 240 and p["mem_gb"] == 62 and p["slurm_signal_delay_s"] == 180
    assert p["slurm_additional_parameters"] == {"constraint": "h100", "exclusive": "user"}
    paper = validate_config(yaml.safe_load((ROOT / "config" / "paper.yaml").read_text()))
    base = plan.baseline_spec(paper, "dit-xl-2-256", "ddim", 25, 0)
    assert base.world_size == 1 and plan.group_spec(paper, "dit-xl-2-256", "ddim", 25, 0, 0).world_size == 8
    rb = {**r, "tasks_per_node": 1, "gpus_per_node": 1}
    p = executor_params("slurm", rb, world_size=base.world_size, threads=base.threads, name="baseline")
    assert p["tasks_per_node"] == 1 and p["gpus_per_node"] == 1
    local = executor_params("local", {"executor": "local", "gpus_per_node": 0}, world_size=1, threads=1, name="job")
    assert "gpus_per_node" not in local and not any(k.startswith("slurm_") for k in local)
    with pytest.raises(ValueError, match="resources.executor"):
        executor_params("slurmm", {}, world_size=8, threads=4, name="job")


# ------------------------------------------------------------------------------------ end to end


def _check_smoke_results(root: Path) -> dict:
    agg = storage.read_aggregate(root / "smoke" / "aggregate")
    s = agg["samples"]
    cfg = validate_config(smoke())
    assert len(s) == plan.count(cfg)["samples"]
    assert set(s["solver"]) == {"sequential", "fp", "fp+", "aa", "taa", "picard"}
    assert s["finished"].all() and (s["iterations"] <= 25).all()
    par = s[s["solver"] != "sequential"]
    assert par["err_max"].notna().all() and (par["err_max"] < 0.05).all()
    assert s.loc[s["solver"] == "sequential", "err_max"].isna().all()
    for r in agg["manifest"]["runs"]:
        m = storage.read_manifest((root / "smoke" / "aggregate" / r["path"]).parent)
        assert len(m["schedule"]["alpha_in"]) == len(m["schedule"]["sigma"]) == 25
    return agg


def _check_smoke_analysis(root: Path) -> None:
    """What the tables, figures and audit rules made of the smoke study."""
    from analysis.loaders import expected_cells

    recorded = yaml.safe_load((root / "smoke" / "config.yaml").read_text())
    assert recorded == json.loads(json.dumps(validate_config({**smoke(), "results_dir": str(root),
        "reports_dir": f"{root}/reports", "figures_dir": f"{root}/figures"})))  # fmt: skip
    pd.testing.assert_frame_equal(expected_cells(recorded), expected_cells(ROOT / "config" / "smoke.yaml"))
    tables = root / "reports" / "smoke" / "tables"
    rc = pd.read_csv(tables / "recount.csv")
    assert len(rc) == 14 and {"paper_sigma_mean", "paper_beta_mean"} <= set(rc.columns)  # schedule in manifests
    first_order = rc[rc["solver"] != "picard"]
    assert first_order["paper_sigma_mean"].notna().any()
    # the smoke study stopped on the authors' rule: recounting under it gives back the stored counts
    np.testing.assert_allclose(first_order["authors_mean"], first_order["stored_mean"])
    assert (tables / "summary.md").is_file()
    pngs = sorted((root / "figures" / "smoke").glob("*.png"))
    assert "residual_vs_iteration.png" in {p.name for p in pngs}
    assert all(p.stat().st_size > 10_000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    md = (root / "reports" / "smoke" / "audit.md").read_text()
    assert "gmm-reference-shape" in md and "authors-sd-example-iterations" in md
    html = (root / "reports" / "smoke" / "audit.html").read_text()
    assert "data:image/png;base64," in html  # the figures rule's PNGs, embedded


@pytest.mark.slow
def test_smoke_study_end_to_end_local(tmp_path):
    """The smoke study in a results path with a space (every shell command quotes it), then on the same results:
    re-planned from another interpreter path (nothing to do), and three kinds of damage found and repaired."""
    t0 = time.time()
    root = tmp_path / "my results"
    dirs = [f"results_dir={root}", f"reports_dir={root}/reports", f"figures_dir={root}/figures"]
    args = ["--profile", "local", "--configfile", "config/smoke.yaml", "--config", *dirs]
    p = snakemake(*args)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-5000:]
    _check_smoke_results(root)
    _check_smoke_analysis(root)
    record = json.loads((root / "smoke" / "jobs" / "gmm" / "ddim-25" / "shard-0" / "group-0.json").read_text())
    assert record["wall_s"] > 0  # the peaks are measured on GPU jobs only
    assert record["peak_gpu_memory_gib"] is None and record["solve_peak_gpu_memory_gib"] is None
    assert re.search(r"\[parataa\] smoke/gmm/ddpm-25/shard-0/group-0: run 6/6 picard", out)  # per-shard status
    assert "[launch]" in out and "FINISHED" in out
    print(f"smoke study (local profile): {time.time() - t0:.1f} s")

    # Another path to the same interpreter (as after venv -> conda, or `python -m snakemake`): nothing to redo.
    (tmp_path / "env").symlink_to(sys.prefix)
    other = tmp_path / "env" / Path(sys.executable).relative_to(sys.prefix)
    replan = subprocess.run([str(other), "-m", "snakemake", *args, "-n"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env=_env())  # fmt: skip
    assert "Nothing to be done" in replan.stdout + replan.stderr, replan.stdout + replan.stderr
    changed = tmp_path / "changed.yaml"  # while a changed solver option still re-plans its jobs
    changed.write_text(yaml.safe_dump({**smoke(), "solvers": {**smoke()["solvers"], "aa": {"history": 3}}}))
    p_changed = snakemake(*[str(changed) if a == "config/smoke.yaml" else a for a in args], "-n")
    counts = _job_counts(p_changed.stdout + p_changed.stderr)
    assert counts["sample"] == 2 and "baseline" not in counts, p_changed.stdout + p_changed.stderr

    # Damage: a run directory deleted, a byte flipped in another run, a baseline's manifest deleted, and a
    # temporary file left by a writer killed mid-write.
    runs = root / "smoke" / "runs" / "gmm"
    gone = runs / "ddim-25" / "taa_m2_k25_w25_tol1e-3" / "shard-0"
    flipped = runs / "ddpm-25" / "fp_w25_tol1e-3" / "shard-0"
    base = runs / "ddpm-25" / "sequential" / "shard-0"
    before = {d: storage.load_run(d).x0 for d in (gone, flipped, base)}
    shutil.rmtree(gone)
    traj = flipped / "trajectory.safetensors"
    raw = bytearray(traj.read_bytes())
    raw[len(raw) // 2] ^= 1
    traj.write_bytes(bytes(raw))
    (base / "manifest.json").unlink()
    (flipped / ".samples.parquet.tmp4242").write_text("left by a killed writer")
    plan_ = snakemake(*args, "-n")
    text = plan_.stdout + plan_.stderr
    assert plan_.returncode == 0, text
    jobs = root / "smoke" / "jobs" / "gmm"
    assert f"[plan] job group {jobs}/ddim-25/shard-0/group-0.json: {gone}: no manifest.json" in text, text
    assert f"[plan] job group {jobs}/ddpm-25/shard-0/group-0.json: {flipped}: sha256 mismatch for trajectory" in text
    assert f"Missing output files: {base}/manifest.json" in text
    assert _job_counts(text)["baseline"] == 1 and _job_counts(text)["sample"] == 2

    repair = snakemake("--until", "aggregate", *args)  # the analysis' rerun is tested above
    out = repair.stdout + repair.stderr
    assert repair.returncode == 0, out[-5000:]
    assert "5 already done" in out and f"removed {flipped}/.samples.parquet.tmp4242" in out
    _check_smoke_results(root)
    for d, x0 in before.items():
        np.testing.assert_array_equal(storage.load_run(d).x0, x0)  # recomputed, bit for bit
    assert not list(flipped.glob(".*.tmp*"))
    final = snakemake("--until", "aggregate", "-n", *args)
    text = final.stdout + final.stderr
    assert "Nothing to be done" in text or re.search(r"^total\s+0$", text, re.M), text  # no job left


def _stored_runs(results: Path, study: str = "smoke") -> dict[str, storage.Run]:
    runs = sorted(p.parent for p in (results / study / "runs").glob("*/*/*/shard-*/manifest.json"))
    return {str(d.relative_to(results)): storage.load_run(d) for d in runs}


@pytest.mark.slow
def test_smoke_study_with_two_processes_equals_one_bitwise(tmp_path):
    """world_size: 2 through the local profile (two gloo processes on the CPU per job, the model calls split
    between them) finishes every job and stores exactly what world_size: 1 stores."""
    stored = {}
    for w in (1, 2):
        root = tmp_path / f"ws{w}"
        p = snakemake("--profile", "local", "--configfile", "config/smoke.yaml", "--config", f"results_dir={root}",
                      f"world_size={w}", "--", f"{root}/smoke/aggregate/manifest.json")  # fmt: skip
        out = p.stdout + p.stderr
        assert p.returncode == 0, out[-5000:]
        assert f"world size {w}, restart 0" in out
        stored[w] = _stored_runs(root)
    assert len(stored[1]) == plan.count(validate_config(smoke()))["runs"] == 14
    assert sorted(stored[1]) == sorted(stored[2])
    timing = ["wall_s", "model_s", "solver_s", "comm_s"]
    for name, one in stored[1].items():
        two = stored[2][name]
        w = 1 if "/sequential/" in name else 2  # the sequential baseline is one process at every world size
        assert two.manifest["world_size"] == w and two.manifest["config"]["world_size"] == w, name
        np.testing.assert_array_equal(one.trajectory, two.trajectory, err_msg=name)
        np.testing.assert_array_equal(one.x0, two.x0, err_msg=name)
        if one.iterates is not None:
            np.testing.assert_array_equal(one.iterates, two.iterates, err_msg=name)
        differ = [*timing, "world_size"]
        pd.testing.assert_frame_equal(one.samples.drop(columns=differ), two.samples.drop(columns=differ))
        pd.testing.assert_frame_equal(one.convergence, two.convergence)
        if one.fidelity is not None or two.fidelity is not None:
            pd.testing.assert_frame_equal(one.fidelity, two.fidelity)
        assert list(one.timings["rows"]) == list(two.timings["rows"]), name


# ------------------------------------------------------------------------------------------- SLURM


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return p.returncode == 0 and bool(p.stdout.strip())


slurm = pytest.mark.skipif(not _slurm_up(), reason="needs a running SLURM cluster (sinfo missing or no answer)")


def _sacct(job_id: str) -> str:
    for _ in range(30):
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True,
                             text=True).stdout.strip()  # fmt: skip
        if out and not out.startswith(("RUNNING", "PENDING", "REQUEUED")):
            return out
        time.sleep(1)
    return out


def _slow_spec(tmp_path: Path) -> tuple[dict, JobSpec]:
    # ~10 s of solving on one core: enough to cancel or preempt it mid-solve
    cfg, spec = _small_spec(tmp_path, solvers={"fp": {}}, steps=200, dim=1024)
    cfg["progress"] = True
    spec = plan.group_spec(cfg, "gmm", "ddpm", 200, 0, 0)
    return cfg, spec


def _driver(spec: JobSpec, folder: Path, record: Path, resources: dict) -> subprocess.Popen:
    code = (
        "import json, sys; from parataa.jobs.launch import submit_and_wait; "
        f"r = submit_and_wait(json.loads({json.dumps(json.dumps(spec.to_dict()))}), resources={resources!r}, "
        f"folder={str(folder)!r}, record={str(record)!r}, name='drv'); print('RESULT', json.dumps(r))"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=_env())  # fmt: skip


def _wait_running(record: Path, timeout: float = 60) -> str:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if record.exists():
            jid = json.loads(record.read_text())["job_id"]
            st = subprocess.run(["squeue", "-h", "-j", jid, "-o", "%T"], capture_output=True, text=True).stdout
            if "RUNNING" in st:
                return jid
        time.sleep(0.5)
    raise AssertionError("the SLURM job did not start")


SLURM_RES = {"executor": "slurm", "runtime": 10, "gpus_per_node": 1, "poll_s": 2}


@pytest.mark.slurm
@pytest.mark.slow
@slurm
def test_smoke_study_through_slurm_profile(tmp_path):
    # the users' command, unchanged (a CPU study: its jobs ask for processes and no GPU; SLURM is checked first)
    dirs = [f"results_dir={tmp_path}", f"reports_dir={tmp_path}/reports", f"figures_dir={tmp_path}/figures"]
    p = snakemake("--profile", "slurm", "--configfile", "config/smoke.yaml", "--config", *dirs)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-5000:]
    agg = _check_smoke_results(tmp_path)
    _check_smoke_analysis(tmp_path)
    ids = re.findall(r"submitted slurm job (\d+)", out)
    assert len(ids) == 4
    assert all(_sacct(j).startswith("COMPLETED") for j in ids)
    envs = {storage.read_manifest(Path(tmp_path / "smoke" / "aggregate" / r["path"]).parent)["environment"].get(
        "SLURM_JOB_ID") for r in agg["manifest"]["runs"]}  # fmt: skip
    assert envs == set(ids)


@pytest.mark.slurm
@slurm
def test_slurm_cancel_from_the_driver(tmp_path):
    cfg, spec = _slow_spec(tmp_path)
    _prepare(cfg)
    record = tmp_path / "rec.json"
    drv = _driver(spec, tmp_path / "sub", record, SLURM_RES)
    jid = _wait_running(record)
    drv.send_signal(signal.SIGTERM)  # what Snakemake sends its jobs on Ctrl-C
    drv.wait(timeout=60)
    assert drv.returncode != 0
    assert _sacct(jid).startswith("CANCELLED")
    assert not storage.is_complete(spec.runs[0].dir)


@pytest.mark.slurm
@pytest.mark.slow
@slurm
def test_slurm_preempted_job_requeues_and_resumes_bitwise(tmp_path):
    import submitit

    from parataa.jobs.shard import ShardJob

    cfg, spec = _slow_spec(tmp_path / "a")
    _prepare(cfg)
    ex = submitit.AutoExecutor(folder=str(tmp_path / "sub" / "%j"), cluster="slurm")
    ex.update_parameters(timeout_min=10, slurm_signal_delay_s=20, name="preempt")
    job = ex.submit(ShardJob(), spec)
    log = Path(str(job.paths.stderr))
    t0 = time.time()
    while time.time() - t0 < 90:  # wait until it is iterating
        if log.exists() and re.search(r"fp_w200_tol1e-3: iteration [1-9]\d* \(at most 200\)", log.read_text()):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("job never started iterating")
    job._interrupt()  # SIGUSR2 as on preemption: checkpoint(), then requeue
    summary = job.result()
    assert summary["restart"] == "1"
    out = Path(str(job.paths.stdout)).read_text()
    assert "checkpoint:" in out and "resuming fp_w200_tol1e-3 from iteration" in out
    # the same spec solved in this process without interruption
    cfg_b, spec_b = _slow_spec(tmp_path / "b")
    _prepare(cfg_b)
    ShardJob()(spec_b)
    ra, rb = storage.load_run(spec.runs[0].dir), storage.load_run(spec_b.runs[0].dir)
    np.testing.assert_array_equal(ra.trajectory, rb.trajectory)
    np.testing.assert_array_equal(ra.x0, rb.x0)
    assert list(ra.samples["iterations"]) == list(rb.samples["iterations"])


@pytest.mark.slurm
@slurm
def test_restarted_driver_reattaches_instead_of_resubmitting(tmp_path):
    cfg, spec = _slow_spec(tmp_path)
    _prepare(cfg)
    record = tmp_path / "rec.json"
    first = _driver(spec, tmp_path / "sub", record, SLURM_RES)
    jid = _wait_running(record)
    first.kill()  # the driver dies hard; the job keeps running
    first.wait()
    second = _driver(spec, tmp_path / "sub", record, SLURM_RES)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    assert f"re-attached to SLURM job {jid}" in out and "submitted" not in out
    assert storage.is_complete(spec.runs[0].dir)
    assert _sacct(jid).startswith("COMPLETED")


@pytest.mark.slow
def test_paper_rehearsal_on_tiny_synthetic_checkpoints(tmp_path):
    """config/paper_rehearsal.yaml as a cluster user would run it, on the CPU: DiT-XL/2 and SD v1.5 through their
    real loaders from synthetic checkpoints of the published layout (tiny here), two processes per job, through
    tables, figures and the audit, which records the weights as synthetic and decides no paper claim on them."""
    import yaml

    from parataa.models.synthetic import main as make_synthetic

    weights = tmp_path / "weights"
    for name in ("dit-xl-2-256", "sd-v1-5"):
        assert make_synthetic(["--model", name, "--size", "tiny", "--out", str(weights / f"{name}-synthetic")]) == 0
    cfg = yaml.safe_load((ROOT / "config" / "paper_rehearsal.yaml").read_text())
    for m in cfg["models"]:
        m["path"] = str(weights / Path(m["path"]).name)
        m["dtype"] = "float32"
    cfg.update(device="cpu", threads=1, steps=[6], results_dir=str(tmp_path / "results"),
               reports_dir=str(tmp_path / "reports"), figures_dir=str(tmp_path / "figures"))  # fmt: skip
    path = tmp_path / "rehearsal.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = snakemake("--profile", "local", "--configfile", str(path), timeout=1200)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-5000:]
    runs = _stored_runs(tmp_path / "results", "paper_rehearsal")
    assert {r.manifest["config"]["model"] for r in runs.values()} == {"dit-xl-2-256", "sd-v1-5"}
    for name, run in runs.items():
        assert run.manifest["weights"]["synthetic"] is True, name
        assert run.manifest["world_size"] == (1 if "/sequential/" in name else 2), name
    audit_md = (tmp_path / "reports" / "paper_rehearsal" / "audit.md").read_text()
    assert "synthetic random-weight checkpoints" in audit_md


# ------------------------------------------------------------------ the sampler families beyond DDIM/DDPM


def families() -> dict:
    return yaml.safe_load((ROOT / "config" / "families_smoke.yaml").read_text())


def test_a_model_skips_the_samplers_it_does_not_take():
    """samplers: [ddim, ddpm, dpmpp-2m, flow-euler] with a diffusion and a flow model: the diffusion model runs
    the first three, the flow model flow-euler alone; no cell, baseline or job for the other pairs."""
    cfg = validate_config({**families(), "samplers": ["ddim", "ddpm", "dpmpp-2m", "flow-euler"]})
    cells = {(m["name"], s) for m in cfg["models"] for s in cfg["samplers"] if plan.groups(cfg, 10, m["name"], s)}
    assert cells == {("tiny-dit", "ddim"), ("tiny-dit", "ddpm"), ("tiny-dit", "dpmpp-2m"), ("tiny-flow", "flow-euler")}
    baselines = plan.targets(cfg)["baseline"]
    assert len(baselines) == 4 and not any("tiny-flow/ddim" in b or "tiny-dit/flow-euler" in b for b in baselines)
    assert plan.count(cfg)["cells"] == 4 * 3  # sequential, picard, taa-euler in each


@pytest.mark.parametrize(
    "edit, expect",
    [
        ({"models": [{"name": "tiny-flow"}], "samplers": ["ddim", "dpmpp-2m"]},
         "config.samplers: model tiny-flow (config.models[0]) takes none of the samplers ['ddim', 'dpmpp-2m']; "
         "add flow-euler to samplers"),
        ({"models": [{"name": "tiny-dit"}], "samplers": ["flow-euler"]},
         "config.samplers: model tiny-dit (config.models[0]) takes none of the samplers ['flow-euler']; add ddim "
         "or ddpm or dpmpp-2m to samplers"),
        ({"grids": [{"models": ["tiny-flow"], "samplers": ["dpmpp-2m"], "solvers": {"taa": {}}}]},
         "config.grids[0]: no model of ['tiny-flow'] takes a sampler of ['dpmpp-2m']"),
        ({"samplers": ["dpm++"]}, "config.samplers[0]"),
    ],
)  # fmt: skip
def test_a_study_whose_model_takes_none_of_its_samplers_is_refused(edit, expect):
    with pytest.raises(ConfigError) as e:
        validate_config({**families(), **edit})
    assert expect in str(e.value)


# Sequential x0 of the workflow against each family's plain sequential loop: the same float32 network on the same
# states, batched differently (a few float32 ulps, 2^-24 relative, of outputs |.| <= ~4 per call), over 10 steps
TOL_SEQ = 10 * 64 * 2.0**-24 * 4


def _plain_flow_euler(den, noise, steps: int):
    """Flow matching with Euler steps written out from the levels (diffusers' FlowMatchEulerDiscreteScheduler
    loop): x <- x + (s_next - s) v(x, s * 1000), independent of the package's Schedule and solvers."""
    import torch

    from parataa.families import flow_sigmas

    levels, tau = flow_sigmas(den.scheduler_config, steps)
    x = noise.x_T.to(torch.float64)
    samples = torch.arange(x.shape[0])
    for i in range(steps):
        v = den(x.to(torch.float32), torch.full((x.shape[0],), float(tau[i]), dtype=torch.float64), samples)
        x = x + (levels[i + 1] - levels[i]) * v.to(torch.float64)
    return x


@pytest.mark.slow
def test_families_study_end_to_end_local(tmp_path):
    """config/families_smoke.yaml through Snakemake: DPM-Solver++(2M) on tiny-dit and flow-Euler on tiny-flow,
    each model skipping the other's sampler; the stored sequential x0 is each family's plain sequential sampler
    on the study's noise, TAA-Euler reaches it (40 dB) on flow-Euler, and the analysis tables and figures name
    both cells."""
    from parataa.families import DIT_SCHEDULER, dpmpp_2m_schedule
    from parataa.models.registry import build_denoiser
    from parataa.noise import load_noise
    from tests.test_families import _diffusers_dpm_loop, _multistep_tol

    root = tmp_path / "results"
    dirs = [f"results_dir={root}", f"reports_dir={root}/reports", f"figures_dir={root}/figures"]
    p = snakemake("--profile", "local", "--configfile", "config/families_smoke.yaml", "--config", *dirs)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-5000:]
    study = root / "families_smoke"
    cfg = validate_config(families())
    agg = storage.read_aggregate(study / "aggregate")
    s = agg["samples"]
    assert len(s) == plan.count(cfg)["samples"] == 2 * 3 * 2  # 2 cells x (sequential, picard, taa-euler) x 2 seeds
    assert set(zip(s["model"], s["sampler"], strict=True)) == {("tiny-dit", "dpmpp-2m"), ("tiny-flow", "flow-euler")}
    assert sorted(p.name for p in (study / "runs" / "tiny-dit").iterdir()) == ["dpmpp-2m-10"]
    assert sorted(p.name for p in (study / "runs" / "tiny-flow").iterdir()) == ["flow-euler-10"]
    assert s["finished"].all() and (s["iterations"] <= 10).all()

    tables = root / "reports" / "families_smoke" / "tables"
    paper = pd.read_csv(tables / "paper_table.csv")
    assert set(zip(paper["model"], paper["sampler"], strict=True)) == {("tiny-dit", "dpmpp-2m"),
                                                                      ("tiny-flow", "flow-euler")}  # fmt: skip
    flow = paper[(paper["model"] == "tiny-flow") & (paper["solver"] == "taa-euler")]
    assert len(flow) == 1 and int(flow["n_censored_40db"].iloc[0]) == 0, flow
    md = (tables / "paper_table.md").read_text()
    assert "| tiny-dit | DPM++(2M)-10 |" in md and "| tiny-flow | Flow-Euler-10 |" in md, md
    figures = root / "figures" / "families_smoke"
    assert (figures / "iterates_tiny-dit_dpmpp-2m-10.png").is_file()
    assert (figures / "iterates_tiny-flow_flow-euler-10.png").is_file()
    assert (figures / "steps_to_sequential.png").is_file()

    for model, sampler in (("tiny-flow", "flow-euler"), ("tiny-dit", "dpmpp-2m")):
        run = study / "runs" / model / f"{sampler}-10" / "sequential" / "shard-0"
        manifest = storage.read_manifest(run)
        assert manifest["schedule"]["name"].startswith(sampler), manifest["schedule"]["name"]
        noise = load_noise(study / "noise" / model / "T10" / "shard-0.safetensors")
        den, spec = build_denoiser(model, [3, 8], cfg_scale=5.0)
        tol = TOL_SEQ
        if sampler == "dpmpp-2m":  # diffusers' own DPMSolverMultistepScheduler loop, float32 steps
            cfg_dpm = spec["scheduler_config"] or DIT_SCHEDULER
            _, ref = _diffusers_dpm_loop(den, cfg_dpm, 10, noise)
            tol = _multistep_tol(dpmpp_2m_schedule(cfg_dpm, 10), float(ref.abs().max()))
        else:
            ref = _plain_flow_euler(den, noise, 10)
        x0 = np.asarray(storage.load_run(run).x0, dtype=np.float64)
        err = float(np.abs(x0 - ref.numpy().reshape(x0.shape)).max())
        assert err <= tol, (model, sampler, err, tol)


def test_a_study_runs_the_stopping_options_of_its_solver_blocks(tmp_path):
    """freeze_frac, target_db (stop: target) and floor_freeze in a study's solver blocks, through the plan and the
    sampling job as the workflow runs them: each run's stored config and tag carry them, every sample finishes
    within T, and the frozen solve evaluates fewer states than the same solver without freezing."""
    from parataa.jobs.__main__ import main as jobs_main
    from parataa.jobs.shard import ShardJob

    cfg = validate_config({**smoke(), "results_dir": str(tmp_path / "results"), "samplers": ["ddim"], "steps": [8],
                           "models": [{"name": "tiny-dit", "conditions": [3, 7]}], "progress": False,
                           "checkpoint_every_s": 0, "runs_per_job": 8,
                           "solvers": {"taa-euler": {}, "taa": {"stop": "target", "target_db": 35, "floor_freeze": 2}},
                           "grids": [{"solvers": {"taa-euler": {"freeze_frac": 0.02}}}]})  # fmt: skip
    base = plan.baseline_spec(cfg, "tiny-dit", "ddim", 8, 0)
    seeds = ",".join(map(str, base.seeds))
    assert jobs_main(["noise", base.noise, "--seeds", seeds, "--steps", "8", "--model", "tiny-dit"]) == 0
    ShardJob()(base)
    group = plan.group_spec(cfg, "tiny-dit", "ddim", 8, 0, 0)
    ShardJob()(group)
    runs = {r.tag: storage.load_run(r.dir) for r in group.runs}
    frozen = next(t for t in runs if t.endswith("_frz2e-2"))
    plain = frozen.removesuffix("_frz2e-2")
    target = next(t for t in runs if "_db3.5e1" in t and t.endswith("_ff2"))
    assert runs[frozen].manifest["config"]["solver_config"]["freeze_frac"] == 0.02
    t_cfg = runs[target].manifest["config"]["solver_config"]
    assert (t_cfg["stop"], t_cfg["target_db"], t_cfg["floor_freeze"]) == ("target", 35, 2)
    for run in runs.values():
        assert run.samples["finished"].all() and (run.samples["iterations"] <= 8).all()
    assert runs[frozen].samples["nfe"].sum() < runs[plain].samples["nfe"].sum()
