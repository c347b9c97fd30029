"""Hostile but realistic inputs, each refused before any compute or survived without losing or inventing a
result: every study-config field with a value a job would refuse (table-driven over the schema), shell
metacharacters in paths, class labels outside a model's range, over-long and empty prompts, huge study
matrices, bad command-line values, a scheduler that does not answer, stale temporary files and locks, and a
Snakemake interrupted or killed while its jobs run."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from parataa import storage
from parataa.jobs import preflight
from parataa.jobs.config import ConfigError, load_schema, validate_config

ROOT = Path(__file__).resolve().parents[1]


def smoke() -> dict:
    return yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT)  # jobs started in another working directory import this checkout
    env.update(extra)
    return env


def snakemake(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=env or _env(),
    )  # fmt: skip


# ------------------------------------------------------------------------ every field of the schema


def schema_fields(schema: dict) -> set[str]:
    """Every leaf field of the study schema, as paths: models[].cfg_scale, solvers.<solver>.window, ..."""

    def resolve(node: dict) -> dict:
        ref = node.get("$ref")
        if not ref:
            return node
        target = schema
        for part in ref[2:].split("/"):
            target = target[part]
        return target

    out: set[str] = set()

    def walk(node: dict, path: str) -> None:
        node = resolve(node)
        props = dict(node.get("properties", {}))
        for branch in node.get("allOf", []):  # a model's options depend on its name (if gmm / else)
            for key in ("then", "else"):
                for name, sub in branch.get(key, {}).get("properties", {}).items():
                    for opt in resolve(sub).get("properties", {}):
                        out.add(f"{path}{name}.{opt}")
        if node.get("type") == "array" and isinstance(node.get("items"), dict) and "properties" in node["items"]:
            walk(node["items"], path.rstrip(".") + "[].")
            return
        if not props:
            out.add(path.rstrip("."))
            return
        for name, sub in props.items():
            if path in ("solvers.", "grids[].solvers."):
                walk(sub, f"{path}<solver>.")
                continue
            walk(sub, f"{path}{name}.")

    walk(schema, "")
    return out


NAN, INF = float("nan"), float("inf")
# field -> hostile values and what the message must say. Every field of the schema has a row (checked below),
# and each value here is one a job would refuse or mishandle if the dry run let it through.
HOSTILE: dict[str, list[tuple[object, list[str]]]] = {
    "study": [("has space", ["config.study", "does not match"]), ("x\n", ["config.study"])],
    "results_dir": [
        ("x$(touch PWNED)", ["config.results_dir", "shell metacharacters"]),
        ("`touch PWNED`", ["config.results_dir"]),
        ("~/r", ["config.results_dir"]),
        ("a{b}", ["config.results_dir"]),
        ("r%j", ["config.results_dir"]),
    ],
    "reports_dir": [("r;rm -rf x", ["config.reports_dir", "letters, digits, spaces"])],
    "figures_dir": [("f'x", ["config.figures_dir"]), ("-f", ["config.figures_dir"])],
    "models[].name": [("dit", ["config.models[0].name", "did you mean"])],
    "models[].cfg_scale": [
        (NAN, ["config.models[0].cfg_scale", "not a finite number"]),
        (-1, ["config.models[0].cfg_scale"]),
        ("5", ["config.models[0].cfg_scale"]),
    ],
    "models[].conditions": [
        ([99], ["config.models[0].conditions[0]", "10 classes", "got 99"]),
        ([-1], ["config.models[0].conditions[0]", "got -1"]),
        (["cat"], ["config.models[0].conditions[0]", "class labels"]),
        ([], ["config.models[0].conditions"]),
    ],
    "models[].options": [({"dimm": 3}, ["config.models[0].options.dimm", "did you mean 'dim'"])],
    "models[].options.dim": [
        (-4, ["config.models[0].options.dim", "minimum of 1"]),
        (2.5, ["config.models[0].options.dim"]),
    ],
    "models[].options.classes": [(0, ["config.models[0].options.classes"])],
    "models[].options.spread": [
        ("wide", ["config.models[0].options.spread", "number"]),
        (0, ["config.models[0].options.spread"]),
        (INF, ["config.models[0].options.spread", "not a finite number"]),
    ],
    "models[].options.seed": [
        (-1, ["config.models[0].options.seed"]),
        (2**64, ["config.models[0].options.seed", "maximum"]),
    ],
    "models[].options.sample_shape": [([4, 0], ["config.models[0].options.sample_shape[1]"])],
    "models[].path": [("weights/x", ["config.models[0].path", "no weights"])],
    "models[].dtype": [("float8", ["config.models[0].dtype"])],
    "models[].chunk_size": [(0, ["config.models[0].chunk_size", "an integer >= 1"])],
    "samplers": [(["ddin"], ["config.samplers[0]", "did you mean 'ddim'"]), ([], ["config.samplers"])],
    "steps": [
        ([0], ["config.steps[0]", "minimum of 1"]),
        ([1001], ["config.steps[0]", "maximum"]),
        ([25.0], ["config.steps[0]", "integer"]),
    ],
    "seeds": [
        ([-3], ["config.seeds[0]", "-3"]),
        ([2**64], ["config.seeds[0]", "maximum"]),
        ([1, 1], ["config.seeds", "non-unique"]),
        ([1.0], ["config.seeds[0]", "integer"]),
    ],
    "seeds_per_shard": [(0, ["config.seeds_per_shard", "minimum of 1"])],
    "runs_per_job": [(0, ["config.runs_per_job", "minimum of 1"])],
    "max_jobs": [(0, ["config.max_jobs", "minimum of 1"])],
    "solver_defaults.window": [(0, ["config.solver_defaults.window", "an integer >= 1"])],
    "solver_defaults.history": [(0, ["config.solver_defaults.history", "minimum of 1"])],
    "solver_defaults.ridge": [(NAN, ["config.solver_defaults.ridge", "not a finite number"])],
    "solver_defaults.abs_tol": [(-1e-3, ["config.solver_defaults.abs_tol"])],
    "solver_defaults.rel_tol": [(INF, ["config.solver_defaults.rel_tol", "not a finite number"])],
    "solver_defaults.picard_tol": [("x", ["config.solver_defaults.picard_tol"])],
    "solver_defaults.tol_scale": [("sigmaa", ["config.solver_defaults.tol_scale", "did you mean 'sigma'"])],
    "solver_defaults.init": [("zeros", ["config.solver_defaults.init"])],
    "solver_defaults.max_iters": [(0, ["config.solver_defaults.max_iters", "an integer >= 1"])],
    "solvers.<solver>.window": [
        (-1, ["config.solvers.taa.window", "an integer >= 1 or null"]),
        ([5, -1], ["config.solvers.taa.window[1]", "an integer >= 1"]),
    ],
    "solvers.<solver>.order": [(0, ["config.solvers.taa.order", "an integer >= 1 or null"])],
    "solvers.<solver>.history": [([2, 0], ["config.solvers.taa.history[1]", "an integer >= 1"])],
    "solvers.<solver>.ridge": [
        (-1, ["config.solvers.taa.ridge", "a finite number >= 0"]),
        (NAN, ["config.solvers.taa.ridge", "not a finite number"]),
    ],
    "solvers.<solver>.abs_tol": [([1e-3, -1], ["config.solvers.taa.abs_tol[1]", "a finite number >= 0"])],
    "solvers.<solver>.rel_tol": [("tight", ["config.solvers.taa.rel_tol", "a finite number >= 0"])],
    "solvers.<solver>.picard_tol": [(-0.1, ["config.solvers.taa.picard_tol", "a finite number >= 0"])],
    "solvers.<solver>.tol_scale": [("sigmaa", ["config.solvers.taa.tol_scale", "sigma, one or beta"])],
    "solvers.<solver>.init": [("zeros", ["config.solvers.taa.init", "gaussian or copy"])],
    "solvers.<solver>.max_iters": [("x", ["config.solvers.taa.max_iters", "an integer >= 1 or null"])],
    "device": [("tpu", ["config.device"]), ("cpu\n", ["config.device"])],
    "world_size": [(0, ["config.world_size", "minimum of 1"])],
    "ranks_per_gpu": [(0, ["config.ranks_per_gpu", "minimum of 1"]), (1.5, ["config.ranks_per_gpu"])],
    "threads": [(0, ["config.threads", "minimum of 1"])],
    "checkpoint_every_s": [(NAN, ["config.checkpoint_every_s", "not a finite number"])],
    "save_iterates": [(-1, ["config.save_iterates", "minimum of 0"])],
    "fidelity_decode": [("no", ["config.fidelity_decode", "boolean"])],
    "deterministic": [("yes", ["config.deterministic", "boolean"])],
    "progress": [(1, ["config.progress", "boolean"])],
}


HOSTILE.update(
    {
        "solvers.<solver>.splitting": [("eulr", ["config.solvers.taa.splitting", "exact or euler"])],
        "solvers.<solver>.stop": [("steps", ["config.solvers.taa.stop", "step (per step), sum (summed residual)"])],
        "solvers.<solver>.sum_tol": [(NAN, ["config.solvers.taa.sum_tol", "not a finite number"])],
        "solvers.<solver>.target_db": [(0, ["config.solvers.taa.target_db", "a finite number > 0"])],
        "solvers.<solver>.freeze_frac": [(1.5, ["config.solvers.taa.freeze_frac", "a number in [0, 1]"])],
        "solvers.<solver>.floor_freeze": [(-1, ["config.solvers.taa.floor_freeze"])],
        "grids[].models": [(["tiny-sd"], ["config.grids[0].models", "not in the study's models"])],
        "grids[].samplers": [(["dpm"], ["config.grids[0].samplers"])],
        "grids[].steps": [([0], ["config.grids[0].steps"])],
    }
)
# a grid's solver blocks are validated as the study's: the same hostile values, the grid's path in the message
HOSTILE.update(
    {
        "grids[]." + field: [
            (v, [m.replace("config.solvers.", "config.grids[0].solvers.") for m in msgs]) for v, msgs in rows
        ]
        for field, rows in list(HOSTILE.items())
        if field.startswith("solvers.<solver>.")
    }
)
MODEL_FOR = {"models[].options.sample_shape": "tiny-dit"}  # fields of network models; the smoke study's is gmm


def _hostile(field: str, value: object) -> dict:
    """The smoke study with `field` set to `value` (models[] -> the first model, <solver> -> taa)."""
    cfg = copy.deepcopy(smoke())
    if field in MODEL_FOR:
        cfg["models"] = [{"name": MODEL_FOR[field], "conditions": [0]}]
    if field.startswith("grids[]"):
        cfg["grids"] = [{"solvers": {"taa": {}}}]
    keys = field.replace("[]", ".0").replace("<solver>", "taa").split(".")
    node = cfg
    for k in keys[:-1]:
        k2 = int(k) if k.isdigit() else k
        if isinstance(node, dict) and k2 not in node:
            node[k2] = {}
        node = node[k2]
    node[keys[-1]] = value
    return cfg


def test_every_schema_field_has_a_hostile_row():
    assert schema_fields(load_schema()) == set(HOSTILE)


ROWS = [(f, v, s) for f, rows in HOSTILE.items() for v, s in rows]


@pytest.mark.parametrize("field, value, expect", ROWS, ids=[f"{f}={v!r}"[:60] for f, v, _ in ROWS])
def test_hostile_value_is_refused_naming_the_field(field, value, expect):
    with pytest.raises(ConfigError) as info:
        validate_config(_hostile(field, value))
    msg = str(info.value)
    for s in expect:
        assert s in msg, f"{s!r} not in {msg!r}"
    assert "not valid under any of the given schemas" not in msg


def test_nan_in_solver_defaults_is_blamed_on_solver_defaults():
    msg = str(pytest.raises(ConfigError, validate_config, _hostile("solver_defaults.ridge", NAN)).value)
    assert "config.solver_defaults.ridge" in msg and "solvers.fp" not in msg


def test_conditions_are_checked_against_each_model():
    from parataa.conditions import GMM_DEFAULT_CLASSES, check_conditions
    from parataa.models import GaussianMixture, registry

    assert GMM_DEFAULT_CLASSES == GaussianMixture().num_classes == registry.GMM_OPTIONS["classes"]
    ok = {"gmm": [0, 9], "tiny-dit": [0, 9], "dit-xl-2-256": [0, 999], "tiny-sd": [3, "a digit"],
          "sd-v1-5": ["black duck"]}  # fmt: skip
    bad = {"gmm": [10, -1, "a"], "tiny-dit": [10, -1], "dit-xl-2-256": [1000, -1, "cat"], "tiny-sd": [10, "", " "],
           "sd-v1-5": [3, "", "word " * 80]}  # fmt: skip
    for model, conds in ok.items():
        assert check_conditions(model, conds) == [], model
    for model, conds in bad.items():
        problems = check_conditions(model, conds)
        assert len(problems) == len(conds), (model, problems)
        assert all(model in p for p in problems)
    assert check_conditions("gmm", [99], {"classes": 100}) == []
    cfg = _hostile("models", [{"name": "gmm", "conditions": [12], "options": {"classes": 20}}])
    assert validate_config(cfg)["models"][0]["conditions"] == [12]


def test_prompt_length_is_counted_in_clip_tokens_at_the_limit():
    from parataa.conditions import check_condition, prompt_tokens
    from parataa.models.stable_diffusion import clip_tokenizer, token_ids

    fits, over = " ".join(["cat"] * 75), " ".join(["cat"] * 76)
    assert prompt_tokens(fits) == 75 == int((token_ids(clip_tokenizer(), [fits])[0, 1:] != 49407).sum())
    assert check_condition("sd-v1-5", fits) is None
    msg = check_condition("sd-v1-5", over)
    assert "76 CLIP tokens" in msg and "at most 75" in msg


def test_a_huge_matrix_is_refused_at_once_with_the_count_and_the_fix():
    cfg = {**smoke(), "seeds": list(range(200_000))}
    t0 = time.perf_counter()
    msg = str(pytest.raises(ConfigError, validate_config, cfg).value)
    grid = {**smoke(), "solvers": {"taa": {"history": list(range(1, 301)), "window": list(range(1, 301))}}}
    assert "jobs, above max_jobs" in str(pytest.raises(ConfigError, validate_config, grid).value)
    in_grids = {**smoke(), "grids": [{"steps": [25], "solvers": grid["solvers"]}]}  # the same matrix through grids
    assert "jobs, above max_jobs" in str(pytest.raises(ConfigError, validate_config, in_grids).value)
    assert time.perf_counter() - t0 < 5  # before any validation or expansion (the grid has 90,000 cells)
    assert "400,000 jobs" in msg and "max_jobs = 5,000" in msg and "--config max_jobs=400000" in msg
    raised = {**smoke(), "seeds": list(range(20_000)), "max_jobs": 40_000}  # 40,000 jobs, allowed explicitly
    assert validate_config(raised)["max_jobs"] == 40_000


def test_hostile_config_is_refused_by_snakemake_before_anything_runs(tmp_path):
    cfg = {**smoke(), "results_dir": "x$(touch PWNED)", "seeds": [2**64],
           "models": [{"name": "gmm", "cfg_scale": NAN, "conditions": [99], "options": {"dim": -4}}]}  # fmt: skip
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = snakemake("--profile", "local", "--configfile", str(path), "--cores", "1", cwd=ROOT)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    for s in ("config.results_dir", "config.seeds[0]", "config.models[0].cfg_scale", "config.models[0].options.dim"):
        assert s in out, out
    assert not (ROOT / "PWNED").exists() and not list(ROOT.glob("x*PWNED*"))


# --------------------------------------------------------------------------------- command line


def _cli(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Run `parataa ARGV` in this process with every model build and solve replaced by a failure: a value
    refused by the checks never reaches them."""
    import parataa.cli.compare as compare
    import parataa.cli.sample as sample
    from parataa.cli import main
    from parataa.models import registry

    def compute(*a, **k):
        raise AssertionError("reached the model or the solver")

    for mod, name in ((compare, "solve"), (compare, "build"), (sample, "solve"), (registry, "build_denoiser")):
        monkeypatch.setattr(mod, name, compute)
    rc = main(argv)
    return rc, capsys.readouterr().err


