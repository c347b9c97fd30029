"""Stale or mixed results never pass silently: a job record holds the spec it was made for, with paths relative
to the results dir; the plan compares specs (not Snakemake's metadata) and weights identities; a dry run deletes
nothing; the analysis refuses a study that mixes weights. The workflow cases run snakemake as a user does, in
their own working directory."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from parataa import storage
from parataa.jobs import plan, verify
from parataa.jobs.config import validate_config
from tests.test_hostile import ROOT, _env

TINY = {
    "study": "tiny",
    "models": [{"name": "gmm", "cfg_scale": 5.0, "conditions": [0, 1], "options": {"dim": 8, "classes": 2}}],
    "samplers": ["ddim"],
    "steps": [8],
    "seeds": [0],
    "seeds_per_shard": 1,
    "solver_defaults": {"abs_tol": 1.0e-3, "rel_tol": 1.0e-3, "init": "gaussian"},
    "solvers": {"fp": {}, "taa": {"history": 2}},
    "save_iterates": 1,
}
GROUP = Path("results/tiny/jobs/gmm/ddim-8/shard-0/group-0.json")
FP = Path("results/tiny/runs/gmm/ddim-8/fp_w8_tol1e-3/shard-0")


def _workdir(path: Path, cfg: dict) -> Path:
    """A user's working directory: the study config, results/ and .snakemake/ in it (the Snakefile's own
    default config linked where it looks for it)."""
    (path / "config").mkdir(parents=True)
    (path / "config" / "study.yaml").symlink_to(ROOT / "config" / "study.yaml")
    (path / "tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _sm(cwd: Path, *args: str) -> tuple[int, str]:
    p = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--profile", str(ROOT / "local"),
         "--configfile", "tiny.yaml", "--cores", "1", *args],
        cwd=cwd, capture_output=True, text=True, timeout=600, env=_env(),
    )  # fmt: skip
    return p.returncode, p.stdout + p.stderr


def _counts(text: str) -> dict[str, int]:
    import re

    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", text, re.M) if m[1] != "total"}


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root (Snakemake's own .snakemake/ aside)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".snakemake" not in p.parts
    }


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 1
    path.write_bytes(bytes(raw))


# ------------------------------------------------------------------------------ the plan, without snakemake


def test_planning_expands_each_cells_grid_once(monkeypatch):
    """A 1,500-job grid: the plan expands each (steps, model, sampler) solver grid once, not once per job, and
    builds each job's spec once; the work is counted, not timed."""
    calls = []
    real = plan.expand_solver_grid

    def counting(*a, **k):
        calls.append(a[1:])
        return real(*a, **k)

    monkeypatch.setattr(plan, "expand_solver_grid", counting)
    cfg = validate_config(
        {
            **TINY,
            "seeds": list(range(125)),
            "samplers": ["ddim", "ddpm"],
            "steps": [8, 16, 24],
            "runs_per_job": 8,
            "max_jobs": 5000,
            "solvers": {"fp": {}, "taa": {"history": [2, 3, 4], "window": [2, 3]}},
        }  # fmt: skip
    )
    n = plan.count(cfg)["jobs"]
    calls.clear()  # validation and the count expand every cell too
    p = plan.Plan(cfg)
    cells = len(cfg["steps"]) * len(cfg["samplers"]) * len(cfg["models"])
    assert len(p.jobs) == 1500 == n
    assert len(calls) == cells, f"{len(calls)} grid expansions for {cells} cells"
    assert sum(j.rule == "baseline" for j in p.jobs.values()) == 125 * cells
    assert len({id(j.spec) for j in p.jobs.values()}) == 1500
    # one SolverConfig object per cell and setting, carried into every shard's job (not rebuilt per job)
    configs = {id(r.config) for j in p.jobs.values() if j.rule == "sample" for r in j.spec.runs}
    assert len(configs) == sum(len(plan.solver_runs(cfg, t, "gmm", s)) for t in cfg["steps"] for s in cfg["samplers"])
    calls.clear()
    for job in list(p.jobs.values())[:50]:  # what the rules' parameters ask for: a lookup, no expansion
        w = dict(job.wildcards)
        assert p.job(job.rule, **w) is job
    assert calls == []


def test_portable_spec_is_the_same_in_a_moved_results_dir_and_names_what_changed(tmp_path):
    a = validate_config({**TINY, "results_dir": str(tmp_path / "a")})
    b = validate_config({**TINY, "results_dir": "elsewhere/results", "progress": not a["progress"], "threads": 2})
    ja, jb = plan.Plan(a).jobs, plan.Plan(b).jobs
    sa = [j.spec.portable() for j in ja.values()]
    assert sa == [j.spec.portable() for j in jb.values()]  # paths relative; progress and threads change no result
    assert all(r["dir"].startswith("runs/gmm/ddim-8/") for s in sa for r in s["runs"])
    assert "results_dir" not in sa[0]
    ridge = validate_config({**a, "solvers": {"fp": {}, "taa": {"history": 2, "ridge": 1e-6}}})
    rec = tmp_path / "group-0.json"
    rec.write_text(json.dumps({"spec": sa[1], "runs_dirs": [], "runs": []}))
    (problem,) = verify.check_record(rec, plan.Plan(ridge).jobs[list(ja)[1]].spec.portable())
    assert "made for another spec" in problem and "ridge: 0.001 -> 1e-06" in problem, problem
    assert verify.check_record(tmp_path / "none.json", sa[1])[0].endswith(
        "no job record (the job's runs cannot be vouched for); the job runs again"
    )


def test_identity_digest_ignores_where_the_weights_are_and_sees_their_bytes(tmp_path):
    from parataa.jobs import identity
    from parataa.models import weights_identity
    from parataa.models.embedded import embedded_path

    here = tmp_path / "tiny-dit"
    shutil.copytree(embedded_path("tiny-dit"), here)
    d0 = identity.weights_digest(weights_identity("tiny-dit"))
    assert d0 == identity.weights_digest(weights_identity("tiny-dit", here)) and len(d0) == 64
    assert identity.weights_digest(weights_identity("gmm")) is None
    cfg = validate_config({**TINY, "results_dir": str(tmp_path / "r"),
                           "models": [{"name": "tiny-dit", "conditions": [3], "path": str(here)}]})  # fmt: skip
    (got, notes) = identity.study_weights(cfg)
    assert got == {"tiny-dit": d0} and "hashed" in notes[0]
    assert identity.study_weights(cfg) == ({"tiny-dit": d0}, [])  # unchanged files: read from the cache
    _scale_weights(here)
    (changed, notes) = identity.study_weights(cfg)
    assert changed["tiny-dit"] != d0 and "hashed" in notes[0]


def _scale_weights(folder: Path) -> None:
    """Other weights under the same path: the first tensor of the transformer doubled (a valid checkpoint)."""
    from safetensors.numpy import load_file, save_file

    f = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(f))
    first = sorted(tensors)[0]
    tensors[first] = (tensors[first] * 2).astype(tensors[first].dtype)
    save_file(tensors, str(f))


# --------------------------------------------------------------------------- the workflow, as a user runs it


@pytest.mark.slow
def test_a_changed_option_replans_without_snakemake_metadata(tmp_path):
    """Run, remove .snakemake/ (as a fresh clone or a copied results dir has none), change `taa: {ridge}`: the
    job group holding taa runs again, the baseline does not; then nothing is left to do."""
    cwd = _workdir(tmp_path, TINY)
    rc, out = _sm(cwd, "--until", "aggregate")
    assert rc == 0, out[-3000:]
    shutil.rmtree(cwd / ".snakemake")
    (cwd / "tiny.yaml").write_text(
        yaml.safe_dump({**TINY, "solvers": {"fp": {}, "taa": {"history": 2, "ridge": 1e-6}}})
    )
    rc, out = _sm(cwd, "--until", "aggregate", "-n")
    assert rc == 0, out
    assert f"[plan] job group {GROUP}: {GROUP}: made for another spec (runs[1].config.ridge: 0.001 -> 1e-06" in out
    assert _counts(out) == {"sample": 1, "aggregate": 1}, out
    rc, out = _sm(cwd, "--until", "aggregate")
    assert rc == 0, out[-3000:]
    assert "2 run(s), 1 already done" in out  # fp's config did not change: not recomputed
    record = json.loads((cwd / GROUP).read_text())
    assert record["spec"]["runs"][1]["config"]["ridge"] == 1e-6 and record["root"] == "../../../.."
    assert record["runs_dirs"] == [str(FP.relative_to("results/tiny")),
                                   "runs/gmm/ddim-8/taa_m2_k8_w8_tol1e-3_ridge1e-6/shard-0"]  # fmt: skip
    rc, out = _sm(cwd, "--until", "aggregate", "-n")
    assert rc == 0 and _counts(out) == {}, out


@pytest.mark.slow
def test_a_copied_results_dir_is_verified_itself_and_a_dry_run_deletes_nothing(tmp_path):
    """A byte flipped in a copy of a finished study: the dry run in the copy names that run and plans its job,
    changes no file in the copy or the original; the real run repairs it bit for bit."""
    orig = _workdir(tmp_path / "orig", TINY)
    rc, out = _sm(orig, "--until", "aggregate")
    assert rc == 0, out[-3000:]
    copy = tmp_path / "copy"
    shutil.copytree(orig, copy, symlinks=True, ignore=shutil.ignore_patterns(".snakemake"))
    _flip(copy / FP / "trajectory.safetensors")
    before_copy, before_orig = _hashes(copy), _hashes(orig)
    rc, out = _sm(copy, "--until", "aggregate", "-n")
    assert rc == 0, out
    assert f"[plan] job group {GROUP}: {FP}: sha256 mismatch for trajectory.safetensors" in out, out
    assert _counts(out) == {"sample": 1, "aggregate": 1}, out
    assert _hashes(copy) == before_copy and _hashes(orig) == before_orig  # nothing deleted, nothing written
    rc, out = _sm(copy, "--until", "aggregate")
    assert rc == 0, out[-3000:]
    np.testing.assert_array_equal(storage.load_run(copy / FP).trajectory, storage.load_run(orig / FP).trajectory)
    rc, out = _sm(copy, "--until", "aggregate", "-n")
    assert rc == 0 and _counts(out) == {}, out