LONG = " ".join(["word"] * 80)
CLI_BAD = [
    (["compare", "--conditions", "99"], "--conditions: model gmm has 10 classes: labels 0..9, got 99"),
    (["compare", "--conditions", "-1"], "got -1"),
    (["compare", "--classes", "100", "--conditions", "100"], "100 classes"),
    (["compare", "--seeds", "-3"], "--seeds: seeds must be integers 0 .. 2^63-1, got -3"),
    (["compare", "--seeds", "5-2"], "--seeds names no seed"),
    (["compare", "--solvers", ""], "--solvers names no solver"),
    (["compare", "--chunk-size", "0"], "--chunk-size must be an integer >= 1, got 0"),
    (["sample", "--chunk-size", "0", "--out", "OUT"], "--chunk-size must be an integer >= 1, got 0"),
    (["compare", "--solvers", " , "], "--solvers names no solver"),
    (["compare", "--device", "tpu"], "--device 'tpu' is not a device"),
    (["compare", "--cfg-scale", "nan"], "--cfg-scale must be a finite number"),
    (["compare", "--abs-tol", "nan"], "--abs-tol: abs_tol must be a finite number"),
    (["compare", "--model", "tiny-sd", "--conditions", ""], "empty prompt"),
    (["compare", "--model", "sd-v1-5", "--conditions", LONG], "80 CLIP tokens"),
    (["sample", "--model", "tiny-sd", "--prompt", "", "--out", "OUT"], "--prompt: model tiny-sd: empty prompt"),
    (["sample", "--model", "tiny-sd", "--prompt", LONG, "--out", "OUT"], "80 CLIP tokens; the text encoder reads"),
    (["sample", "--model", "sd-v1-5", "--out", "OUT"], "--prompt: model sd-v1-5 is text-conditional"),
    (["sample", "--class", "10", "--out", "OUT"], "--class: model tiny-dit has 10 classes"),
    (["sample", "--model", "gmm", "--class", "99", "--out", "OUT"], "model gmm has 10 classes"),
    (["sample", "--seed", "-3", "--out", "OUT"], "--seed: seeds must be integers 0 .. 2^63-1, got -3"),
    (["sample", "--device", "tpu", "--out", "OUT"], "--device 'tpu' is not a device"),
    (["sample", "--out", "FILE/out"], "cannot write there (Not a directory)"),
    (["sample", "--out", "FILE"], "cannot write there (Not a directory)"),
    (["sample", "--out", "/proc/parataa/out"], "cannot write there"),
]


@pytest.mark.parametrize("argv, expect", CLI_BAD, ids=[" ".join(a)[:50] for a, _ in CLI_BAD])
def test_cli_refuses_before_compute(argv, expect, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    argv = [a.replace("FILE", str(tmp_path / "file")).replace("OUT", str(tmp_path / "out")) for a in argv]
    rc, err = _cli(argv, monkeypatch, capsys)
    assert rc == 2 and expect in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # a refused command leaves nothing behind


def test_cli_accepts_what_it_should(capsys, tmp_path, monkeypatch):
    from parataa.cli import build_parser, main
    from parataa.cli._checks import check_out_dir
    from parataa.cli._processes import LAUNCHED
    from parataa.cli.sample import check_args

    assert main(["compare", "--steps", "5", "--seeds", "0-1", "--solvers", "taa", "--conditions", "9"]) == 0
    assert "taa" in capsys.readouterr().out
    # the dtype short names the loaders take (resolve_dtype) pass the CLI's check too
    for dtype in ("fp16", "bf16", "float32"):
        argv = ["sample", "--model", "gmm", "--dtype", dtype, "--out", str(tmp_path / "out"), "--class", "1"]
        check_args(build_parser().parse_args(argv))
    # in the processes --processes N starts, the launcher has proved --out: no N probes racing on one folder
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ValueError, match="cannot write there"):
        check_out_dir(str(tmp_path / "file" / "out"))
    monkeypatch.setenv(LAUNCHED, "2")
    assert check_out_dir(str(tmp_path / "file" / "out")) == tmp_path / "file" / "out"  # not probed again