@pytest.mark.slow
def test_other_weights_under_the_same_path_are_planned_again_and_a_mixed_study_is_refused(tmp_path):
    """tiny-dit from a weights folder of the user's: after its weights change, the baseline and the job group
    are planned again; a study recomputed only in part (the baseline alone) is refused by the analysis."""
    from parataa.models.embedded import embedded_path

    cfg = {**TINY, "models": [{"name": "tiny-dit", "conditions": [3], "path": "weights/tiny-dit"}],
           "solvers": {"fp": {}}}  # fmt: skip
    cwd = _workdir(tmp_path, cfg)
    shutil.copytree(embedded_path("tiny-dit"), cwd / "weights" / "tiny-dit")
    rc, out = _sm(cwd, "--until", "aggregate")
    assert rc == 0, out[-3000:]
    rc, out = _sm(cwd, "--until", "aggregate", "-n")
    assert rc == 0 and _counts(out) == {}, out
    _scale_weights(cwd / "weights" / "tiny-dit")
    rc, out = _sm(cwd, "--until", "aggregate", "-n")
    assert rc == 0, out
    assert "made for another spec (model.weights:" in out, out
    assert _counts(out) == {"baseline": 1, "sample": 1, "aggregate": 1}, out
    baseline = "results/tiny/runs/tiny-dit/ddim-8/sequential/shard-0/manifest.json"
    rc, out = _sm(cwd, baseline)  # only the baseline: the study now mixes two weights identities
    assert rc == 0, out[-3000:]
    p = subprocess.run([sys.executable, "-m", "analysis", "--results", "results/tiny", "--out", "reports",
                        "--only", "tables"], cwd=cwd, capture_output=True, text=True, env=_env())  # fmt: skip
    assert p.returncode != 0 and "the study mixes weights: model tiny-dit: 2 weights identities" in p.stderr, (
        p.stdout + p.stderr
    )


def test_braces_in_a_prompt_and_a_model_path_are_free_text(tmp_path):
    """`{word}` in a prompt and in a weights path: planned as written (Snakemake used to read them as wildcards
    of the study_config rule's parameter and stop with a WildcardError naming neither field nor value)."""
    from parataa.models.embedded import embedded_path

    cfg = {**TINY, "models": [{"name": "tiny-sd", "conditions": ["a {word} digit"]},
                              {"name": "tiny-dit", "conditions": [1], "path": "w/{x}"}]}  # fmt: skip
    cwd = _workdir(tmp_path, cfg)
    shutil.copytree(embedded_path("tiny-dit"), cwd / "w" / "{x}")
    rc, out = _sm(cwd, "-n")
    assert rc == 0, out
    assert _counts(out)["study_config"] == 1 and _counts(out)["baseline"] == 2, out
    assert "WildcardError" not in out


def test_a_cell_without_parallel_solvers_plans_nothing_and_a_step_count_without_any_is_refused():
    """`solvers: {}` with a grid: cells the grids name get their solvers and a baseline, the others nothing (no
    baseline to compare with nothing), and the analysis expects exactly those; a step count no grid names is
    refused naming it."""
    from analysis.loaders import expected_cells
    from parataa.jobs.config import ConfigError

    cfg = validate_config({**TINY, "samplers": ["ddim", "ddpm"], "steps": [8, 16], "solvers": {},
                           "grids": [{"steps": [8], "solvers": {"taa": {}}},
                                     {"samplers": ["ddim"], "steps": [16], "solvers": {"fp": {}}}]})  # fmt: skip
    p = plan.Plan(cfg)
    assert sorted(j.spec.name.split("/", 2)[2] for j in p.jobs.values()) == [
        "ddim-16/shard-0/group-0", "ddim-16/shard-0/sequential", "ddim-8/shard-0/group-0",
        "ddim-8/shard-0/sequential", "ddpm-8/shard-0/group-0", "ddpm-8/shard-0/sequential",
    ]  # fmt: skip
    assert plan.count(cfg)["jobs"] == len(p.jobs) == len(plan.targets(cfg)["baseline"] + plan.targets(cfg)["group"])
    cells = expected_cells(cfg)
    assert set(zip(cells["sampler"], cells["steps"], strict=True)) == {("ddim", 8), ("ddpm", 8), ("ddim", 16)}
    with pytest.raises(ConfigError, match=r"config.steps: 16 has no parallel solver in any cell"):
        validate_config({**cfg, "grids": cfg["grids"][:1]})