# --------------------------------------------------------------------------------- SLURM preflight


def _fake_tools(bin_dir: Path, failing: dict[str, str] | None = None) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in preflight.SLURM_TOOLS:
        said = (failing or {}).get(tool)
        body = f"echo '{said}' >&2; exit 1" if said else "echo ok; exit 0"
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)


def test_slurm_check_names_everything_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    msg = preflight.check_slurm()
    assert all(f"{t}: not found on PATH" in msg for t in preflight.SLURM_TOOLS) and "--profile local" in msg
    _fake_tools(tmp_path / "bin", {"sacct": "sacct: error: Slurm accounting storage is disabled"})
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    msg = preflight.check_slurm()
    assert "accounting (sacct, slurmdbd)" in msg and "accounting storage is disabled" in msg
    _fake_tools(tmp_path / "ok")
    monkeypatch.setenv("PATH", str(tmp_path / "ok"))
    assert preflight.check_slurm() is None


def test_slurm_profile_without_slurm_stops_with_one_message(tmp_path):
    _fake_tools(tmp_path / "bin", {"scontrol": "slurm_load_ctl_conf error: Unable to contact slurm controller"})
    (tmp_path / "bin" / "sacct").unlink()
    env = _env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{tmp_path / 'bin'}")
    dirs = [f"results_dir={tmp_path}/r", f"reports_dir={tmp_path}/rep", f"figures_dir={tmp_path}/fig"]
    p = snakemake("--profile", "slurm", "--configfile", "config/smoke.yaml", "--nolock", "--config", *dirs, env=env)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert out.count("--profile slurm needs a working SLURM") == 1, out
    assert "sacct: not found on PATH" in out and "Unable to contact slurm controller" in out
    assert "[launch]" not in out and "submitit" not in out.replace("submitit submits", "")
    assert not (tmp_path / "r" / "smoke" / "noise").exists()  # nothing ran


# --------------------------------------------------------------------------- leftovers: temporaries, locks


def test_stale_temporaries_are_removed_and_a_failed_write_leaves_none(tmp_path, monkeypatch):
    d = tmp_path / "run"
    d.mkdir()
    stale = [d / ".samples.parquet.tmp4242", d / ".manifest.json.tmp1"]
    keep = [d / "samples.parquet", d / ".hidden", d / "x.tmp12"]
    for p in stale + keep:
        p.write_text("x")
    assert sorted(storage.remove_stale_temporaries(d)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        storage.atomic_write_bytes(d / "f.bin", b"data")
    assert not list(d.glob(".f.bin.tmp*"))


def test_a_lock_left_by_a_killed_snakemake_is_named_with_the_unlock_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    locks = Path(".snakemake/locks")
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("x")
    preflight.record_driver(["/x/snakemake/__main__.py", "--profile", "local", "--configfile", "my study.yaml"])
    drivers = list(Path(".snakemake/parataa-drivers").glob("*.json"))
    info = json.loads(drivers[0].read_text())
    assert info["locks"] == ["0.input.lock"]
    assert preflight.stale_lock() is None  # this process holds it: alive
    drivers[0].write_text(json.dumps({**info, "pid": dead.pid}))
    msg = preflight.stale_lock()
    assert f"snakemake pid {dead.pid}" in msg and "killed hard" in msg
    assert "snakemake --profile local --configfile 'my study.yaml' --unlock" in msg
    (locks / "0.input.lock").unlink()  # unlocked: the record of the dead driver goes too
    assert preflight.stale_lock() is None and not drivers[0].exists()


# ------------------------------------------------------------------- cancelling a running study


SLOW = {  # one sequential solve of about 15 s on this machine's 2 cores: long enough to interrupt
    "study": "slow",
    "models": [{"name": "gmm", "conditions": [1], "options": {"dim": 2048, "classes": 50}}],
    "samplers": ["ddpm"],
    "steps": [1000],
    "seeds": [0],
    "seeds_per_shard": 1,
    "solvers": {"fp": {}},
    "checkpoint_every_s": 0,
}


def _start_in_background(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """`snakemake ... &` from a bash script, as a user's batch script starts it (SIGINT ignored, POSIX), in its
    own working directory; returns the script's process and the file holding snakemake's pid."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "study.yaml").symlink_to(ROOT / "config" / "study.yaml")
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump(SLOW))
    cmd = (
        f"{sys.executable} -m snakemake -s {ROOT / 'Snakefile'} --profile {ROOT / 'local'} --configfile slow.yaml "
        "--cores 1 --until baseline > sm.log 2>&1 &\necho $! > sm.pid\nwait\n"
    )
    (tmp_path / "run.sh").write_text(cmd)
    script = subprocess.Popen(["bash", "run.sh"], cwd=tmp_path, env=_env())
    t0 = time.time()
    log = tmp_path / "sm.log"
    while time.time() - t0 < 120:
        if log.exists() and "RUNNING" in log.read_text():
            return script, tmp_path / "sm.pid"
        time.sleep(0.5)
    raise AssertionError("the job never started:\n" + (log.read_text() if log.exists() else ""))


def _job_processes(tmp_path: Path) -> list[int]:
    """The rule job's launcher, the local job's controller (its submitit job id) and the processes it started."""
    controller = int(re.search(r"submitted local job (\d+)", (tmp_path / "sm.log").read_text()).group(1))
    stat = Path(f"/proc/{controller}/stat").read_text()
    launcher = int(stat[stat.rindex(")") + 2 :].split()[1])
    return [launcher, controller, *preflight.children(controller)]


def _kill_leftovers(pids: list[int]) -> None:
    """A failing test must not leave a job running on the CI machine."""
    for pid in pids:
        if preflight.alive(pid):
            os.kill(pid, signal.SIGKILL)


def _all_gone(pids: list[int], timeout: float) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if not any(preflight.alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


MANIFEST = "results/slow/runs/gmm/ddpm-1000/sequential/shard-0/manifest.json"
linux = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process parents from /proc")


@pytest.mark.slow
@linux
def test_sigint_to_a_background_snakemake_cancels_its_running_job(tmp_path):
    script, pid_file = _start_in_background(tmp_path)
    jobs = _job_processes(tmp_path)
    snake = int(pid_file.read_text())
    try:
        assert all(preflight.alive(p) for p in jobs)
        os.kill(snake, signal.SIGINT)
        script.wait(timeout=60)  # snakemake exited
        assert _all_gone(jobs, 10), (jobs, (tmp_path / "sm.log").read_text())
        time.sleep(2)
        assert not (tmp_path / MANIFEST).exists()
    finally:
        _kill_leftovers([snake, *jobs])


@pytest.mark.slow
@linux
def test_killed_snakemake_leaves_no_job_running_and_its_lock_is_named(tmp_path):
    script, pid_file = _start_in_background(tmp_path)
    jobs = _job_processes(tmp_path)
    snake = int(pid_file.read_text())
    try:
        os.kill(snake, signal.SIGKILL)
        script.wait(timeout=30)
        assert _all_gone(jobs, 15), (jobs, (tmp_path / "sm.log").read_text())
        assert not (tmp_path / MANIFEST).exists()
    finally:
        _kill_leftovers(jobs)
    args = ["-s", str(ROOT / "Snakefile"), "--profile", str(ROOT / "local"), "--configfile", "slow.yaml",
            "--cores", "1", "--until", "baseline"]  # fmt: skip
    again = snakemake(*args, cwd=tmp_path)
    out = again.stdout + again.stderr
    assert again.returncode != 0
    assert f"left by snakemake pid {snake}" in out and "--unlock" in out, out
    assert snakemake(*args, "--unlock", cwd=tmp_path).returncode == 0
    plan = snakemake(*args, "-n", cwd=tmp_path)
    assert plan.returncode == 0 and "left by snakemake" not in plan.stdout + plan.stderr
    assert re.search(r"^baseline\s+1$", plan.stdout + plan.stderr, re.M)
